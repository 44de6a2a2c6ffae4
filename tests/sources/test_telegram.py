"""Telegram Desktop result.json: both schemas, single-chat and full exports, the scanner's fallbacks."""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport, Role
from twinlm.sources import detect, telegram

from testdata import REALDATA

FIX = Path(__file__).parent.parent / "fixtures" / "telegram"
SINGLE = FIX / "single_modern.json"
OLD = FIX / "single_2020_supergroup.json"
FULL = FIX / "full_export.json"
BENCHMARKS = Path(__file__).parent.parent.parent / "benchmarks"


def run(path: Path, **options: Any) -> tuple[list[Conversation], ParseReport]:
    report = ParseReport()
    options.setdefault("timezone", "Europe/Berlin")
    return list(telegram.parse(path, ParseOptions(**options), report)), report


def messages(path: Path, **options: Any) -> list[Message]:
    return [m for c in run(path, **options)[0] for m in c.messages]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def row(m: Message) -> tuple[Any, ...]:
    return (
        m.id,
        m.author_id,
        m.author_name,
        m.timestamp,
        m.kind,
        m.text,
        m.reply_to,
        m.forwarded_from,
        m.edited,
    )


def write(tmp_path: Path, data: Any, name: str = "result.json", indent: int | None = 1) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False), encoding="utf-8")
    return path


# --- today's schema, single chat -------------------------------------------------------------------


def test_single_chat_modern_schema() -> None:
    convs, report = run(SINGLE)
    assert [(c.source, c.id, c.title, c.kind, c.platform_detail) for c in convs] == [
        ("telegram", "4000000001", "Alice Example", "chat", "personal_chat")
    ]
    alice, me = ("user4000000001", "Alice Example"), ("user777000001", "Me")
    t = Kind.TEXT
    assert [row(m) for m in convs[0].messages] == [
        ("4000000001:2", *alice, utc(2023, 5, 1, 10, 0), t, "Hi there", None, None, False),
        (
            "4000000001:3",
            *alice,
            utc(2023, 5, 1, 10, 1),
            t,
            "Look: https://example.com and bold @bob this page x = 1 secret 👍\nprint(1)",
            None,
            None,
            False,
        ),
        ("4000000001:4", *me, utc(2023, 5, 1, 10, 2), t, "Edited reply", "4000000001:2", None, True),
        ("4000000001:5", *alice, utc(2023, 5, 1, 10, 4), Kind.STICKER, "😂", None, None, False),
        ("4000000001:6", *alice, utc(2023, 5, 1, 10, 5), Kind.STICKER, "[sticker]", None, None, False),
        ("4000000001:7", *alice, utc(2023, 5, 1, 10, 6), Kind.MEDIA, "[photo]", None, None, False),
        ("4000000001:8", *me, utc(2023, 5, 1, 10, 7), t, "Look at this", None, None, False),
        ("4000000001:9", *alice, utc(2023, 5, 1, 10, 8), Kind.MEDIA, "[voice message]", None, None, False),
        ("4000000001:10", *me, utc(2023, 5, 1, 10, 9), Kind.MEDIA, "[video message]", None, None, False),
        ("4000000001:11", *alice, utc(2023, 5, 1, 10, 10), Kind.MEDIA, "[video]", None, None, False),
        ("4000000001:12", *alice, utc(2023, 5, 1, 10, 11), Kind.MEDIA, "[GIF]", None, None, False),
        ("4000000001:13", *me, utc(2023, 5, 1, 10, 12), Kind.MEDIA, "[audio]", None, None, False),
        ("4000000001:14", *alice, utc(2023, 5, 1, 10, 13), Kind.MEDIA, "[file]", None, None, False),
        ("4000000001:15", *alice, utc(2023, 5, 1, 10, 14), t, "Breaking news", None, "News Channel", False),
        ("4000000001:16", *me, utc(2023, 5, 1, 10, 15), Kind.MEDIA, "[poll: Lunch?]", None, None, False),
        ("4000000001:17", *alice, utc(2023, 5, 1, 10, 16), Kind.MEDIA, "[contact]", None, None, False),
        ("4000000001:18", *alice, utc(2023, 5, 1, 10, 17), Kind.MEDIA, "[location]", None, None, False),
        # only a local `date`: read in options.timezone (Berlin, UTC+2 in May)
        ("4000000001:23", *alice, utc(2023, 5, 1, 12, 30), t, "Only a local date", None, None, False),
        ("4000000001:24", *me, utc(2023, 5, 1, 14, 30), t, "Only a unix date", None, None, False),
        (
            "4000000001:25",
            "user4000000009",
            "Deleted Account",
            utc(2023, 5, 1, 14, 31),
            t,
            "I deleted my account",
            None,
            None,
            False,
        ),
        # reply_to_peer_id names another chat: the id is that chat's
        (
            "4000000001:26",
            *alice,
            utc(2023, 5, 1, 14, 32),
            t,
            "Replying elsewhere",
            "1234567:77",
            None,
            False,
        ),
        # Telegram writes control characters as "\x0B" (not JSON): read as the character
        ("4000000001:27", *alice, utc(2023, 5, 1, 14, 33), t, "tab\x0bbed", None, None, False),
        ("4000000001:30", *me, utc(2023, 5, 1, 14, 36), t, "Nice!", None, None, False),
    ]
    assert all(m.role is Role.PARTICIPANT for m in convs[0].messages)
    assert report.conversations == 1
    assert report.messages == 23
    assert report.skipped == {
        "service message (joined_telegram)": 1,
        "service message (pin_message)": 1,
        "service message (phone_call)": 1,
        "empty message": 2,
        "unsupported message": 1,
        "malformed message": 1,  # date_unixtime "not a date"
    }
    assert report.notes == {"invalid \\x escape read as \\u00": 1}


