"""Dataset reading and batching that `make mutate` found untested (docs/mutation.md), against values
worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twinlm.errors import TwinError
from twinlm.train.data import load_split


def test_a_null_row_is_named_by_its_own_index(tmp_path: Path) -> None:
    table = pa.table(
        {
            "sample_id": ["a", "b", "c"],
            "input_ids": pa.array([[1, 2], [3], None], type=pa.list_(pa.int32())),
            "labels": pa.array([[1, 2], [3], [4]], type=pa.list_(pa.int32())),
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    with pytest.raises(TwinError, match=r"train\.parquet: row 2: input_ids is empty \(null\)"):
        load_split(tmp_path, "train")


def test_an_empty_row_after_the_first_has_no_tokens(tmp_path: Path) -> None:
    table = pa.table({"sample_id": ["a", "b"], "input_ids": [[1, 2], []], "labels": [[1, 2], []]})
    pq.write_table(table, tmp_path / "train.parquet")
    with pytest.raises(TwinError, match=r"train\.parquet: row 1 \(sample 'b'\): no tokens"):
        load_split(tmp_path, "train")
