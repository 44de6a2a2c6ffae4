"""JSON Lines datasets (ShareGPT, OpenAI/Mistral messages, Alpaca): shapes, skips, ids, errors."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, ParseOptions, ParseReport, Role
from twinlm.sources import detect, jsonl
from twinlm.sources._common import read_head, stable_id

from testdata import REALDATA

FIX = Path(__file__).parent.parent / "fixtures" / "jsonl"


def run(path: Path, **opts: object) -> tuple[list[Conversation], ParseReport]:
    report = ParseReport()
    return list(jsonl.parse(path, ParseOptions(**opts), report)), report  # type: ignore[arg-type]


def write(tmp_path: Path, text: str, name: str = "data.jsonl") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def expected_id(system: str | None, *turns: tuple[str, str, str]) -> str:
    flat: list[str] = []
    for turn in turns:
        flat += list(turn)
    return stable_id("jsonl", system or "", *flat)


def turns(conv: Conversation) -> list[tuple[str, str, str, str]]:
    return [(m.role.value, m.author_name, m.kind.value, m.text) for m in conv.messages]


# ------------------------------------------------------------------------------------------ shapes


def test_sharegpt() -> None:
    convs, report = run(FIX / "sharegpt.jsonl")
    assert [c.title for c in convs] == [
        'Wie sagt man "Gemütlichkeit" auf Englisch? 🙂',
        "Weather in Paris?",
        "Anyone there?",
    ]
    first, second, third = convs
    assert first.source == "jsonl" and first.kind == "dataset"
    assert first.system_prompt == "You are a helpful translator."
    assert turns(first) == [
        ("user", "user", "text", 'Wie sagt man "Gemütlichkeit" auf Englisch? 🙂'),
        ("assistant", "assistant", "text", 'Roughly "coziness" — 居心地の良さ in Japanese.'),
    ]
    assert first.id == expected_id(
        "You are a helpful translator.",
        ("user", "user", 'Wie sagt man "Gemütlichkeit" auf Englisch? 🙂'),
        ("assistant", "assistant", 'Roughly "coziness" — 居心地の良さ in Japanese.'),
    )
    assert [m.id for m in first.messages] == [f"{first.id}:0", f"{first.id}:1"]
    assert all(m.timestamp is None for c in convs for m in c.messages)
    # a "system" turn becomes the system prompt; tool-ish and named speakers keep their turns
    assert second.system_prompt == "Be brief."
    assert turns(second) == [
        ("user", "user", "text", "Weather in Paris?"),
        ("assistant", "assistant", "text", '{"name": "weather", "arguments": {"city": "Paris"}}'),
        ("tool", "tool", "text", '{"temp": 21}'),
        ("assistant", "assistant", "text", "21 °C."),
        ("participant", "Aragorn", "text", "You have my sword."),
    ]
    assert second.participants == ("user", "assistant", "tool", "Aragorn")
    assert third.system_prompt is None
    assert turns(third) == [("user", "user", "text", "Anyone there?")]
    # line 3 bad JSON, line 4 value 42, line 5 messages shape, line 6 = line 1 re-keyed, line 7 empty turn
    assert report.skipped == {
        "malformed line": 2,
        "other shape": 1,
        "duplicate sample": 1,
        "empty message": 1,
    }
    assert (report.conversations, report.messages) == (3, 8)


def test_messages() -> None:
    convs, report = run(FIX / "messages.jsonl")
    assert len(convs) == 4
    ada, picture, photo, last = convs
    assert ada.system_prompt == "You are Ada, terse and kind."
    assert turns(ada) == [
        ("user", "user", "text", "Hi Ada! ¿Qué tal?"),
        ("assistant", "assistant", "text", "Bien. You?"),
    ]
    assert ada.id == expected_id(
        "You are Ada, terse and kind.",
        ("user", "user", "Hi Ada! ¿Qué tal?"),
        ("assistant", "assistant", "Bien. You?"),
    )
    # list content: text parts joined, image placeholder on its own line, `name` as the author,
    # the content-less tool call skipped, the unsupported video part skipped
    assert turns(picture) == [
        ("user", "Zoë", "text", "What is in this picture?\n[image]"),
        ("tool", "tool", "text", "a cat on a mat"),
        ("assistant", "assistant", "text", "A cat\non a mat."),
    ]
    assert picture.messages[0].author_id == "Zoë"
    assert [m.id for m in picture.messages] == [f"{picture.id}:0", f"{picture.id}:1", f"{picture.id}:2"]
    # image-only turn is MEDIA; a system turn after the first user turn stays in place
    assert photo.system_prompt is None
    assert photo.title == "[image]"
    assert turns(photo) == [
        ("user", "user", "media", "[image]"),
        ("system", "system", "text", "Mid-conversation rule."),
        ("assistant", "assistant", "text", "Nice photo 📷"),
    ]
    assert turns(last) == [("user", "user", "text", "last one"), ("assistant", "assistant", "text", "ok")]
    assert report.skipped == {
        "malformed line": 2,
        "tool call without text": 1,
        "unsupported content part": 1,
        "other shape": 1,
    }
    assert (report.conversations, report.messages) == (4, 10)


def test_messages_media_drop_keeps_ids() -> None:
    kept, _ = run(FIX / "messages.jsonl")
    convs, report = run(FIX / "messages.jsonl", media="drop")
    assert [c.id for c in convs] == [c.id for c in kept]
    photo = convs[2]
    assert [(m.id, m.text) for m in photo.messages] == [
        (f"{photo.id}:1", "Mid-conversation rule."),
        (f"{photo.id}:2", "Nice photo 📷"),
    ]
    assert convs[1].messages[0].text == "What is in this picture?"
    assert report.skipped["media dropped (image)"] == 2


def test_alpaca() -> None:
    convs, report = run(FIX / "alpaca.jsonl")
    assert len(convs) == 4
    translate, colours, story, silent = convs
    assert turns(translate) == [
        ("user", "user", "text", "Translate to French.\n\nGood morning, Zoë!"),
        ("assistant", "assistant", "text", "Bonjour, Zoë !"),
    ]
    assert translate.title == "Translate to French."
    assert turns(colours) == [
        ("user", "user", "text", "Name three colours."),
        ("assistant", "assistant", "text", "Red, green, blue."),
    ]
    assert story.system_prompt == "You are a storyteller."
    assert turns(story) == [
        ("user", "user", "text", "Tell me a story."),
        ("assistant", "assistant", "text", "Once upon a time…"),
        ("user", "user", "text", "Continue the story."),
        ("assistant", "assistant", "text", "…and they lived happily."),
    ]
    assert turns(silent) == [("user", "user", "text", "Say nothing.")]
    assert report.skipped == {"malformed line": 2, "empty message": 1}
    assert (report.conversations, report.messages) == (4, 9)


def test_json_array_of_samples() -> None:
    convs, report = run(FIX / "sharegpt_array.json")
    assert [turns(c) for c in convs] == [
        [("user", "user", "text", "Capital of Japan?"), ("assistant", "assistant", "text", "東京 (Tokyo).")],
        [("user", "user", "text", "2+2?"), ("assistant", "assistant", "text", "4")],
    ]
    assert report.skipped == {"malformed sample": 1}


def test_same_sample_in_every_shape_has_one_id(tmp_path: Path) -> None:
    share = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    msgs = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    alpaca = {"instruction": "Hi", "input": "", "output": "Hello"}
    ids = {
        run(write(tmp_path, json.dumps(obj) + "\n", f"{i}.jsonl"))[0][0].id
        for i, obj in enumerate((share, msgs, alpaca))
    }
    assert ids == {expected_id(None, ("user", "user", "Hi"), ("assistant", "assistant", "Hello"))}


def test_first_valid_line_decides_shape(tmp_path: Path) -> None:
    lines = [
        # malformed lines (the empty turn before the bad one is not counted) do not decide the shape
        {"instruction": "", "output": ["no"]},
        {"messages": [{"role": "user", "content": ""}, {"role": "user", "content": 5}]},
        {
            "messages": [
                {"role": "user", "content": "Q" * 100 + "\nsecond line"},
                {"role": "assistant", "content": "A"},
            ]
        },
        {"instruction": "later alpaca", "output": "x"},
    ]
    p = write(tmp_path, "\n".join(json.dumps(x) for x in lines) + "\n")
    (conv,), report = run(p)
    assert conv.title == "Q" * 80
    assert report.skipped == {"malformed line": 2, "other shape": 1}


def test_lone_surrogates_are_replaced() -> None:
    report = ParseReport()
    assert jsonl._valid_unicode("a\ud800b", report) == "a?b"
    assert jsonl._valid_unicode("fine 😀", report) == "fine 😀"
    assert report.notes == {"invalid unicode replaced": 1}


def test_reparse_is_stable() -> None:
    a, _ = run(FIX / "sharegpt.jsonl")
    b, _ = run(FIX / "sharegpt.jsonl")
    assert a == b


def test_long_message_is_clipped_but_id_uses_full_text(tmp_path: Path) -> None:
    text = "x" * 50
    p = write(tmp_path, json.dumps({"instruction": text, "output": "ok"}) + "\n")
    convs, report = run(p, max_message_chars=10)
    assert convs[0].messages[0].text == "x" * 10
    assert convs[0].id == expected_id(None, ("user", "user", text), ("assistant", "assistant", "ok"))
    assert report.notes == {"message cut to max_message_chars": 1}


def test_bom_crlf_and_lone_surrogate(tmp_path: Path) -> None:
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"instruction": "caf\\u00e9", "output": "ok"}\r\n\r\n')
    convs, _ = run(p)
    assert turns(convs[0])[0] == ("user", "user", "text", "café")
    arr = write(tmp_path, '[{"instruction": "bad \\ud800 half", "output": "ok"}]', "a.json")
    convs, _ = run(arr)
    assert convs[0].messages[0].text == "bad ? half"  # no lone surrogate reaches the corpus
    line = write(
        tmp_path, '{"instruction": "bad \\ud800", "output": "ok"}\n{"instruction": "a", "output": "b"}\n'
    )
    convs, report = run(line)
    assert len(convs) == 1 and report.skipped == {"malformed line": 1}


# ------------------------------------------------------------------------------------------ errors


def test_every_line_malformed_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, '\n{"a": 1}\n{"conversations": "nope"}\n[1, 2]\n')
    with pytest.raises(ExportError) as err:
        run(p)
    assert err.value.where == "line 2"
    assert "not a ShareGPT, OpenAI messages or Alpaca sample" in str(err.value)
    p = write(tmp_path, "garbage\n")
    with pytest.raises(ExportError, match="invalid JSON") as err:
        run(p)
    assert err.value.where == "line 1"


def test_wrong_types_inside_known_shape_only_line_is_error(tmp_path: Path) -> None:
    p = write(tmp_path, json.dumps({"messages": [{"role": "user", "content": {"x": 1}}]}) + "\n")
    with pytest.raises(ExportError, match="wrong types") as err:
        run(p)
    assert err.value.where == "line 1"


def test_truncated_array_is_error(tmp_path: Path) -> None:
    p = write(tmp_path, '[{"instruction": "a", "output": "b"}, {"instruction": ', "a.json")
    with pytest.raises(ExportError, match="invalid or truncated JSON") as err:
        run(p)
    assert err.value.where is not None and err.value.where.startswith("byte ")


def test_deep_nesting_is_refused_cheaply(tmp_path: Path) -> None:
    # ijson's memory grows with the square of the depth: the array reader stops at MAX_DEPTH
    p = tmp_path / "deep.json"
    p.write_bytes(b'[{"instruction": ' + b"[" * 100_000 + b"]" * 100_000 + b', "output": "x"}]')
    assert jsonl.looks_like(read_head(p), p)
    with pytest.raises(ExportError, match="nested deeper than 256 levels"):
        run(p)
    p.write_bytes(b"[" * 100_000)
    assert not jsonl.looks_like(read_head(p), p)
    line = tmp_path / "deep.jsonl"
    line.write_bytes(b'{"instruction": "a", "output": "b"}\n{"input": ' + b"[" * 100_000 + b"\n")
    convs, report = run(line)
    assert len(convs) == 1 and report.skipped == {"malformed line": 1}


@pytest.mark.parametrize("content", [b"", b"  \n\n\t\n", b"\xef\xbb\xbf"])
def test_empty_files(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "e.jsonl"
    p.write_bytes(content)
    convs, report = run(p)
    assert convs == [] and report.skipped == {"empty file": 1}


@pytest.mark.parametrize("content", [b"\x00\xff\xfe garbage \x80\x81", b"[\x00\xff]", b"{\xff\xfe}\n\x80\n"])
def test_garbage_is_export_error(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "g.jsonl"
    p.write_bytes(content)
    with pytest.raises(ExportError):
        run(p)


FUZZ_SOURCES = sorted(FIX.iterdir())


@settings(max_examples=40, deadline=None)
@given(
    index=st.integers(0, len(FUZZ_SOURCES) - 1),
    cut=st.floats(0, 1),
    patches=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6),
)
def test_fuzz_only_export_errors(index: int, cut: float, patches: list[tuple[float, int]]) -> None:
    data = bytearray(FUZZ_SOURCES[index].read_bytes())
    data = data[: int(len(data) * cut)] if cut < 0.98 else data
    for where, byte in patches:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] = byte
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.jsonl"
        p.write_bytes(bytes(data))
        jsonl.looks_like(read_head(p), p)
        with contextlib.suppress(ExportError):
            run(p)


# --------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize("path", FUZZ_SOURCES, ids=lambda p: p.name)
def test_detects_fixtures(path: Path) -> None:
    assert jsonl.looks_like(read_head(path), path)
    assert detect(path) == "jsonl"


@pytest.mark.parametrize(
    "text",
    [
        '{"conversations": [{"from": "human", "value": "' + "y" * 70_000 + '"}]}\n',  # first line cut
        '{"messages": [{"role": "user", "content": "hi"}]}',  # one line, no newline
        '[\n  {\n    "instruction": "a",\n    "input": "",\n    "output": "b"\n  }\n]\n',
    ],
)
def test_detects_variants(tmp_path: Path, text: str) -> None:
    p = write(tmp_path, text)
    assert jsonl.looks_like(read_head(p), p)


@pytest.mark.parametrize(
    "text",
    [
        "{\n" + '  "messages": [{"role": "user", "content": "pretty-printed"}]\n}\n',  # not one per line
        '[{"title": "chat", "mapping": {}, "current_node": null}]',  # minified ChatGPT export
        '{"participants": [], "messages": [{"sender_name": "A", "role": "x", "content": "hi"}]}\n',
        '{"guild": {"id": "1"}, "messages": [{"id": "1", "author": {"name": "A"}, "content": "x"}]}\n',
        '{"name": "C", "type": "personal_chat", "messages": [{"id": 1, "from": "A", "text": "x"}]}\n',
        '{"a": 1}\n{"instruction": "x", "output": "y"}\n',  # first line decides
        '12/9/20, 23:55 - Alice: {"messages": []}\n',
        "",
    ],
)
def test_rejects_other_shapes(tmp_path: Path, text: str) -> None:
    p = write(tmp_path, text)
    assert not jsonl.looks_like(read_head(p), p)


def _realdata_root() -> Path | None:
    extra = os.environ.get("TWINLM_EXTRA_EXPORTS")
    if extra:
        return Path(extra)
    return REALDATA if REALDATA.is_dir() else None


def test_rejects_other_formats_realdata() -> None:
    root = _realdata_root()
    files = [p for p in root.glob("*/*") if p.is_file() and p.parent.name != "jsonl"] if root else []
    if not files:
        pytest.skip("no realdata")
    claimed = [p.name for p in files if jsonl.looks_like(read_head(p), p)]
    assert claimed == []


def test_realdata_jsonl() -> None:
    root = _realdata_root()
    files = sorted(p for p in root.rglob("*") if p.is_file() and detect(p) == "jsonl") if root else []
    if not files:
        pytest.skip("no jsonl realdata")
    for p in files:
        convs, _report = run(p)
        assert convs, p
        for conv in convs:
            assert conv.kind == "dataset"
            for m in conv.messages:
                assert m.text.strip()
                assert m.kind in (Kind.TEXT, Kind.MEDIA)
                assert m.role in (Role.USER, Role.ASSISTANT, Role.SYSTEM, Role.TOOL, Role.PARTICIPANT)