def test_file_placeholders_never_leak() -> None:
    texts = [m.text for m in messages(SINGLE)]
    assert not [t for t in texts if "File not included" in t or "exceeds maximum size" in t or "/" in t[:1]]


def test_unix_time_wins_and_timezone_only_moves_local_dates() -> None:
    berlin = {m.id: m.timestamp for m in messages(SINGLE, timezone="Europe/Berlin")}
    new_york = {m.id: m.timestamp for m in messages(SINGLE, timezone="America/New_York")}
    assert new_york["4000000001:23"] == utc(2023, 5, 1, 18, 30)  # 14:30 EDT
    assert {k for k in berlin if berlin[k] != new_york[k]} == {"4000000001:23"}


def test_machine_local_timezone_when_none() -> None:
    local = {m.id: m.timestamp for m in messages(SINGLE, timezone=None)}
    assert local["4000000001:23"] == datetime(2023, 5, 1, 14, 30).astimezone(UTC)
    assert local["4000000001:24"] == utc(2023, 5, 1, 14, 30)


def test_unknown_timezone_is_a_clear_error() -> None:
    with pytest.raises(ExportError, match="unknown timezone 'Mars/Olympus'"):
        run(SINGLE, timezone="Mars/Olympus")


def test_media_dropped_on_request_text_kept() -> None:
    msgs, report = run(SINGLE, media="drop")
    assert [m.id.split(":")[1] for m in msgs[0].messages] == [
        "2",
        "3",
        "4",
        "8",
        "15",
        "23",
        "24",
        "25",
        "26",
        "27",
        "30",
    ]
    assert {k: v for k, v in report.skipped.items() if k.startswith("media")} == {
        "media dropped (sticker)": 2,
        "media dropped (photo)": 1,
        "media dropped (voice message)": 1,
        "media dropped (video message)": 1,
        "media dropped (video)": 1,
        "media dropped (GIF)": 1,
        "media dropped (audio)": 1,
        "media dropped (file)": 1,
        "media dropped (poll)": 1,
        "media dropped (contact)": 1,
        "media dropped (location)": 1,
    }


