"""`twinlm validate` checks the token rows a record batch at a time (memory flat in the dataset's size) and
finds what a row-by-row reading finds: the same counts, problems and example sample ids, in the same order."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import twinlm.prepare.validate as validate_module
from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.prepare.build import build
from twinlm.prepare.outputs import ROW_SCHEMA
from twinlm.prepare.sample import IGNORE_INDEX
from twinlm.prepare.validate import validate


def row_by_row(folder: Path, max_length: int) -> tuple[dict, dict, dict, Counter[str], dict[str, list[str]]]:
    """The checks as plain Python over every row: the reference."""
    samples, tokens, trained, problems, examples = {}, {}, {}, Counter(), {}
    for split in ("train", "eval"):
        rows = pq.read_table(folder / f"{split}.parquet").to_pylist()
        samples[split] = len(rows)
        tokens[split] = sum(len(r["input_ids"]) for r in rows)
        trained[split] = sum(sum(1 for x in r["labels"] if x != IGNORE_INDEX) for r in rows)
        for r in rows:
            for reason, found in (
                ("labels and input ids differ in length", len(r["input_ids"]) != len(r["labels"])),
                ("nothing to train in a sample", all(x == IGNORE_INDEX for x in r["labels"])),
                ("sample over max_length", len(r["input_ids"]) > max_length),
            ):
                if found:
                    problems[reason] += 1
                    ids = examples.setdefault(reason, [])
                    if len(ids) < 3:
                        ids.append(r["sample_id"])
    return samples, tokens, trained, problems, examples


@pytest.mark.parametrize("batch_rows", [1, 2, 5, 8192])
def test_batched_checks_find_what_row_by_row_reading_finds(
    corpus: Corpus,
    tokenizer_dir: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    batch_rows: int,
) -> None:
    folder = tmp_path / "data"
    config = TwinConfig(name="t", me=["Alex Rivera"], build=BuildConfig(model=str(tokenizer_dir("chatml"))))
    build(config, corpus, folder)
    max_length = config.build.max_length
    built = pq.read_table(folder / "train.parquet").to_pylist()
    rows = [dict(row, sample_id=f"{row['sample_id']}~{k}") for k in range(4) for row in built]
    assert len(rows) >= 16
    # Damage some rows as a bug or a hand edit could: each problem more than three times, some rows with
    # two problems at once, an empty row.
    for i, row in enumerate(rows):
        if i % 3 == 0:
            row["labels"] = [IGNORE_INDEX] * len(row["labels"])
        if i % 4 == 1:
            row["labels"] = row["labels"][:-1]
        if i % 5 == 2:
            row["input_ids"] = row["input_ids"] * (max_length // len(row["input_ids"]) + 1)
            row["labels"] = row["input_ids"]
    rows.append({"sample_id": "empty", "input_ids": [], "labels": []})
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), folder / "train.parquet")

    monkeypatch.setattr(validate_module, "BATCH_ROWS", batch_rows)
    found = validate(folder)
    samples, tokens, trained, problems, examples = row_by_row(folder, max_length)
    assert (found.samples, found.tokens, found.trained_tokens) == (samples, tokens, trained)
    assert list(found.problems.items()) == list(problems.items())  # the same reasons, counts and order
    assert {k: v for k, v in found.examples.items() if k in problems} == examples
    assert all(n > 3 for n in problems.values()) and len(problems) == 3
