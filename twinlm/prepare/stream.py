"""The streaming half of `twinlm build`: samples and token rows go to disk as they are made.

The train/eval split is known only once every sample is weighed (it holds out a share of the trained
tokens, newest sessions first, with fallbacks over the whole corpus), so the build writes in two passes:
the first appends each sample's JSON line and each rendered row to temporary files in the dataset
folder (rows as Arrow record batches of int32 arrays, ~8 bytes a token instead of ~60 as Python
lists); the second, once the split is decided, streams them into samples.jsonl, train.parquet and
eval.parquet (staged: the build puts them in place with the rest of the dataset), summing the statistics
on the way. Memory holds a batch, not the dataset. The temporary files carry atomic_open's suffix, so a
killed build's are removed by the next one.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twinlm.files import TMP_SUFFIX, Staged
from twinlm.prepare.outputs import HISTOGRAM_EDGES, ROW_SCHEMA, length_histogram
from twinlm.prepare.sample import IGNORE_INDEX, Sample

SPILL_TOKENS = 1 << 18  # tokens per spilled record batch: a few MB of arrays
ROW_GROUP_BYTES = 8 << 20  # Arrow bytes per row group of the final Parquet files (held until written)


def _temp(folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=folder)
    os.close(fd)
    return Path(tmp)


class _Rows:
    """(sample id, input ids, labels) rows appended to a temporary Arrow stream file in record batches."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = _temp(folder, name)
        self.sink = pa.OSFile(str(self.path), "wb")
        options = pa.ipc.IpcWriteOptions(compression="lz4")
        self.writer = pa.ipc.new_stream(self.sink, ROW_SCHEMA, options=options)
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str] = []
        self.inputs: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.tokens = 0

    def add(self, sample_id: str, input_ids: Sequence[int], labels: Sequence[int]) -> None:
        """One row; int32 arrays (render_arrays) are kept as they are, lists converted."""
        self.ids.append(sample_id)
        self.inputs.append(np.asarray(input_ids, dtype=np.int32))
        self.labels.append(np.asarray(labels, dtype=np.int32))
        self.tokens += len(input_ids)
        if self.tokens >= SPILL_TOKENS:
            self.flush()

    def flush(self) -> None:
        if not self.ids:
            return
        lengths = np.fromiter((len(x) for x in self.inputs), dtype=np.int32, count=len(self.inputs))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        columns = [pa.array(self.ids, pa.string())]
        for values in (self.inputs, self.labels):
            columns.append(pa.ListArray.from_arrays(_int32(offsets), _int32(np.concatenate(values))))
        self.writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=ROW_SCHEMA))
        self._reset()

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.sink.close()

    def batches(self) -> Iterator[pa.RecordBatch]:
        # Read, not memory-mapped: every page of a mapped file read stays in the process's resident memory
        # until the end, so the peak grew with the dataset (+225 MiB from 1M to 10M messages).
        with pa.OSFile(str(self.path), "rb") as source:
            yield from pa.ipc.open_stream(source)


def _int32(values: np.ndarray) -> pa.Array:
    """An int32 numpy array as an Arrow array, sharing its buffer (no conversion, no copy)."""
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


@dataclass(slots=True)
class SplitStats:
    samples: dict[str, int] = field(default_factory=lambda: {"train": 0, "eval": 0})  # rows per split
    tokens: dict[str, int] = field(default_factory=lambda: {"train": 0, "eval": 0})
    trained_tokens: dict[str, int] = field(default_factory=lambda: {"train": 0, "eval": 0})
    histogram: dict[str, int] = field(default_factory=lambda: length_histogram([]))


class _SplitWriter:
    """One split's Parquet file, written in row groups of about ROW_GROUP_BYTES."""

    def __init__(self, f: object) -> None:
        self.writer = pq.ParquetWriter(f, ROW_SCHEMA, compression="zstd", write_statistics=False)
        self.pending: list[pa.RecordBatch] = []
        self.size = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self.pending.append(batch)
            self.size += batch.nbytes
            if self.size >= ROW_GROUP_BYTES:
                self.flush()

    def flush(self) -> None:
        if self.pending:
            table = pa.Table.from_batches(self.pending, schema=ROW_SCHEMA)
            self.writer.write_table(table, row_group_size=max(table.num_rows, 1))
            self.pending, self.size = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