def test_long_messages_are_cut() -> None:
    msgs, report = run(SINGLE, max_message_chars=5)
    assert msgs[0].messages[0].text == "Hi th"
    assert report.notes["message cut to max_message_chars"] == 10


def test_slices_share_the_conversation_id() -> None:
    convs, report = run(SINGLE, batch_size=10)
    assert [len(c.messages) for c in convs] == [10, 10, 3]
    assert {c.id for c in convs} == {"4000000001"}
    assert report.conversations == 1 and report.messages == 23


# --- the 2020 schema: integer from_id, local dates only, a group migrated to a supergroup -------------------


def test_2020_schema_migrated_supergroup() -> None:
    convs, report = run(OLD)
    assert [(c.id, c.title, c.platform_detail) for c in convs] == [
        ("1400000001", "Hiking Club", "private_supergroup")
    ]
    ben, cleo = ("user5000000001", "Ben"), ("user5000000002", "Cleo")
    t = Kind.TEXT
    assert [row(m) for m in convs[0].messages] == [
        # messages from before the migration keep their negative ids
        ("1400000001:-999000499", *ben, utc(2020, 1, 10, 8, 1), t, "Welcome everyone", None, None, False),
        (
            "1400000001:-999000497",
            *cleo,
            utc(2020, 1, 10, 8, 3),
            t,
            "See https://maps.example/t",
            None,
            None,
            False,
        ),
        (
            "1400000001:-999000496",
            *cleo,
            utc(2020, 1, 10, 8, 4),
            t,
            "Thanks Ben",
            "1400000001:-999000499",
            None,
            False,
        ),
        ("1400000001:2", *ben, utc(2020, 7, 1, 10, 0), t, "First in the supergroup", None, None, False),
        ("1400000001:3", *cleo, utc(2020, 7, 1, 10, 1), t, "forwarded old style", None, "Dana", False),
        ("1400000001:4", *ben, utc(2020, 7, 1, 10, 2), Kind.STICKER, "👍", None, None, False),
        ("1400000001:5", *cleo, utc(2020, 7, 1, 10, 3), t, "fixed typo", None, None, True),
        ("1400000001:6", *ben, utc(2020, 7, 1, 10, 4), Kind.MEDIA, "[GIF]", None, None, False),
        ("1400000001:7", *cleo, utc(2020, 7, 1, 10, 5), Kind.MEDIA, "[photo]", None, None, False),
        ("1400000001:8", *ben, utc(2020, 7, 1, 10, 6), t, "Bold move", "1400000001:2", None, False),
    ]
    assert report.skipped == {
        "service message (create_group)": 1,
        "service message (invite_members)": 1,
        "service message (edit_group_title)": 1,
        "service message (migrate_to_supergroup)": 1,
        "service message (migrate_from_group)": 1,
    }


# --- full export --------------------------------------------------------------------------------------


def test_full_export_reads_every_chat_and_left_chat() -> None:
    convs, report = run(FULL)
    assert {c.owner_id for c in convs} == {"user777000001"}
    assert [(c.id, c.title, c.platform_detail, len(c.messages)) for c in convs] == [
        ("4000000001", "Alice Example", "personal_chat", 2),
        ("saved777000001", "Saved Messages", "saved_messages", 2),
        ("6000000001", "Weather Bot", "bot_chat", 2),
        ("1500000001", "Tech News", "public_channel", 1),
        ("300000001", "Book Club", "private_group", 1),
        ("4000000002", "Bob", "personal_chat", 0),
        ("1300000001", "Old Group", "private_supergroup; left chat", 1),
    ]
    by_id = {m.id: m for c in convs for m in c.messages}
    assert list(by_id) == [
        "4000000001:1",
        "4000000001:2",
        "saved777000001:1",
        "saved777000001:2",
        "6000000001:1",
        "6000000001:2",
        "1500000001:2",
        "300000001:2",
        "1300000001:5",
    ]
    assert by_id["4000000001:2"].reply_to == "4000000001:1"
    assert by_id["4000000001:2"].author_id == "user777000001"
    assert by_id["saved777000001:2"].forwarded_from == "Tech News"  # saved_from only
    assert by_id["6000000001:2"].author_name == "Weather Bot"  # bot replies are kept: not detectable
    assert by_id["1500000001:2"].author_id == "channel1500000001"
    assert by_id["1300000001:5"].timestamp == utc(2022, 1, 1, 12, 0)
    assert report.conversations == 7 and report.messages == 9
    assert report.skipped == {"service message (create_channel)": 1, "service message (create_group)": 1}


