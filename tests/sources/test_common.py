from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from twinlm.errors import ExportError
from twinlm.model import Kind, Message, ParseOptions, ParseReport, Role
from twinlm.sources import FORMATS, _common, detect, parse
from twinlm.sources._common import fix_mojibake, new_message, open_json, read_head, stable_id

from testdata import REALDATA

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


def test_new_message_is_the_dataclass_built_faster() -> None:
    # Fails when Message's fields change: new_message fell back to Message. Update _common._MESSAGE_FIELDS.
    assert new_message is not Message
    when = datetime(2020, 1, 1, tzinfo=UTC)
    args = ("1:2", "user1", "A", when, "hi", Kind.TEXT, Role.PARTICIPANT, "1:1", "B", True)
    made, plain = new_message(*args), Message(*args)
    assert type(made) is Message
    assert made == plain and hash(made) == hash(plain) and repr(made) == repr(plain)
    with pytest.raises(AttributeError):
        made.text = "changed"  # type: ignore[misc]  # still frozen


def test_new_message_falls_back_to_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_common, "_MESSAGE_FIELDS", ("id", "text"))
    assert _common._message_builder() is Message


# The shared realdata folders, by the format their files are in (documents, the catch-all, is not
# asked: it accepts any text, WhatsApp's included, and comes last in detection).
REALDATA_FOLDERS = {
    "chatgpt": "chatgpt",
    "discord": "discord",
    "telegram": "telegram",
    "whatsapp": "whatsapp",
    "messenger_instagram": "messenger",
}
REALDATA_FILES = (
    sorted(p for p in REALDATA.rglob("*") if p.is_file() and p.parent.name in REALDATA_FOLDERS)
    if REALDATA.is_dir()
    else []
)


@pytest.mark.skipif(not REALDATA_FILES, reason="set TWINLM_EXTRA_EXPORTS to the shared realdata folder")
@pytest.mark.parametrize("fmt", [name for name in FORMATS if name != "documents"])
def test_each_parser_claims_exactly_its_own_realdata_files(fmt: str) -> None:
    """Detection must not depend on the order of FORMATS: no parser claims another format's file."""
    for path in REALDATA_FILES:
        own = REALDATA_FOLDERS[path.parent.name] == fmt
        assert FORMATS[fmt].looks_like(read_head(path), path) == own, path
        assert (detect(path) == fmt) == own, path