class SampleKeys(Sequence[tuple[str, bool]]):
    """What the split needs of each sample, (conversation, is a document), in a few bytes a sample: a
    single chat of millions of messages has hundreds of thousands of sessions."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self._conversation = array("l")
        self._document = bytearray()

    def append(self, conversation: str, document: bool) -> None:
        index = self._index.get(conversation)
        if index is None:
            index = self._index[conversation] = len(self._names)
            self._names.append(conversation)
        self._conversation.append(index)
        self._document.append(document)

    def __len__(self) -> int:
        return len(self._document)

    def __getitem__(self, i: int) -> tuple[str, bool]:  # type: ignore[override]
        return self._names[self._conversation[i]], bool(self._document[i])

    def __iter__(self) -> Iterator[tuple[str, bool]]:
        names = self._names
        for index, document in zip(self._conversation, self._document, strict=True):
            yield names[index], bool(document)


class Spill:
    """The first pass's temporary files: sample lines, rendered rows, then document rows (written last,
    after the rendered ones, as the dataset has always ordered them)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._paths: list[Path] = []
        self.samples_path = _temp(folder, "samples.spill")
        self._paths.append(self.samples_path)
        self.samples = open(self.samples_path, "wb", buffering=1 << 20)  # noqa: SIM115 (closed in close())
        self.rendered = _Rows(folder, "rendered.spill")
        self.completions = _Rows(folder, "completions.spill")
        self._paths += [self.rendered.path, self.completions.path]

    def sample(self, sample: Sample) -> None:
        self.samples.write(sample.to_json() + b"\n")

    def close(self) -> None:
        if not self.samples.closed:
            self.samples.close()
            self.rendered.close()
            self.completions.close()

    def remove(self) -> None:
        self.close()
        for path in self._paths:
            path.unlink(missing_ok=True)

    def write(self, staged: Staged, evals: set[int], check: Callable[[SplitStats], None]) -> SplitStats:
        """samples.jsonl, train.parquet and eval.parquet, staged (put in place with the rest of the dataset
        by the build): the samples at positions `evals` (and their rows) in eval. `check(stats)` may raise
        to write nothing."""
        self.close()
        stats = SplitStats()
        eval_ids: list[str] = []  # read back from the sample lines: not kept for every sample meanwhile
        with ExitStack() as stack:
            jsonl = stack.enter_context(open(staged.file("samples.jsonl"), "wb"))
            with open(self.samples_path, "rb") as lines:
                for i, line in enumerate(lines):
                    if i in evals:  # the first "split" key is the sample's own: strings escape their quotes
                        line = line.replace(b'"split":"train"', b'"split":"eval"', 1)
                        eval_ids.append(orjson.loads(line)["id"])
                    jsonl.write(line)
            writers = {
                split: _SplitWriter(stack.enter_context(open(staged.file(f"{split}.parquet"), "wb")))
                for split in ("train", "eval")
            }
            held = pa.array(sorted(set(eval_ids)), pa.string())
            for rows in (self.rendered, self.completions):
                for batch in rows.batches():
                    in_eval = pc.is_in(batch.column(0), value_set=held)
                    for split, mask in (("train", pc.invert(in_eval)), ("eval", in_eval)):
                        part = batch.filter(mask)
                        if part.num_rows:
                            _count(stats, split, part)
                            writers[split].write(part)
            for writer in writers.values():
                writer.close()
            check(stats)
        return stats


def _count(stats: SplitStats, split: str, part: pa.RecordBatch) -> None:
    lengths = pc.list_value_length(part.column(1))
    stats.samples[split] += part.num_rows
    stats.tokens[split] += pc.sum(lengths).as_py() or 0
    labels = pc.list_flatten(part.column(2))
    stats.trained_tokens[split] += pc.sum(pc.not_equal(labels, IGNORE_INDEX)).as_py() or 0
    for bucket, n in length_histogram(lengths.to_pylist(), HISTOGRAM_EDGES).items():
        stats.histogram[bucket] += n
