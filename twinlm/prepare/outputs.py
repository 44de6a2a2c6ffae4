"""What a build writes: the train/eval split, the tokenized dataset (Parquet), the readable JSONL.

Every output is written through a temporary file and a rename, and is byte-identical for the same
corpus and config (no timestamps, no random state, fixed writer options).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from twinlm.files import atomic_open
from twinlm.prepare.sample import Sample

_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
    ]
)


def split_fraction(conversation: str, seed: str) -> float:
    """A number in [0, 1) fixed by the conversation key: the same conversation always lands alike."""
    digest = hashlib.blake2b(f"{seed}\x1f{conversation}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(samples: Sequence[Sample], eval_fraction: float, seed: str) -> list[Sample]:
    """Mark samples train or eval by conversation, deterministically.

    With at least two conversations and a non-zero fraction, eval is never empty: the conversation
    with the smallest hash goes there, so a small first dataset still gets an eval loss.
    """
    if not samples:
        return []
    fractions = {s.conversation: split_fraction(s.conversation, seed) for s in samples}
    evals = {c for c, f in fractions.items() if f < eval_fraction}
    if eval_fraction > 0 and not evals and len(fractions) > 1:
        evals = {min(fractions, key=lambda c: (fractions[c], c))}
    if len(evals) == len(fractions) and len(fractions) > 1:  # never leave train empty either
        evals.discard(max(fractions, key=lambda c: (fractions[c], c)))
    return [replace(s, split="eval" if s.conversation in evals else "train") for s in samples]


def write_jsonl(path: Path, samples: Iterable[Sample]) -> int:
    """The readable dataset, one sample per line. Returns the number written."""
    count = 0
    with atomic_open(path) as f:
        for sample in samples:
            f.write(sample.to_json() + b"\n")
            count += 1
    return count


def write_tokenized(path: Path, rows: Iterable[tuple[str, list[int], list[int]]]) -> int:
    """(sample_id, input_ids, labels) rows as Parquet (readable by `datasets.load_dataset("parquet")`)."""
    ids, inputs, labels = [], [], []
    for sample_id, input_ids, label_ids in rows:
        ids.append(sample_id)
        inputs.append(input_ids)
        labels.append(label_ids)
    table = pa.table({"sample_id": ids, "input_ids": inputs, "labels": labels}, schema=_SCHEMA)
    with atomic_open(path) as f:
        pq.write_table(table, f, compression="zstd", write_statistics=False)
    return len(ids)


HISTOGRAM_EDGES = (64, 128, 256, 512, 1024, 2048, 4096)


def length_histogram(lengths: Iterable[int], edges: Sequence[int] = HISTOGRAM_EDGES) -> dict[str, int]:
    """Sample counts per token-length bucket: "<=64", "<=128", ..., ">4096"."""
    buckets = {f"<={edge}": 0 for edge in edges} | {f">{edges[-1]}": 0}
    for n in lengths:
        label = next((f"<={edge}" for edge in edges if n <= edge), f">{edges[-1]}")
        buckets[label] += 1
    return buckets