def test_exporter_id() -> None:
    assert telegram.exporter_id(FULL) == "user777000001"
    assert telegram.exporter_id(SINGLE) is None
    assert telegram.exporter_id(FIX / "missing.json") is None


def test_saved_messages_single_export_names_the_exporter(tmp_path: Path) -> None:
    msg = {
        "id": 9,
        "type": "message",
        "date": "2020-08-01T22:01:49",
        "from": "Ben",
        "from_id": 99,
        "text": "x",
    }
    path = write(tmp_path, {"type": "saved_messages", "id": 99, "messages": [msg]})
    (conv,), _ = run(path)
    assert (conv.id, conv.title, conv.platform_detail, conv.owner_id) == (
        "saved99",
        "Saved Messages",
        "saved_messages",
        "user99",
    )
    assert conv.messages[0].id == "saved99:9"


def test_saved_messages_without_id_use_the_exporter(tmp_path: Path) -> None:
    saved = {
        "type": "saved_messages",
        "messages": [
            {"id": 1, "type": "message", "date_unixtime": "1", "from": "Me", "from_id": "user5", "text": "hi"}
        ],
    }
    replies = {"type": "replies", "id": 1271266957, "messages": []}
    data = {"personal_information": {"user_id": 5}, "chats": {"list": [saved, replies]}}
    convs, _ = run(write(tmp_path, data))
    assert [(c.id, c.title) for c in convs] == [("saved5", "Saved Messages"), ("1271266957", "Replies")]
    assert convs[0].messages[0].id == "saved5:1"


def test_header_after_messages_is_still_read(tmp_path: Path) -> None:
    single = json.loads(SINGLE.read_text(encoding="utf-8").replace("\\x0B", "\\u000b"))
    moved = {
        "messages": single["messages"],
        "id": single["id"],
        "type": single["type"],
        "name": single["name"],
    }
    expected = [row(m) for m in messages(write(tmp_path, single, "a.json"))]
    assert [row(m) for m in messages(write(tmp_path, moved, "b.json"))] == expected

    full = json.loads(FULL.read_text(encoding="utf-8"))
    for chat in full["chats"]["list"]:
        chat["messages"] = chat.pop("messages")  # to the front: rebuild with messages first
        chat.update({k: chat.pop(k) for k in ("name", "type", "id") if k in chat})
    late = {"chats": full["chats"], "personal_information": full["personal_information"]}
    convs, _ = run(write(tmp_path, late, "c.json"))
    assert [c.id for c in convs] == [
        "4000000001",
        "saved777000001",
        "6000000001",
        "1500000001",
        "300000001",
        "4000000002",
    ]
    assert sum(len(c.messages) for c in convs) == 8


# --- the scanner: every layout gives the same messages -------------------------------------------------


