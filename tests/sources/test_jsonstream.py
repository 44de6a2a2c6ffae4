"""The streaming scanner shared by the Telegram, Discord and ChatGPT parsers (twinlm.sources._jsonstream)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from twinlm.errors import ExportError
from twinlm.model import ParseOptions, ParseReport
from twinlm.sources import chatgpt, discord, telegram
from twinlm.sources._jsonstream import Stream, open_stream

CONSTANTS = ["NaN", "Infinity", "-Infinity"]


def _objects(path: Path) -> list[Any]:
    with open_stream(path) as f:
        s = Stream(path, f, ParseReport())
        assert s.peek() == 0x5B  # "["
        out = list(s.objects("items"))
        s.finish("array")
    return out


def _value(path: Path) -> Any:
    with open_stream(path) as f:
        return Stream(path, f, ParseReport()).value("")


@pytest.mark.parametrize("indent", [None, 0, 1, 2, "\t"])
def test_objects_reads_every_layout(tmp_path: Path, indent: int | str | None) -> None:
    # Nested objects with the elements' first key, and strings that look like an element's end.
    ref = {"title": "r", "s": '}, {"title": "x"'}
    items: list[Any] = [{"title": f"t{i}", "refs": [ref] * (i % 3), "n": i} for i in range(50)]
    items[7:7] = [1, None, "x", [{"title": "t"}], {}]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(items, indent=indent), encoding="utf-8")
    assert _objects(path) == items


@pytest.mark.parametrize("constant", CONSTANTS)
def test_nan_and_infinity_are_invalid_json(tmp_path: Path, constant: str) -> None:
    path = tmp_path / "a.json"
    text = '{"a": [1, "NaN -Infinity", {"b": @@}]}'.replace("@@", constant)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ExportError, match=rf"invalid JSON \({constant} is not JSON\)") as err:
        _value(path)
    assert err.value.where == f"byte {text.index(constant, 20)}"
    path.write_text('{"a": "NaN Infinity -Infinity"}', encoding="utf-8")
    assert _value(path) == {"a": "NaN Infinity -Infinity"}  # in strings they are text


def _telegram(value: str) -> tuple[Any, str]:
    messages = [
        {"id": i, "type": "message", "date_unixtime": "1700000000", "text": f"m{i}"} for i in range(300)
    ]
    messages[150]["x"] = "@@"
    export = {"name": "A", "type": "personal_chat", "id": 1, "messages": messages}
    return telegram, json.dumps(export, indent=1).replace('"@@"', value)


def _discord(value: str) -> tuple[Any, str]:
    message = {"id": "0", "type": "Default", "timestamp": "2024-01-01T00:00:00+00:00", "content": "hi"}
    messages = [{**message, "id": str(i), "author": {"id": "9", "name": "B"}} for i in range(300)]
    messages[150]["x"] = "@@"
    export = {"guild": {"id": "1", "name": "G"}, "channel": {"id": "2", "name": "c"}, "messages": messages}
    return discord, json.dumps(export, indent=2).replace('"@@"', value)


def _chatgpt(value: str) -> tuple[Any, str]:
    conversations = [{"title": f"c{i}", "id": f"c{i}", "mapping": {}} for i in range(300)]
    conversations[150]["x"] = "@@"
    return chatgpt, json.dumps(conversations, indent=2).replace('"@@"', value)


@pytest.mark.parametrize("constant", CONSTANTS)
@pytest.mark.parametrize("export", [_telegram, _discord, _chatgpt])
@pytest.mark.parametrize("minified", [False, True])
def test_parsers_refuse_nan_and_infinity_on_every_path(
    tmp_path: Path, constant: str, export: Any, minified: bool
) -> None:
    """In the orjson batches of a pretty-printed export and in json's scanner (minified) alike."""
    module, text = export(constant)
    if minified:
        text = text.replace("\n", "").replace("  ", "")
    path = tmp_path / "export.json"
    path.write_text(text, encoding="utf-8")
    got = 0
    with pytest.raises(ExportError, match=rf"invalid JSON \({constant} is not JSON\)") as err:
        for conv in module.parse(path, ParseOptions(batch_size=10), ParseReport()):
            got += len(conv.messages)
    assert err.value.where is not None and err.value.where.startswith(f"byte {text.index(constant)} (")
    assert "[150])" in err.value.where
    assert got <= 150
    # The same export with a number there parses whole.
    path.write_text(text.replace(constant, "1.5"), encoding="utf-8")
    assert sum(len(c.messages) for c in module.parse(path, ParseOptions(), ParseReport())) == (
        0 if module is chatgpt else 300
    )
