from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from twinlm.prepare.outputs import (
    assign_splits,
    length_histogram,
    split_fraction,
    write_jsonl,
    write_tokenized,
)
from twinlm.prepare.sample import Sample, Turn


def sample(conv: str, i: int = 0) -> Sample:
    return Sample(f"{conv}#{i}", conv, "discord", "chat", (Turn("a", "hi", False), Turn("b", "yo", True)))


def test_split_is_by_conversation_and_deterministic() -> None:
    samples = [sample(f"discord:{c}", i) for c in range(200) for i in range(3)]
    first = assign_splits(samples, 0.1, "seed")
    assert first == assign_splits(samples, 0.1, "seed")
    by_conv: dict[str, set[str]] = {}
    for s in first:
        by_conv.setdefault(s.conversation, set()).add(s.split)
    assert all(len(splits) == 1 for splits in by_conv.values())  # a conversation never straddles
    n_eval = sum(1 for splits in by_conv.values() if splits == {"eval"})
    assert 8 <= n_eval <= 35  # ~10% of 200
    assert assign_splits(samples, 0.1, "other seed") != first
    assert split_fraction("discord:1", "seed") == split_fraction("discord:1", "seed")


def test_small_datasets_still_get_both_splits() -> None:
    two = assign_splits([sample("a"), sample("b")], 0.05, "s")
    assert sorted(s.split for s in two) == ["eval", "train"]
    assert [s.split for s in assign_splits([sample("a")], 0.05, "s")] == ["train"]
    assert {s.split for s in assign_splits([sample("a"), sample("b")], 0.0, "s")} == {"train"}


def test_outputs_are_byte_identical_and_load_with_datasets(tmp_path: Path) -> None:
    rows = [("a#0", [1, 2, 3], [-100, 2, 3]), ("b#0", [4, 5], [-100, 5])]
    write_tokenized(tmp_path / "one.parquet", rows)
    write_tokenized(tmp_path / "two.parquet", rows)
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "one.parquet"), split="train")
    assert loaded["labels"] == [[-100, 2, 3], [-100, 5]] and loaded["sample_id"] == ["a#0", "b#0"]
    write_jsonl(tmp_path / "s.jsonl", [sample("x")])
    assert Sample.from_json((tmp_path / "s.jsonl").read_bytes().splitlines()[0]) == sample("x")


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def rows():
        yield ("a", [1], [1])
        raise RuntimeError("interrupted")

    def samples():
        yield sample("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(tmp_path / "s.jsonl", samples())
    with pytest.raises(RuntimeError):
        write_tokenized(tmp_path / "t.parquet", rows())
    assert list(tmp_path.iterdir()) == []


def test_length_histogram() -> None:
    assert length_histogram([10, 64, 65, 5000]) == {
        "<=64": 2,
        "<=128": 1,
        "<=256": 0,
        "<=512": 0,
        "<=1024": 0,
        "<=2048": 0,
        "<=4096": 0,
        ">4096": 1,
    }
