"""DiscordChatExporter JSON parser: fixtures with the real edge cases, detection, fuzzing."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport
from twinlm.sources import detect, discord
from twinlm.sources._common import read_head

from damage import damaged, parses_or_fails_cleanly

FIXTURES = Path(__file__).parent.parent / "fixtures" / "discord"


def run(path: Path, **options: object) -> tuple[list[Conversation], ParseReport]:
    report = ParseReport()
    convs = list(discord.parse(path, ParseOptions(**options), report))  # type: ignore[arg-type]
    return convs, report


def messages(convs: list[Conversation]) -> list[Message]:
    return [m for c in convs for m in c.messages]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_guild_channel() -> None:
    convs, report = run(FIXTURES / "guild_general.json")
    assert len(convs) == 1
    conv = convs[0]
    assert (conv.source, conv.id, conv.kind) == ("discord", "200000000000000010", "chat")
    assert conv.title == "Book Club / #general"
    assert conv.platform_detail == "guild channel"
    msgs = conv.messages
    assert [m.id for m in msgs] == [
        "200000000000000010:1001",
        "200000000000000010:1002",
        "200000000000000010:1005",
        "200000000000000010:1006",
        "200000000000000010:1007",
        "200000000000000010:1008",
        "200000000000000010:1011",
        "200000000000000010:1012",
    ]
    assert [m.author_name for m in msgs] == ["Ana", "Ben", "Ben", "Ana", "carl", "Ben", "Ben", "carl"]
    assert msgs[0].author_id == "100000000000000001"
    assert msgs[0].text == "anyone finished the book? <:pog:123>"
    assert msgs[0].timestamp == datetime(2024, 3, 1, 9, 1, 0, 123000, tzinfo=UTC)
    # Reply: "+02:00" offset converted to UTC, reply_to is the namespaced referenced id.
    assert msgs[1].text == "yes!! the ending"
    assert msgs[1].timestamp == utc(2024, 3, 1, 9, 2, 30)
    assert msgs[1].reply_to == "200000000000000010:1001"
    assert [m.reply_to for m in msgs[2:]] == [None] * 6
    assert (msgs[2].text, msgs[2].kind) == ("[image]", Kind.MEDIA)  # "cover.PNG": case-insensitive
    assert (msgs[3].text, msgs[3].kind, msgs[3].edited) == ("look at this\n[video]\n[file]", Kind.TEXT, True)
    assert (msgs[4].text, msgs[4].kind) == ("[sticker]", Kind.STICKER)
    assert (msgs[5].text, msgs[5].kind) == ("https://example.com/review", Kind.TEXT)  # link preview kept
    assert (msgs[6].text, msgs[6].kind) == ("[voice message]", Kind.MEDIA)
    assert (msgs[7].text, msgs[7].forwarded_from, msgs[7].reply_to) == ("forwarded words", "unknown", None)
    assert not any(m.edited for m in msgs if m.id != "200000000000000010:1006")
    assert dict(report.skipped) == {
        "service message (member joined)": 1,
        "bot author": 1,
        "service message (pin)": 1,
        "bot command": 1,
        "empty message": 1,
        "empty message (embed only)": 1,
    }
    assert (report.conversations, report.messages) == (1, 8)


def test_dm_with_call() -> None:
    convs, report = run(FIXTURES / "dm_call.json")
    (conv,) = convs
    assert (conv.id, conv.title, conv.platform_detail) == ("200000000000000020", "DM with benji", "DM")
    assert [(m.id, m.author_name, m.text, m.reply_to) for m in conv.messages] == [
        ("200000000000000020:2001", "Ana", "call me?", None),
        ("200000000000000020:2003", "Ben", "that was fun", "200000000000000020:2001"),
    ]
    assert conv.messages[1].timestamp == utc(2024, 4, 2, 20, 14)
    assert dict(report.skipped) == {"service message (call)": 1}


def test_group_dm_renames_and_recipients() -> None:
    convs, report = run(FIXTURES / "group_dm.json")
    (conv,) = convs
    assert (conv.id, conv.title, conv.platform_detail) == ("200000000000000030", "road trip", "group DM")
    assert [(m.author_id, m.text) for m in conv.messages] == [
        ("100000000000000003", "who is driving"),
        ("100000000000000002", "me 🚗"),
    ]
    assert dict(report.skipped) == {
        "service message (recipient added)": 1,
        "service message (channel renamed)": 2,
        "service message (channel icon changed)": 1,
        "service message (recipient removed)": 1,
    }


def test_thread_has_parent_channel_in_title() -> None:
    convs, report = run(FIXTURES / "thread.json")
    (conv,) = convs
    assert conv.id == "200000000000000040"
    assert conv.title == "Book Club / #general / Chapter 3 spoilers"
    assert conv.platform_detail == "thread in #general"
    assert [(m.text, m.reply_to) for m in conv.messages] == [
        ("the twist!", None),
        ("I KNOW", "200000000000000040:4001"),
    ]
    assert dict(report.skipped) == {
        "service message (thread starter)": 1,
        "service message (thread created)": 1,
    }


def test_old_schema() -> None:
    convs, report = run(FIXTURES / "old_schema.json")
    (conv,) = convs
    assert (conv.id, conv.title) == ("400000000000000002", "Old Friends / #off-topic")
    msgs = conv.messages
    # No nickname: the account name; no isBot: a person.
    assert [(m.author_id, m.author_name) for m in msgs] == [
        ("400000000000000010", "dora"),
        ("400000000000000011", "eli"),
        ("400000000000000010", "dora"),
    ]
    assert [m.timestamp for m in msgs] == [
        utc(2019, 6, 1, 12, 30),  # "+02:00", no fraction
        datetime(2019, 6, 1, 12, 31, 5, 123456, tzinfo=UTC),  # 7 fractional digits and "Z"
        utc(2019, 6, 1, 12, 32),  # "-05:00"
    ]
    assert msgs[1].text == "seven fractional digits and Z\n[audio]"
    assert [m.edited for m in msgs] == [False, True, False]
    assert not report.skipped


def test_bad_timestamps_and_malformed_records_are_counted() -> None:
    convs, report = run(FIXTURES / "bad_timestamp.json")
    (conv,) = convs
    assert [(m.id, m.author_id, m.author_name, m.text) for m in conv.messages] == [
        ("500000000000000002:7001", "500000000000000010", "Fay", "first"),
        ("500000000000000002:7005", "500000000000000011", "gus", "last"),  # int id, null nickname
    ]
    assert dict(report.skipped) == {"malformed message (timestamp)": 2, "malformed message": 2}


def test_header_after_messages() -> None:
    convs, _ = run(FIXTURES / "reordered_keys.json")
    (conv,) = convs
    assert (conv.id, conv.title) == ("600000000000000002", "Sorted Keys / #resaved")
    (msg,) = conv.messages
    assert (msg.id, msg.author_name, msg.reply_to) == (
        "600000000000000002:8001",
        "Hal",
        "600000000000000002:7999",
    )


def test_media_drop_counts_each_dropped_message() -> None:
    convs, report = run(FIXTURES / "guild_general.json", media="drop")
    texts = [m.text for m in messages(convs)]
    assert texts == [
        "anyone finished the book? <:pog:123>",
        "yes!! the ending",
        "look at this",
        "https://example.com/review",
        "forwarded words",
    ]
    assert report.skipped["media dropped (image)"] == 1
    assert report.skipped["media dropped (sticker)"] == 1
    assert report.skipped["media dropped (voice message)"] == 1
    assert report.notes["media placeholder dropped from a text message"] == 1


def test_slices_share_the_conversation_id() -> None:
    convs, report = run(FIXTURES / "guild_general.json", batch_size=3)
    assert [len(c.messages) for c in convs] == [3, 3, 2]
    assert {c.id for c in convs} == {"200000000000000010"}
    assert (report.conversations, report.messages) == (1, 8)


def test_usernames_travel_beside_nicknames() -> None:
    """Issue 9.3: an alias may name the username (ana_b) as well as the server nickname (Ana)."""
    convs, _ = run(FIXTURES / "guild_general.json", batch_size=3)
    pairs = {pair for c in convs for pair in c.author_names}
    assert pairs == {("100000000000000001", "ana_b"), ("100000000000000002", "benji")}  # before: no field
    # carl's nickname is his username, so nothing to add; each pair comes once, with its slice or before.
    assert sum(len(c.author_names) for c in convs) == 2


def test_ids_are_stable_and_unique() -> None:
    first = [m.id for p in sorted(FIXTURES.glob("*.json")) for m in messages(run(p)[0])]
    second = [m.id for p in sorted(FIXTURES.glob("*.json")) for m in messages(run(p)[0])]
    assert first == second
    assert len(set(first)) == len(first)


def test_clip_long_message(tmp_path: Path) -> None:
    convs, report = run(FIXTURES / "dm_call.json", max_message_chars=4)
    assert [m.text for m in messages(convs)] == ["call", "that"]
    assert report.notes["message cut to max_message_chars"] == 2


NAIVE = (
    '{"guild": {"id": "1", "name": "G"}, "channel": {"id": "2", "type": "GuildTextChat", "name": "c"},'
    ' "messages": [{"id": "3", "type": "Default", "timestamp": "2024-01-01T12:00:00",'
    ' "content": "hi", "author": {"id": "4", "name": "x"}}]}'
)


def test_timestamp_without_offset_uses_options_timezone(tmp_path: Path) -> None:
    path = tmp_path / "naive.json"
    path.write_text(NAIVE, encoding="utf-8")
    convs, _ = run(path, timezone="Europe/Berlin")
    assert messages(convs)[0].timestamp == utc(2024, 1, 1, 11, 0)
    with pytest.raises(ExportError, match="unknown timezone"):
        run(path, timezone="Not/AZone")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"   \n\t  ", "empty file"),
        (b"\xff\xfe\x00garbage\x81", r'invalid JSON \(expected "\{"\)'),
        (b"[1, 2]", "top level is not an object"),
        (b'{"guild": {"id": "1"}, "messages": []}', "no channel header"),
        (b'{"guild": {"id": "1"}, "channel": {"id": "2"}}', "no messages array"),
    ],
)
def test_unreadable_files_raise_export_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ExportError, match=message) as info:
        run(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_file_names_the_byte_offset(tmp_path: Path) -> None:
    data = (FIXTURES / "guild_general.json").read_bytes()
    path = tmp_path / "cut.json"
    path.write_bytes(data[: len(data) // 2])
    report = ParseReport()
    got: list[Message] = []
    with pytest.raises(ExportError, match=r"truncated JSON \(the file ends early") as info:
        for conv in discord.parse(path, ParseOptions(), report):
            got.extend(conv.messages)
    assert info.value.where is not None and info.value.where.startswith("byte ")


def test_looks_like() -> None:
    for path in FIXTURES.glob("*.json"):
        assert discord.looks_like(read_head(path), path), path
    # Cut mid-file is fine: only the header is needed.
    head = (FIXTURES / "guild_general.json").read_text(encoding="utf-8")[:400]
    assert discord.looks_like(head, Path("x"))
    assert not discord.looks_like('{"name": "Chat", "type": "personal_chat", "messages": []}', Path("x"))
    assert not discord.looks_like('{"participants": [{"name": "a"}], "messages": []}', Path("x"))
    assert not discord.looks_like('[{"guild": {"id": 1}, "channel": {"id": 2}}]', Path("x"))
    # A DCE header quoted inside a string of another export is escaped, so it does not match.
    assert not discord.looks_like('{"text": "{\\"guild\\": {\\"channel\\": {", "messages": []}', Path("x"))


def test_detect_fixtures() -> None:
    for path in FIXTURES.glob("*.json"):
        assert detect(path) == "discord", path


SERVICE_TEXTS = ("Started a call", "Pinned a message", "Joined the server", "Changed the channel")


def test_realdata_parses_without_service_text() -> None:
    root = os.environ.get("TWINLM_EXTRA_EXPORTS")
    if not root or not (Path(root) / "discord").is_dir():
        pytest.skip("TWINLM_EXTRA_EXPORTS not set")
    files = sorted((Path(root) / "discord").glob("*.json"))
    assert files
    for path in files:
        convs, report = run(path)
        msgs = messages(convs)
        assert report.conversations == 1 and msgs, path
        for m in msgs:
            assert m.timestamp is not None and m.timestamp.tzinfo is not None
            assert not m.text.startswith(SERVICE_TEXTS), (path, m.text)
        assert len({m.id for m in msgs}) == len(msgs)


@settings(max_examples=40, deadline=None)
@given(data=damaged(sorted(FIXTURES.glob("*.json"))), drop=st.booleans())
def test_fuzzed_files_parse_or_raise_export_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, drop: bool
) -> None:
    parses_or_fails_cleanly(discord, tmp_path_factory.mktemp("fuzz") / "export.json", data, drop)


# --- the streaming scanner: every layout gives the same messages ------------------------------------

BENCHMARKS = Path(__file__).parent.parent.parent / "benchmarks"


def _generator() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gen_discord
    finally:
        sys.path.remove(str(BENCHMARKS))
    return gen_discord


def _rows(convs: list[Conversation]) -> list[tuple[Any, ...]]:
    return [(c.id, c.title, c.platform_detail, m) for c in convs for m in c.messages]


def _relayout(data: bytes, layout: str) -> bytes:
    doc = json.loads(data.decode("utf-8"))
    if layout == "minified":
        return json.dumps(doc).encode()
    if layout == "indent4":
        return json.dumps(doc, indent=4, ensure_ascii=False).encode()
    if layout == "crlf":
        return data.replace(b"\n", b"\r\n")
    if layout == "tabs":
        return json.dumps(doc, indent="\t").encode()
    if layout == "bom":
        return b"\xef\xbb\xbf" + data
    assert layout == "sorted"  # header after the messages, as a re-save with sorted keys writes it
    return json.dumps(doc, indent=2, sort_keys=True).encode()


@pytest.mark.parametrize("layout", ["minified", "indent4", "crlf", "tabs", "bom", "sorted"])
def test_any_json_layout_gives_the_same_result(tmp_path: Path, layout: str) -> None:
    sources = [*sorted(FIXTURES.glob("*.json")), tmp_path / "generated.json"]
    _generator().write_discord_export(sources[-1], 400, seed=5)
    for source in sources:
        data = source.read_bytes()
        convs, report = run(source, timezone="UTC", batch_size=150)
        path = tmp_path / f"{layout}.json"
        path.write_bytes(_relayout(data, layout))
        other, other_report = run(path, timezone="UTC", batch_size=150)
        assert _rows(other) == _rows(convs), source.name
        assert other_report == report, source.name


def test_generated_export_matches_a_plain_json_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    _generator().write_discord_export(path, 3000, seed=1)
    data = json.loads(path.read_text(encoding="utf-8"))
    channel = data["channel"]["id"]
    expected = [
        f"{channel}:{m['id']}"
        for m in data["messages"]
        if m["type"] in ("Default", "Reply")
        and not m["author"]["isBot"]
        and (m["content"].strip() or m["attachments"] or m["stickers"] or "forwardedMessage" in m)
    ]
    convs, report = run(path, batch_size=700)
    assert [m.id for m in messages(convs)] == expected
    assert len(expected) > 2700
    assert (report.conversations, report.messages) == (1, len(expected))
    assert sum(report.skipped.values()) == 3000 - len(expected)
    assert {c.title for c in convs} == {"Night Owls Гильдия / #general"}
    replies = [m for m in messages(convs) if m.reply_to]
    assert replies and all(r.reply_to.startswith(f"{channel}:") for r in replies)
    assert any(m.text.startswith("[") for m in messages(convs))  # attachments and stickers


def test_generator_is_deterministic(tmp_path: Path) -> None:
    gen = _generator()
    gen.write_discord_export(tmp_path / "a.json", 300, seed=3)
    gen.write_discord_export(tmp_path / "b.json", 300, seed=3)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    gen.write_discord_export(tmp_path / "empty.json", 0)
    assert json.loads((tmp_path / "empty.json").read_text(encoding="utf-8"))["messages"] == []


HEADER = '{"guild": {"id": "1", "name": "G"}, "channel": {"id": "2", "type": "GuildTextChat", "name": "c"}, '
MSG = '{"id": "%s", "type": "Default", "timestamp": "2024-01-01T00:00Z", "content": "x", "author": {"id": 9}}'


def test_every_messages_array_is_read_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "two.json"
    # Messages before the header (read again once it is known), after it, and a second array.
    parts = [
        f'{{"messages": [{MSG % 1}], "guild": {{"id": "1", "name": "G"}},',
        f' "messages": [{MSG % 2}], "channel": {{"id": "2", "name": "c"}},',
        f' "messages": [{MSG % 3}]}}',
    ]
    path.write_text("".join(parts), encoding="utf-8")
    convs, report = run(path)
    assert [m.id for m in messages(convs)] == ["2:1", "2:2", "2:3"]
    assert {c.title for c in convs} == {"G / #c"}
    assert (report.conversations, report.messages) == (1, 3)


def test_header_fields_merge_like_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    # A later scalar replaces an earlier one; a null or nested value does not; numbers become text.
    path.write_text(
        '{"channel": {"id": "2", "name": "a", "id": null}, "guild": {"id": 7, "name": "G"},'
        ' "channel": {"name": "b", "id": [1]}, "messages": []}',
        encoding="utf-8",
    )
    (conv,) = run(path)[0]
    assert (conv.id, conv.title) == ("2", "G / #b")


def _bad(messages_json: str, tail: str = "}") -> bytes:
    return (HEADER + '"messages": ' + messages_json + tail).encode()


@pytest.mark.parametrize(
    ("content", "message", "place"),
    [
        (_bad("[]", "} x"), "data after the end of the object", f"byte {len(_bad('[]')) + 1}"),
        (_bad(f"[{MSG % 1}, {MSG % 2}"[:-9], ""), "the file ends early", "(messages[1])"),
        (_bad(f'[{MSG % 1}, {{"id" 2}}]'), r"invalid JSON \(Expecting ':' delimiter\)", "(messages[1])"),
        (_bad(f"[{MSG % 1}]").replace(b'"x"', b'"\xff"'), "not valid UTF-8", "(messages[0])"),
        (_bad("[" + "[" * 5000 + "]" * 5000 + "]"), "nested too deeply", "(messages[0])"),
        (b"\xef\xbb\xbf   ", "no JSON value", "byte 6"),
    ],
)
def test_errors_name_the_place(tmp_path: Path, content: bytes, message: str, place: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ExportError, match=message) as info:
        run(path)
    assert str(path) in str(info.value)
    assert place in (info.value.where or "")


def test_truncated_big_export_names_the_message(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    _generator().write_discord_export(path, 500, seed=2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    report = ParseReport()
    got: list[Message] = []
    with pytest.raises(ExportError, match="the file ends early") as info:
        for conv in discord.parse(path, ParseOptions(batch_size=50), report):
            got.extend(conv.messages)
    where = info.value.where or ""
    assert where.startswith(f"byte {len(data) * 3 // 4} (messages[")
    # every message before the cut was read
    assert len(got) > 300


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a/b/photo.JPG", "image"),
        ("dir/", "file"),
        ("x/clip.mp4/", "video"),
        ("x/song.mp3/.", "audio"),
        ("C:\\files\\voice-message.ogg", "voice message"),
        ("https://cdn.example/a/b.png?size=1", "image"),
        ("", "file"),
        ("/", "file"),
        ("a/..", "file"),
    ],
)
def test_attachment_kind_by_file_name(name: str, kind: str) -> None:
    assert discord._attachment_kind({"fileName": name}) == kind


def test_messages_before_the_header_count_their_notes_once(tmp_path: Path) -> None:
    path = tmp_path / "sorted.json"
    message = (MSG % 1).replace('"x"', '"x\\ud800"')  # a lone surrogate: replaced, and noted
    path.write_text(f'{{"channel": {{"id": "2"}}, "messages": [{message}], "guild": {{"id": "1"}}}}')
    convs, report = run(path)
    assert [m.text for m in messages(convs)] == ["x\ufffd"]
    assert report.notes == {"invalid unicode escape replaced": 1}