def _one_message_per_line(value: Any, pad: str = "") -> str:
    """Pretty-printed, except that each message sits on one line."""
    if isinstance(value, dict):
        items = [
            f"{pad} {json.dumps(k)}: "
            + (
                "[\n" + ",\n".join(f"{pad}  " + json.dumps(m, ensure_ascii=False) for m in v) + f"\n{pad} ]"
                if k == "messages"
                else _one_message_per_line(v, pad + " ")
            )
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and value:
        return (
            "[\n" + ",\n".join(f"{pad} " + _one_message_per_line(v, pad + " ") for v in value) + f"\n{pad}]"
        )
    return json.dumps(value, ensure_ascii=False)


@pytest.mark.parametrize("layout", ["minified", "indent4", "crlf", "tabs", "bom", "lines"])
def test_any_json_layout_gives_the_same_messages(tmp_path: Path, layout: str) -> None:
    for fixture in (SINGLE, OLD, FULL):
        data = json.loads(fixture.read_text(encoding="utf-8").replace("\\x0B", "\\u000b"))
        reference = [row(m) for m in messages(write(tmp_path, data, "ref.json"))]
        text = json.dumps(data, ensure_ascii=False, indent={"minified": None, "indent4": 4}.get(layout, 1))
        if layout == "lines":
            text = _one_message_per_line(data)
            assert json.loads(text) == data
        elif layout == "crlf":
            text = text.replace("\n", "\r\n")
        elif layout == "tabs":
            text = text.replace("\n ", "\n\t")
        elif layout == "bom":
            text = "\ufeff" + text
        path = tmp_path / f"{layout}.json"
        path.write_text(text, encoding="utf-8")
        assert [row(m) for m in messages(path)] == reference, fixture.name


def _generator() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gen_telegram
    finally:
        sys.path.remove(str(BENCHMARKS))
    return gen_telegram


@pytest.mark.parametrize("full", [False, True])
def test_generated_export_matches_a_plain_json_reading(tmp_path: Path, full: bool) -> None:
    path = tmp_path / "big.json"
    _generator().write_telegram_export(path, 3000, full=full, seed=1)
    data = json.loads(path.read_text(encoding="utf-8"))
    chats = [*data["chats"]["list"], *data["left_chats"]["list"]] if full else [data]
    expected = []
    for chat in chats:
        prefix = ("saved" if chat["type"] == "saved_messages" else "") + str(chat["id"]) + ":"
        expected += [prefix + str(m["id"]) for m in chat["messages"] if m["type"] == "message"]
    convs, report = run(path, batch_size=700)
    got = [m.id for c in convs for m in c.messages]
    assert got == expected
    assert len(expected) > 2800
    assert report.messages == len(expected)
    assert sum(report.skipped.values()) == 3000 - len(expected)
    # the same file minified goes through json's scanner, message by message: same result
    mini = write(tmp_path, data, "mini.json", indent=None)
    assert [row(m) for m in messages(mini)] == [row(m) for c in convs for m in c.messages]


def test_generator_is_deterministic(tmp_path: Path) -> None:
    gen = _generator()
    gen.write_telegram_export(tmp_path / "a.json", 200, full=True, seed=3)
    gen.write_telegram_export(tmp_path / "b.json", 200, full=True, seed=3)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


# --- odd records: skipped and counted ---------------------------------------------------------------


def test_malformed_records_are_counted(tmp_path: Path) -> None:
    good = {
        "id": 1,
        "type": "message",
        "date_unixtime": "1600000000",
        "from": "A",
        "from_id": "user1",
        "text": "ok",
    }
    data = {
        "personal_information": {"user_id": 1},
        "chats": {
            "about": "x",
            "list": [
                "not a chat",
                {"name": "n", "type": "personal_chat", "id": 2, "messages": {"not": "a list"}},
                {
                    "name": "Odd",
                    "type": "personal_chat",
                    "id": 3,
                    "messages": [
                        good,
                        7,
                        {**good, "id": "x"},
                        {**good, "id": 2, "text": 5},
                        {**good, "id": 3, "date_unixtime": "99999999999999999999"},
                        {**good, "id": 4, "text": [{"type": "bold"}]},
                        {k: v for k, v in good.items() if k != "date_unixtime"} | {"id": 5},
                        {
                            **good,
                            "id": 6,
                            "text": None,
                            "text_entities": [{"type": "plain", "text": "from ents"}],
                        },
                        {**good, "id": 7, "id_is": "fine", "from": "", "from_id": None},
                        {**good, "id": 2**70},  # beyond 64 bits: orjson reads a float
                        {**good, "id": 8, "type": "service"},
                    ],
                },
            ],
        },
        "left_chats": [],
    }
    convs, report = run(write(tmp_path, data))
    assert [(c.id, [(m.id, m.author_id, m.author_name, m.text) for m in c.messages]) for c in convs] == [
        (
            "3",
            [
                ("3:1", "user1", "A", "ok"),
                ("3:6", "user1", "A", "from ents"),
                ("3:7", "unknown", "unknown", "ok"),
            ],
        ),
    ]
    assert report.skipped == {
        "malformed chat": 2,
        "malformed chat list": 1,
        "malformed message": 7,
        "service message (unknown)": 1,
    }


def test_lone_surrogate_escapes_are_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        '{"name": "n", "type": "personal_chat", "id": 1, "messages": [{"id": 1, "type": "message", '
        '"date_unixtime": "1", "from": "A", "from_id": "user1", "text": "a\\ud800b"}]}'
    )
    msgs, report = run(path)
    assert msgs[0].messages[0].text == "a\ufffdb"
    assert report.notes == {"invalid unicode escape replaced": 1}


