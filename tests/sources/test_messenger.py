"""Messenger / Instagram message_N.json parser: fixtures with the real edge cases, detection, fuzzing."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport
from twinlm.sources import detect, messenger
from twinlm.sources._common import read_head, stable_id

from damage import damaged, parses_or_fails_cleanly

FIXTURES = Path(__file__).parent.parent / "fixtures" / "messenger"
SPLIT = FIXTURES / "split_thread"
BASE = 1_700_000_000_000  # 2023-11-14T22:13:20Z
ZOE, SAM = "Zoë Müller", "Sam Park"


def run(path: Path, **options: object) -> tuple[list[Conversation], ParseReport]:
    report = ParseReport()
    convs = list(messenger.parse(path, ParseOptions(**options), report))  # type: ignore[arg-type]
    return convs, report


def messages(convs: list[Conversation]) -> list[Message]:
    return [m for c in convs for m in c.messages]


def ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def test_older_file_of_split_thread() -> None:
    convs, report = run(SPLIT / "message_2.json")
    (conv,) = convs
    assert (conv.source, conv.id, conv.kind) == ("messenger", "zoemuller_abc123XYZ", "chat")
    assert (conv.title, conv.participants, conv.platform_detail) == (ZOE, (ZOE, SAM), "chat")
    # Newest-first in the file, oldest-first out; mojibake repaired in names and text.
    assert [(m.author_id, m.author_name, m.text) for m in conv.messages] == [
        (SAM, SAM, "Salut Zoë, ça va ?"),
        (SAM, SAM, "ok"),
        (SAM, SAM, "ok"),
        (ZOE, ZOE, "à demain 😂"),
    ]
    assert [m.timestamp for m in conv.messages] == [
        ms(BASE),
        ms(BASE + 10_000),
        ms(BASE + 10_000),
        ms(BASE + 40_000),
    ]
    assert conv.messages[0].timestamp == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    # Ids: stable_id(thread, second, text, occurrence), no sender name; the duplicate "ok" is told apart.
    thread = "zoemuller_abc123XYZ"
    assert [m.id for m in conv.messages] == [
        stable_id(thread, BASE // 1000, "Salut Zoë, ça va ?", 0),
        stable_id(thread, BASE // 1000 + 10, "ok", 0),
        stable_id(thread, BASE // 1000 + 10, "ok", 1),
        stable_id(thread, BASE // 1000 + 40, "à demain 😂", 0),
    ]
    assert all(m.kind == Kind.TEXT and m.reply_to is None for m in conv.messages)
    assert dict(report.skipped) == {"call": 1, "unsent message": 1}
    assert report.notes["mojibake repaired"] == 4  # participant, title, Zoë's message, Sam's accents


def test_newer_file_of_split_thread() -> None:
    convs, report = run(SPLIT / "message_1.json")
    (conv,) = convs
    assert conv.id == "zoemuller_abc123XYZ"
    assert [(m.author_name, m.text, m.kind) for m in conv.messages] == [
        (SAM, "I sent a photo. did you get it?", Kind.TEXT),  # typed, not a template: kept
        (ZOE, "[file]", Kind.MEDIA),
        (SAM, "https://youtu.be/xyz", Kind.TEXT),
        (ZOE, "look\n[video]", Kind.TEXT),
        (SAM, "[GIF]", Kind.MEDIA),
        (ZOE, "[voice message]", Kind.MEDIA),
        (SAM, "[sticker]", Kind.STICKER),
        (ZOE, "[photo]", Kind.MEDIA),  # "Zoë sent a photo." is the generated caption of the photo
        (SAM, "https://example.com/article", Kind.TEXT),  # "You sent an attachment." + share link
    ]
    assert [m.timestamp for m in conv.messages] == [ms(BASE + 10_000 * k) for k in range(11, 21) if k != 18]
    assert dict(report.skipped) == {"service message (reaction)": 1, "malformed message": 1}


def test_split_thread_files_share_conversation_and_have_unique_ids() -> None:
    older, _ = run(SPLIT / "message_2.json")
    newer, _ = run(SPLIT / "message_1.json")
    assert {c.id for c in older + newer} == {"zoemuller_abc123XYZ"}
    ids = [m.id for m in messages(older) + messages(newer)]
    assert len(ids) == len(set(ids)) == 13
    again = [m.id for m in messages(run(SPLIT / "message_2.json")[0] + run(SPLIT / "message_1.json")[0])]
    assert again == ids


def test_instagram_without_thread_path() -> None:
    convs, report = run(FIXTURES / "instagram_message_1.json")
    (conv,) = convs
    assert conv.id == "thread-" + stable_id("participants", "Léa", "max.ig", "title", "Léa")
    assert (conv.title, conv.participants) == ("Léa", ("max.ig", "Léa"))
    assert [(m.author_id, m.text, m.timestamp) for m in conv.messages] == [
        ("Léa", "hey!", ms(1_650_000_000_000)),
        ("max.ig", "trop beau 🌅", ms(1_650_000_020_000)),
        ("Léa", "https://www.instagram.com/p/Cabc123/", ms(1_650_000_040_000)),
    ]
    assert dict(report.skipped) == {
        "service message (reaction)": 2,  # "Liked a message", "Reacted ❤️ to your message"
        "service message (attachment notice)": 1,  # "max.ig sent an attachment." with nothing attached
    }


def test_instagram_id_does_not_depend_on_participant_order(tmp_path: Path) -> None:
    doc = json.loads((FIXTURES / "instagram_message_1.json").read_text(encoding="utf-8"))
    doc["participants"].reverse()
    doc["messages"] = doc["messages"][:1]
    path = tmp_path / "message_2.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert run(path)[0][0].id == run(FIXTURES / "instagram_message_1.json")[0][0].id


def test_group_with_title() -> None:
    convs, report = run(FIXTURES / "group_message_1.json")
    (conv,) = convs
    assert conv.id == "trip_9876543210"  # "archived_threads/" dropped: archiving keeps the id
    assert conv.title == "Trip 🏔️"
    assert conv.participants == (SAM, ZOE, "Omar Haddad", "Jürgen")
    assert conv.platform_detail == "group chat (no longer a participant)"
    assert [(m.author_name, m.text) for m in conv.messages] == [
        (SAM, "Omar Haddad named the group chat"),  # no final period, not the sender: typed text
        (ZOE, "who's in?"),
        ("Jürgen", "Prost 🍻"),
    ]
    assert dict(report.skipped) == {
        "service message (joined)": 1,
        "service message (left)": 1,
        "service message (event)": 2,  # named the group, set the nickname
    }


def test_media_drop() -> None:
    convs, report = run(SPLIT / "message_1.json", media="drop")
    assert [m.text for m in messages(convs)] == [
        "I sent a photo. did you get it?",
        "https://youtu.be/xyz",
        "look",
        "https://example.com/article",
    ]
    for what in ("file", "GIF", "voice message", "sticker", "photo"):
        assert report.skipped[f"media dropped ({what})"] == 1
    assert report.notes["media placeholder dropped from a text message"] == 1
    # Ids do not depend on the media option.
    by_text = {m.text: m.id for m in messages(run(SPLIT / "message_1.json")[0])}
    assert {m.id for m in messages(convs)} <= set(by_text.values())
    assert by_text["look\n[video]"] in {m.id for m in messages(convs)}


def test_slices_and_counts() -> None:
    convs, report = run(SPLIT / "message_1.json", batch_size=4)
    assert [len(c.messages) for c in convs] == [4, 4, 1]
    assert (report.conversations, report.messages) == (1, 9)


def test_realdata_sample_shape(tmp_path: Path) -> None:
    """The anonymised real sample is copied into the test as the shape to keep working."""
    doc = {
        "participants": [{"name": "Alice"}, {"name": "Bob"}],
        "messages": [
            {
                "sender_id_INTERNAL": 0,
                "sender_name": "Alice",
                "timestamp_ms": 1415147732056,
                "content": "Hello",
            },
            {
                "sender_name": "Bob",
                "timestamp_ms": 1415147308604,
                "files": [{"uri": "a.docx"}],
                "ip": "1.1.1.1",
            },
        ],
        "title": "Alice",
        "is_still_participant": True,
        "thread_type": "Regular",
        "thread_path": "inbox/alice_aaaaaaaaaa",
        "magic_words": [],
    }
    path = tmp_path / "message_1.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc).encode())  # with the BOM Facebook writes
    convs, _ = run(path)
    assert convs[0].id == "alice_aaaaaaaaaa"
    assert [m.text for m in messages(convs)] == ["[file]", "Hello"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "invalid or truncated JSON"),
        (b" \n\t ", "invalid or truncated JSON"),
        (b"\xef\xbb\xbf", "invalid or truncated JSON"),
        (b"\x80\x81garbage\xff", "invalid or truncated JSON"),
        (b'"participants"', "top level is not an object"),
        (b'{"participants": [{"name": "a"}], "title": "x"}', "no messages array"),
        (b'{"participants": [], "messages": [{"sender_name": "a", "timestamp_ms": 1', "invalid or truncated"),
    ],
)
def test_unreadable_files_raise_export_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "message_1.json"
    path.write_bytes(content)
    with pytest.raises(ExportError, match=message) as info:
        run(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_malformed_records_are_counted(tmp_path: Path) -> None:
    doc = {
        "participants": [{"name": "a"}],
        "messages": [
            "text",
            [1, 2],
            {"sender_name": "a", "timestamp_ms": 10**17, "content": "far future"},
            {"sender_name": "a", "timestamp_ms": True, "content": "bool time"},
            {"sender_name": 5, "timestamp_ms": 1, "content": "bad sender"},
            {"sender_name": "a", "timestamp_ms": 1000, "content": None},
            {"sender_name": "a", "timestamp_ms": 2000, "content": "fine"},
        ],
    }
    path = tmp_path / "message_1.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    convs, report = run(path)
    assert [m.text for m in messages(convs)] == ["fine"]
    assert dict(report.skipped) == {"malformed message": 5, "empty message": 1}


def test_looks_like() -> None:
    for path in FIXTURES.rglob("*.json"):
        assert messenger.looks_like(read_head(path), path), path
    head = (SPLIT / "message_1.json").read_bytes()[:300].decode("utf-8").lstrip("\ufeff")
    assert messenger.looks_like(head, Path("x"))
    assert not messenger.looks_like('{"name": "Chat", "type": "personal_chat", "messages": []}', Path("x"))
    assert not messenger.looks_like(
        '{"guild": {"id": "1"}, "channel": {"id": "2"}, "messages": []}', Path("x")
    )
    assert not messenger.looks_like('[{"participants": [], "sender_name": "a"}]', Path("x"))


def test_detect_fixtures() -> None:
    for path in FIXTURES.rglob("*.json"):
        assert detect(path) == "messenger", path


SERVICE_PATTERNS = ("sent an attachment.", "reacted", "Reacted", "Liked a message", "named the group")


def test_realdata_parses_without_service_text() -> None:
    root = os.environ.get("TWINLM_EXTRA_EXPORTS")
    if not root or not (Path(root) / "messenger_instagram").is_dir():
        pytest.skip("TWINLM_EXTRA_EXPORTS not set")
    files = sorted((Path(root) / "messenger_instagram").glob("*.json"))
    assert files
    for path in files:
        convs, report = run(path)
        msgs = messages(convs)
        assert report.conversations == 1 and msgs, path
        assert [m.timestamp for m in msgs] == sorted(m.timestamp for m in msgs if m.timestamp)
        for m in msgs:
            assert not any(p in m.text for p in SERVICE_PATTERNS), (path, m.text)
            assert "Ã" not in m.text and "ð" not in m.text


@settings(max_examples=40, deadline=None)
@given(data=damaged(sorted(FIXTURES.rglob("*.json"))), drop=st.booleans())
def test_fuzzed_files_parse_or_raise_export_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, drop: bool
) -> None:
    parses_or_fails_cleanly(messenger, tmp_path_factory.mktemp("fuzz") / "message_1.json", data, drop)


def thread_file(tmp_path: Path, name: str, messages: list[dict], **extra: object) -> Path:
    data = {
        "participants": [{"name": "Alice Smith"}, {"name": "Sam Park"}],
        "messages": messages,
        "title": "Alice Smith",
        "thread_type": "Regular",
        "thread_path": "inbox/alicesmith_x1",
        **extra,
    }
    p = tmp_path / name
    p.write_text(json.dumps(data), encoding="utf-8")
    return p


def test_renamed_sender_keeps_every_message_id(tmp_path: Path) -> None:
    said = [(BASE + 5_000, "see you"), (BASE, "hi")]
    before = thread_file(
        tmp_path, "a.json", [{"sender_name": "Alice Smith", "timestamp_ms": t, "content": c} for t, c in said]
    )
    after = thread_file(
        tmp_path, "b.json", [{"sender_name": "Alice S.", "timestamp_ms": t, "content": c} for t, c in said]
    )
    old, new = messages(run(before)[0]), messages(run(after)[0])
    assert [m.author_name for m in new] == ["Alice S.", "Alice S."]
    assert [m.id for m in new] == [m.id for m in old]


def test_2018_schema_timestamp_in_seconds(tmp_path: Path) -> None:
    """2018-era downloads: participants as plain names, `timestamp` in seconds, no `timestamp_ms`."""
    path = thread_file(
        tmp_path,
        "message.json",
        [
            {"sender_name": "Sam Park", "timestamp": 1_520_000_060, "content": "later", "type": "Generic"},
            {"sender_name": "Alice Smith", "timestamp": 1_520_000_000, "content": "first", "type": "Generic"},
        ],
        participants=["Alice Smith", "Sam Park"],
        status="inactive",
    )
    convs, report = run(path)
    assert [(m.author_name, m.text, m.timestamp) for m in messages(convs)] == [
        ("Alice Smith", "first", ms(1_520_000_000_000)),
        ("Sam Park", "later", ms(1_520_000_060_000)),
    ]
    assert not report.skipped
    # The same thread downloaded today (milliseconds) gives the same ids.
    today = thread_file(
        tmp_path,
        "message_1.json",
        [
            {"sender_name": "Sam Park", "timestamp_ms": 1_520_000_060_412, "content": "later"},
            {"sender_name": "Alice Smith", "timestamp_ms": 1_520_000_000_907, "content": "first"},
        ],
    )
    assert [m.id for m in messages(run(today)[0])] == [m.id for m in messages(convs)]
