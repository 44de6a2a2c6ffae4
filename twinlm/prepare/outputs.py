"""What a build writes: the train/eval split, the tokenized dataset (Parquet), the readable JSONL.

Every output is written through a temporary file and a rename, and is byte-identical for the same
corpus and config (no timestamps, no random state, fixed writer options).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from twinlm.errors import TwinError
from twinlm.files import atomic_open
from twinlm.prepare.sample import Sample

ROW_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
    ]
)


def read_build_info(folder: Path) -> dict[str, Any]:
    """The dataset's build.json (what every later stage reads first), or one error line saying what to do."""
    path = folder / "build.json"
    if not path.is_file():
        raise TwinError(f"{folder}: no dataset here (no build.json); run `twinlm build` first")
    try:
        info = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as err:
        raise TwinError(f"{path}: unreadable ({err}); run `twinlm build` again") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise TwinError(f"{path}: not a twinlm build report; run `twinlm build` again")
    return info


def read_rows(path: Path) -> pa.Table:
    """A split's token rows (train.parquet or eval.parquet), or one error line saying what to do."""
    with _dataset_file(path):
        return pq.read_table(path, columns=ROW_SCHEMA.names)


def row_batches(path: Path, rows: int = 8192) -> Iterator[pa.RecordBatch]:
    """A split's token rows in record batches of up to `rows`, read as used: memory holds a batch, however
    large the dataset (`read_rows` holds the file)."""
    with _dataset_file(path):
        reader = pq.ParquetFile(path, pre_buffer=False)  # not every row group read ahead
        yield from reader.iter_batches(batch_size=rows, columns=ROW_SCHEMA.names, use_threads=False)


@contextmanager
def _dataset_file(path: Path) -> Iterator[None]:
    """A missing or unreadable split file (a copy cut short, a disk error) as one error line."""
    if not path.is_file():
        raise TwinError(f"{path}: no such dataset file; run `twinlm build` first")
    try:
        yield
    except (pa.ArrowException, OSError) as err:
        raise TwinError(f"{path}: not a readable dataset file ({err}); run `twinlm build` again") from None


def split_fraction(conversation: str, seed: str) -> float:
    """A number in [0, 1) fixed by the conversation key: the same conversation always lands alike."""
    digest = hashlib.blake2b(f"{seed}\x1f{conversation}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def trained_chars(sample: Sample) -> int:
    """The split's weight of a sample before tokenizing: characters of its trained turns."""
    return sum(len(t.text) for t in sample.turns if t.trained)


def assign_splits(
    samples: Sequence[Sample],
    eval_fraction: float,
    seed: str,
    weights: Mapping[str, int] | None = None,
) -> list[Sample]:
    """Mark samples train or eval, deterministically, never splitting a sample (a session).

    `samples` holds each conversation's sessions oldest first (as the build yields them);
    `weights` gives each sample's trained tokens by id (default: its trained characters).

    The rule, per conversation of chat sessions (kinds chat and assistant):

    - Eval is the conversation's newest sessions whose trained tokens come nearest to
      `eval_fraction` of its own (a tail; ties to fewer sessions; never every session). Evaluation
      then asks about the future, as chatting with the twin will, and each conversation with enough
      sessions contributes its share, so the eval share of trained tokens lands near the setting
      whatever the conversations' sizes (off by at most half a session per conversation).
    - A conversation whose tail rounds to no session and that has at most 1 / (2 * eval_fraction)
      sessions (a ChatGPT conversation, a short chat) is held out whole, by a hash of its key and
      `seed`, as documents are (with their teacher Q/A pairs, which share the document's key).
      A longer one whose newest session alone is over twice its share stays in train.
    - With nothing in eval, the newest session of the heaviest conversation with two or more
      sessions goes there (a single chat still gets an eval loss), else the conversation with the
      smallest hash; train is never left empty.

    Guarantee when newer sessions are added (one more month of messages): a sample that was in train
    stays in train (a twin trained before the update is never evaluated on its own training data),
    conversations that gained nothing keep their split, and in a conversation that grew only its new
    sessions and its newest old eval sessions can change: the tail slides forward, so old eval
    sessions may return to train. Exceptions: the fallback above (a corpus with nothing else in
    eval), and a session still going on at the old export's end, which grows (it counts as new).
    """
    if not samples:
        return []
    weigh = (lambda s: weights.get(s.id, 0)) if weights is not None else trained_chars
    evals = eval_positions(
        [(s.conversation, s.kind == "document") for s in samples],
        [weigh(s) for s in samples],
        eval_fraction,
        seed,
    )
    return [replace(s, split="eval" if i in evals else "train") for i, s in enumerate(samples)]


def eval_positions(
    samples: Sequence[tuple[str, bool]], weights: Sequence[int], eval_fraction: float, seed: str
) -> set[int]:
    """`assign_splits` on what it needs of each sample, (conversation, is a document) and its weight,
    in the same order: the positions that go to eval. A streaming build keeps only this much per
    sample until the split is known."""
    chats: dict[str, list[int]] = {}  # conversation -> its samples' positions, oldest first
    whole: set[str] = set()  # conversations held out whole or not at all, by hash
    conversations: set[str] = set()
    for i, (conversation, document) in enumerate(samples):
        conversations.add(conversation)
        if document:
            whole.add(conversation)
        else:
            chats.setdefault(conversation, []).append(i)
    evals: set[int] = set()
    if eval_fraction > 0:
        for conversation, positions in chats.items():
            k = _tail([weights[i] for i in positions], eval_fraction)
            if k:
                evals.update(positions[-k:])
            elif len(positions) <= 1 / (2 * eval_fraction):
                whole.add(conversation)
    fractions = {c: split_fraction(c, seed) for c in whole}
    held = {c for c, f in fractions.items() if f < eval_fraction}
    if eval_fraction > 0 and not evals and not held:
        multi = [c for c, positions in chats.items() if len(positions) > 1]
        if multi:
            heaviest = max(multi, key=lambda c: (sum(weights[i] for i in chats[c]), c))
            evals.add(chats[heaviest][-1])
        elif len(conversations) > 1:
            held = {min(fractions, key=lambda c: (fractions[c], c))} if fractions else set()
    if not evals and held == conversations and len(held) > 1:  # never leave train empty either
        held.discard(max(fractions, key=lambda c: (fractions[c], c)))
    if held:
        evals.update(i for i, (conversation, _) in enumerate(samples) if conversation in held)
    return evals


def _tail(weights: Sequence[int], fraction: float) -> int:
    """How many of the newest sessions hold nearest to `fraction` of the weight (never all of them)."""
    target = fraction * sum(weights)
    best, best_k, total = target, 0, 0
    for k in range(1, len(weights)):
        total += weights[-k]
        if abs(total - target) < best:
            best, best_k = abs(total - target), k
        if total >= target:
            break
    return best_k


def eval_share(trained_tokens: Mapping[str, int]) -> float:
    """The eval split's share of all trained tokens (what `build.eval_fraction` aims at)."""
    total = sum(trained_tokens.values())
    return trained_tokens.get("eval", 0) / total if total else 0.0


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
    table = pa.table({"sample_id": ids, "input_ids": inputs, "labels": labels}, schema=ROW_SCHEMA)
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