# --- bad input: ExportError with a place, never anything else ------------------------------------------


def test_bad_files_raise_export_error(tmp_path: Path) -> None:
    cases = {
        "empty.json": b"",
        "blank.json": b"  \n\t ",
        "garbage.json": bytes(range(256)),
        "array.json": b'[{"id": 1}]',
        "other.json": b'{"guild": {"id": "1"}, "channel": {}, "messageCount": 0}',
        "discord.json": b'{"guild": {"id": "1"}, "messages": [{"id": "1", "type": "Default"}]}',
        "trailing.json": b'{"name": "a", "type": "personal_chat", "id": 1, "messages": []} extra',
    }
    expected = {
        "empty.json": "empty file",
        "blank.json": "empty file",
        "garbage.json": "not a JSON object",
        "array.json": "not a JSON object",
        "other.json": "no chats or messages",
        "discord.json": "without a chat type or id",
        "trailing.json": r"invalid JSON \(data after the end of the object\)",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ExportError, match=expected[name]):
            run(tmp_path / name)


def test_truncated_export_names_the_place(tmp_path: Path) -> None:
    raw = SINGLE.read_bytes()
    cut = raw.index(b'"Breaking news"')
    (tmp_path / "cut.json").write_bytes(raw[:cut])
    with pytest.raises(ExportError, match=r"byte \d+ \(messages\[\d+\]\): truncated JSON") as err:
        run(tmp_path / "cut.json")
    assert str(err.value).startswith(str(tmp_path / "cut.json"))


def test_invalid_json_inside_a_chat_names_the_chat(tmp_path: Path) -> None:
    raw = FULL.read_bytes().replace(b'"text": "Sunny, 24\xc2\xb0C"', b'"text": "Sunny" "24"')
    (tmp_path / "bad.json").write_bytes(raw)
    with pytest.raises(ExportError, match=r"\(chats\.list\[2\]\.messages\[1\]\): invalid JSON"):
        run(tmp_path / "bad.json")


def test_invalid_utf8_is_an_export_error(tmp_path: Path) -> None:
    (tmp_path / "latin1.json").write_bytes(SINGLE.read_bytes().replace(b"Hi there", b"Hi th\xe9re"))
    with pytest.raises(ExportError, match="not valid UTF-8"):
        run(tmp_path / "latin1.json")


@pytest.mark.parametrize("depth", [900, 100_000])
def test_deep_nesting_is_an_export_error(tmp_path: Path, depth: int) -> None:
    deep = b"[" * depth + '"é"'.encode() + b"]" * depth
    (tmp_path / "deep.json").write_bytes(
        b'{"type": "personal_chat", "id": 1, "name": "a", "messages": [' + deep + b"]}"
    )
    with pytest.raises(ExportError, match="nested too deeply"):
        run(tmp_path / "deep.json")


