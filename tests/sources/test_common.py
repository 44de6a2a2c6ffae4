from __future__ import annotations

from pathlib import Path

import pytest

from twinlm.errors import ExportError
from twinlm.model import ParseOptions, ParseReport
from twinlm.sources import FORMATS, parse
from twinlm.sources._common import fix_mojibake, open_json, stable_id

JSON_FORMATS = ["chatgpt", "discord", "telegram", "messenger"]


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_absurd_nesting_is_refused_quickly(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(b'{"messages": [' + b"[" * 300_000 + b"]" * 300_000 + b"]}")
    with pytest.raises(ExportError, match="nested too deeply"):
        list(parse(path, fmt, ParseOptions(), ParseReport()))


def test_bracket_runs_inside_text_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "art.json"
    path.write_bytes(b'{"text": "' + b"[{" * 300 + b'"}')
    with open_json(path) as f:
        assert f.read().endswith(b'"}')


def test_nesting_split_across_reads_is_still_caught(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(b" " * 65_000 + b"[" * 2_000)
    with open_json(path) as f, pytest.raises(ExportError, match="byte"):
        while f.read(65_536):
            pass


def test_helpers() -> None:
    assert stable_id("a", 1) == stable_id("a", 1) != stable_id("a1")
    assert fix_mojibake("cafÃ© ð\x9f\x98\x82") == "café 😂"
    assert fix_mojibake("café") == "café"  # not mojibake: unchanged
    assert list(FORMATS)[-1] == "documents"  # the catch-all is tried last