@settings(max_examples=40, deadline=None)
@given(
    which=st.sampled_from([SINGLE, OLD, FULL]),
    cut=st.floats(min_value=0, max_value=1),
    edits=st.lists(st.tuples(st.floats(min_value=0, max_value=1), st.integers(0, 255)), max_size=4),
)
def test_fuzzed_exports_parse_or_raise_export_error(
    tmp_path_factory: pytest.TempPathFactory, which: Path, cut: float, edits: list[tuple[float, int]]
) -> None:
    raw = bytearray(which.read_bytes())
    for where, byte in edits:
        raw[int(where * (len(raw) - 1))] = byte
    raw = raw[: max(1, int(cut * len(raw)))] if cut < 0.98 else raw
    path = tmp_path_factory.mktemp("fuzz") / "result.json"
    path.write_bytes(bytes(raw))
    with contextlib.suppress(ExportError):
        run(path)


# --- detection ----------------------------------------------------------------------------------------


def _realdata(fmt: str | None = None) -> list[Path]:
    if not REALDATA.is_dir():
        pytest.skip("no realdata folder (set TWINLM_EXTRA_EXPORTS)")
    return sorted(p for p in REALDATA.glob(f"{fmt or '*'}/*") if p.is_file() and p.name != "PROVENANCE.md")


def test_looks_like_accepts_the_fixtures() -> None:
    for path in (SINGLE, OLD, FULL):
        head = path.read_text(encoding="utf-8")[:65536]
        assert telegram.looks_like(head, path), path.name
        assert detect(path) == "telegram", path.name


def test_looks_like_is_content_based_and_tolerates_a_cut_head() -> None:
    head = FULL.read_text(encoding="utf-8")[:300]
    assert telegram.looks_like(head, Path("whatever.txt"))
    assert not telegram.looks_like(
        '{"messages": [{"author": {"id": "1"}, "timestamp": "x"}]}', Path("result.json")
    )
    assert not telegram.looks_like("", Path("result.json"))


def test_realdata_detection() -> None:
    files = _realdata()
    mine = [p for p in files if p.parent.name == "telegram"]
    assert mine
    for path in files:
        head = path.read_bytes()[:65536].decode("utf-8", "replace").lstrip("\ufeff")
        assert telegram.looks_like(head, path) == (path.parent.name == "telegram"), path


REALDATA_COUNTS = {
    # file: (conversations, messages, authors, skipped)
    "chat-analytics_DM_2A_7M.json": (
        1,
        6,
        {"Alice", "Bob"},
        {"service message (joined_telegram)": 1, "service message (phone_call)": 1},
    ),
    "telegram-chat-parser_public_supergroup.json": (
        1,
        1,
        {"Ben"},
        {
            "service message (create_group)": 1,
            "service message (migrate_to_supergroup)": 1,
            "service message (migrate_from_group)": 1,
        },
    ),
    "telegram-chat-parser_saved.json": (1, 20, {"Ben", "test"}, {"service message (pin_message)": 1}),
    "tkonverter_SYNTHETIC_schema_personal.json": (1, 25, {"Me", "Alice Example"}, None),
}


def test_realdata_files_parse_without_leaks() -> None:
    files = _realdata("telegram")
    assert files
    for path in files:
        convs, report = run(path, timezone="UTC")
        msgs = [m for c in convs for m in c.messages]
        assert msgs, path
        for m in msgs:
            assert m.text.strip() and m.author_name.strip(), m
            assert "File not included" not in m.text and "exceeds maximum size" not in m.text, m
            for action in ("joined_telegram", "migrate_to_supergroup", "pin_message", "phone_call"):
                assert action not in m.text, m
        assert len({m.id for m in msgs}) == len(msgs)
        if path.name in REALDATA_COUNTS:
            n_convs, n_msgs, authors, skipped = REALDATA_COUNTS[path.name]
            assert (len({c.id for c in convs}), len(msgs), {m.author_name for m in msgs}) == (
                n_convs,
                n_msgs,
                authors,
            )
            if skipped is not None:
                assert report.skipped == skipped
            else:
                assert sum(report.skipped.values()) == 62
                assert report.skipped["service message (custom_action)"] == 13
                assert report.skipped["unsupported message"] == 1


def test_realdata_saved_messages_details() -> None:
    path = REALDATA / "telegram" / "telegram-chat-parser_saved.json"
    if not path.is_file():
        pytest.skip("realdata file absent")
    (conv,), _ = run(path, timezone="UTC")
    by_id = {m.id.split(":")[1]: m for m in conv.messages}
    assert conv.id == "saved9999999999"
    assert by_id["176390"].forwarded_from == "Other Person"
    assert by_id["278329"].text == "DoNotChange"  # a sticker with text keeps its text
    assert by_id["318170"].text == "[video]"  # "(File exceeds maximum size...)"
    assert by_id["5"].text == "[poll: Poll question]"
    assert by_id["7"].reply_to == "saved9999999999:6"
    assert by_id["173429"].timestamp == utc(2020, 8, 1, 22, 1, 49)


def test_notes_are_counted_once_when_the_header_comes_after_the_messages(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(
        '{\n "messages": [\n  {\n   "id": 1,\n   "type": "message",\n   "date_unixtime": "1",\n'
        '   "text": "a\\x0Bb"\n  }\n ],\n "name": "x",\n "type": "personal_chat",\n "id": 1\n}\n'
    )
    convs, report = run(path)
    assert [m.text for c in convs for m in c.messages] == ["a\x0bb"]
    assert sum(report.notes.values()) == 1


# --- local times of the 2020 schema across a DST change ---------------------------------------------------


def _local_chat(dates: list[str], chat_id: int = 7) -> dict[str, Any]:
    return {
        "name": "Night owls",
        "type": "private_group",
        "id": chat_id,
        "messages": [
            {"id": i, "type": "message", "date": d, "from": "Ben", "from_id": 99, "text": f"m{i}"}
            for i, d in enumerate(dates, 1)
        ],
    }


def test_2020_schema_repeated_dst_hour_keeps_the_message_order(tmp_path: Path) -> None:
    """Berlin fell back at 03:00 CEST on 2020-10-25: 02:00-02:59 happened twice. Messages after the
    change read the second (CET) 02:xx, as the export's order says, so the chat neither interleaves
    nor shows a fake 70-minute gap before 03:05."""
    dates = [
        "2020-10-25T02:30:00",  # CEST: 00:30 UTC
        "2020-10-25T02:50:00",  # CEST: 00:50 UTC
        "2020-10-25T02:10:00",  # the clock went back: CET, 01:10 UTC
        "2020-10-25T02:55:00",  # CET: 01:55 UTC
        "2020-10-25T03:05:00",  # CET: 02:05 UTC
    ]
    data = {
        "personal_information": {"user_id": 99},
        "chats": {"list": [_local_chat(dates), _local_chat(dates, 8)]},
    }
    convs, report = run(write(tmp_path, data), timezone="Europe/Berlin")
    for chat in (7, 8):  # each chat starts afresh: the second is not read as "after" the first
        got = [m.timestamp for c in convs if c.id == str(chat) for m in c.messages]
        assert got == [
            utc(2020, 10, 25, 0, 30),
            utc(2020, 10, 25, 0, 50),
            utc(2020, 10, 25, 1, 10),
            utc(2020, 10, 25, 1, 55),
            utc(2020, 10, 25, 2, 5),
        ]
    assert "local times read in this machine's time zone" not in report.notes


def test_2020_schema_local_times_without_a_zone_are_noted_once(tmp_path: Path) -> None:
    data = _local_chat(["2020-10-24T12:00:00", "2020-10-24T12:01:00"])
    _, report = run(write(tmp_path, data), timezone=None)
    assert report.notes["local times read in this machine's time zone"] == 1
