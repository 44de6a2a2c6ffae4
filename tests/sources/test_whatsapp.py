"""WhatsApp "Export chat" .txt parser: layouts, locales, notices, media, ids, detection, bad input."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport
from twinlm.sources import whatsapp, whatsapp_keys
from twinlm.sources._common import read_head, stable_id

from testdata import REALDATA

FIX = Path(__file__).parent.parent / "fixtures" / "whatsapp"
ANDROID = FIX / "WhatsApp Chat with Alice.txt"
IOS = FIX / "WhatsApp Chat - Family" / "_chat.txt"
ALL_FIXTURES = sorted(p for p in FIX.rglob("*.txt") if p.name not in {"not_a_chat.txt", "diary.txt"})


def run(path: Path, **opts: object) -> tuple[list[Conversation], list[Message], ParseReport]:
    options = ParseOptions(**{"timezone": "UTC", **opts})  # type: ignore[arg-type]
    report = ParseReport()
    convs = list(whatsapp.parse(path, options, report))
    return convs, [m for c in convs for m in c.messages], report


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def rows(messages: list[Message]) -> list[tuple[str, str, Kind, bool]]:
    return [(m.author_name, m.text, m.kind, m.edited) for m in messages]


def write(tmp_path: Path, text: str, name: str = "chat.txt") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# -- Android, day-first, 24 h ---------------------------------------------------------------------


def test_android_day_first_berlin() -> None:
    convs, msgs, report = run(ANDROID, timezone="Europe/Berlin")
    assert len(convs) == 1
    conv = convs[0]
    assert (conv.source, conv.title, conv.kind) == ("whatsapp", "Alice", "chat")
    assert conv.id.startswith("chat-")  # a key of the first messages, not the file name
    assert rows(msgs) == [
        ("Alice", "Hi all!", Kind.TEXT, False),
        (
            "+49 151 23456789",
            "Hello, who's this?\nLine two\n\nLine four: after a blank line",
            Kind.TEXT,
            False,
        ),
        ("Bob", "[media]", Kind.MEDIA, False),
        ("Alice", "Look at this tree\n[photo]", Kind.TEXT, False),
        ("Bob", "[voice message]", Kind.MEDIA, False),
        ("Bob", "[sticker]", Kind.STICKER, False),
        ("Alice", "See you at 8", Kind.TEXT, True),
        ("Bob", "[media]", Kind.MEDIA, False),
        ("Alice", "ok", Kind.TEXT, False),
        ("Alice", "ok", Kind.TEXT, False),
        ("Alice", "[video]", Kind.MEDIA, False),
        ("Alice", "Happy new year: late", Kind.TEXT, False),
    ]
    # CET is UTC+1 in December and January.
    minutes = [4, 5, 6, 7, 8, 9, 13, 14, 17, 17, 18]
    expected = [*(utc(2019, 12, 24, 8, n) for n in minutes), utc(2020, 1, 13, 20, 30)]
    assert [m.timestamp for m in msgs] == expected
    assert all(m.author_id == m.author_name and m.reply_to is None for m in msgs)
    assert report.skipped == Counter({"system line": 7, "deleted message": 2, "missed call": 1})
    assert report.notes == Counter(
        {
            "date order day-first (a date field > 12)": 1,
            "bidi marks removed from author name": 1,
            "view-once media shown as [media]": 1,
        }
    )
    assert (report.conversations, report.messages) == (1, 12)


def minute(*args: int) -> int:
    return int(utc(*args).timestamp()) // 60


def test_android_ids_are_stable_and_unique() -> None:
    (conv, *_), msgs, _ = run(ANDROID)
    assert msgs[0].id == "cd777e238e5886e90e38"  # pinned: a changed recipe duplicates corpora
    assert msgs[0].id == stable_id(conv.id, minute(2019, 12, 24, 9, 4), "Hi all!", 0)
    ok1, ok2 = msgs[8], msgs[9]
    assert ok1.id == stable_id(conv.id, minute(2019, 12, 24, 9, 17), "ok", 0)
    assert ok2.id == stable_id(conv.id, minute(2019, 12, 24, 9, 17), "ok", 1)
    # No edit marker, no author: a message edited since or a contact renamed keeps its place.
    assert msgs[6].id == stable_id(conv.id, minute(2019, 12, 24, 9, 13), "See you at 8", 0)
    assert len({m.id for m in msgs}) == len(msgs)
    assert [m.id for m in run(ANDROID)[1]] == [m.id for m in msgs]
    # Another zone moves every time by the same quarter hours: the chat key stays (the ingest layer
    # re-times such an export onto the earlier one, tests/test_reexport.py).
    assert run(ANDROID, timezone="America/New_York")[0][0].id == conv.id


def test_ids_survive_a_longer_reexport(tmp_path: Path) -> None:
    old = ANDROID.read_text(encoding="utf-8-sig").rstrip("\n")
    longer = old + "\n13/01/2020, 21:31 - Bob: newer message\n24/12/2019, 09:17 - Alice: ok\n"
    p = write(tmp_path, longer, "WhatsApp Chat with Alice Smith.txt")  # renamed contact, renamed file
    (new_conv, *_), new_msgs, _ = run(p)
    (old_conv, *_), old_msgs, _ = run(ANDROID)
    assert new_conv.id == old_conv.id
    new_ids = [m.id for m in new_msgs]
    assert new_ids[: len(old_msgs)] == [m.id for m in old_msgs]
    assert len(set(new_ids)) == len(new_ids) == len(old_msgs) + 2


def test_media_dropped() -> None:
    _, msgs, report = run(ANDROID, media="drop")
    assert [m.text for m in msgs] == [
        "Hi all!", "Hello, who's this?\nLine two\n\nLine four: after a blank line", "Look at this tree",
        "See you at 8", "ok", "ok", "Happy new year: late",
    ]  # fmt: skip
    assert msgs[2].kind == Kind.TEXT
    assert report.skipped["media dropped (media)"] == 2
    assert report.skipped["media dropped (photo)"] == 1  # the caption survives
    assert report.skipped["media dropped (voice message)"] == 1
    assert report.skipped["media dropped (sticker)"] == 1
    assert report.skipped["media dropped (video)"] == 1


def test_slices_and_clip() -> None:
    convs, msgs, report = run(ANDROID, batch_size=5, max_message_chars=10)
    assert [len(c.messages) for c in convs] == [5, 5, 2]
    assert len({c.id for c in convs}) == 1 and {c.title for c in convs} == {"Alice"}
    assert (report.conversations, report.messages) == (1, 12)
    assert msgs[1].text == "Hello, who"
    # The five texts over 10 characters, incl. "[voice message]" and the photo's caption (its own line)
    assert report.notes["message cut to max_message_chars"] == 5
    assert msgs[3].text == "Look at th"


# -- iOS ------------------------------------------------------------------------------------------


def test_ios_bracketed_12h_with_marks() -> None:
    convs, msgs, report = run(IOS)
    assert [c.title for c in convs] == ["Family"]
    assert rows(msgs) == [
        ("Bob", "Hey Alice", Kind.TEXT, False),
        ("Alice", "[photo]", Kind.MEDIA, False),
        ("Alice", "[photo]", Kind.MEDIA, False),
        ("+1 555 123 4567", "Who is this?\nIt's me", Kind.TEXT, False),
        ("Bob", "Nice pic", Kind.TEXT, True),
        ("Alice", "[file]", Kind.MEDIA, False),
        ("Alice", "[sticker]", Kind.STICKER, False),
        ("Alice", "[GIF]", Kind.MEDIA, False),
        ("Alice", "[audio]", Kind.MEDIA, False),
        ("Alice", "[video]", Kind.MEDIA, False),
        ("Alice", "[contact]", Kind.MEDIA, False),
        ("Bob", "Location: https://maps.google.com/?q=52.5,13.4", Kind.TEXT, False),
        ("Bob", "Merry Christmas!", Kind.TEXT, False),
        ("Bob", "Merry Christmas!", Kind.TEXT, False),
        ("Alice", "POLL:\nDinner?\nOPTION: Pizza (1 vote)", Kind.TEXT, False),
        ("Carol", 'Said "hi": at noon', Kind.TEXT, False),
    ]
    assert msgs[0].timestamp == utc(2019, 12, 24, 23, 21, 2)
    assert msgs[3].timestamp == utc(2019, 12, 24, 23, 23, 45)  # plain space before PM
    assert msgs[12].timestamp == utc(2019, 12, 25, 0, 1)  # 12:01 AM
    assert msgs[-1].timestamp == utc(2019, 12, 25, 12, 3)  # 12:03 PM
    assert msgs[12].id != msgs[13].id
    assert report.skipped == Counter({"system line": 3, "deleted message": 2, "missed call": 1})
    assert not any("\u200e" in m.text or "\r" in m.text for m in msgs)


# -- locales --------------------------------------------------------------------------------------


def test_android_us_12h_month_first() -> None:
    _, msgs, report = run(FIX / "android_us_12h.txt")
    assert [(m.author_name, m.text, m.timestamp) for m in msgs] == [
        ("Dad", "Merry Christmas", utc(2019, 12, 24, 23, 23)),
        ("Mom", "Same to you", utc(2019, 12, 24, 23, 59)),
        ("Dad", "midnight", utc(2019, 12, 25, 0, 0)),
        ("Mom", "lunch", utc(2019, 12, 25, 12, 30)),
        ("Dad", "lowercase am", utc(2020, 1, 2, 9, 5)),
        ("Mom", "dotted pm", utc(2020, 1, 2, 21, 6)),
    ]
    assert report.skipped == Counter({"system line": 1, "missed call": 1})
    assert report.notes["date order month-first (a date field > 12)"] == 1


def test_android_spanish() -> None:
    _, msgs, report = run(FIX / "android_es.txt")
    assert [(m.author_name, m.text, m.edited, m.timestamp) for m in msgs] == [
        ("Ana", "Hola", False, utc(2019, 12, 24, 23, 24)),
        ("Luis", "[media]", False, utc(2019, 12, 24, 23, 25)),
        ("Luis", "Buenos días", True, utc(2019, 12, 25, 8, 1)),
        ("Ana", "medianoche y cuarto", False, utc(2019, 12, 25, 0, 15)),
    ]
    assert report.skipped == Counter({"system line": 1, "deleted message": 1})


def test_android_german_dotted() -> None:
    _, msgs, report = run(FIX / "android_de.txt", timezone="Europe/Berlin")
    assert [(m.author_name, m.text, m.edited, m.timestamp) for m in msgs] == [
        ("Jörg", "Hallo zusammen", False, utc(2016, 8, 6, 11, 19)),  # CEST: UTC+2
        ("Jörg", "[media]", False, utc(2016, 8, 6, 11, 20)),
        ("Anna", "Bis später", True, utc(2016, 8, 6, 11, 22)),
        ("Jörg", "Prost!", False, utc(2016, 12, 31, 22, 59)),  # CET: UTC+1
    ]
    assert report.skipped == Counter({"system line": 1, "deleted message": 1})


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[24.12.19 11:23:45] Jörg: hi", utc(2019, 12, 24, 11, 23, 45)),
        ("[24/12/2019, 11:23:45] Jörg: hi", utc(2019, 12, 24, 11, 23, 45)),
        ("24.12.19, 9:05 nachm. - Jörg: hi", utc(2019, 12, 24, 21, 5)),
        ("24.12.19, 9:05 vorm. - Jörg: hi", utc(2019, 12, 24, 9, 5)),
        ("2019-12-24, 11:23 - Jörg: hi", utc(2019, 12, 24, 11, 23)),
        ("2022/12/24, 13:01. - Jörg: hi", utc(2022, 12, 24, 13, 1)),
        ("24-12-2019 11:23 - Jörg: hi", utc(2019, 12, 24, 11, 23)),
        ("\u200e24/12/2019, 11:23\u202fpm - Jörg: hi", utc(2019, 12, 24, 23, 23)),
        ("[24/12/2019, 0:15:00 am] Jörg: hi", utc(2019, 12, 24, 0, 15)),
    ],
)
def test_layouts(tmp_path: Path, line: str, expected: datetime) -> None:
    _, msgs, _ = run(write(tmp_path, line + "\n"))
    assert [(m.author_name, m.text, m.timestamp) for m in msgs] == [("Jörg", "hi", expected)]


# -- date order -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "order", "first", "note"),
    [
        ("ambiguous_day_first.txt", "auto", utc(2020, 2, 1, 10), "date order day-first (dates in order)"),
        ("ambiguous_month_first.txt", "auto", utc(2020, 1, 2, 10), "date order month-first (dates in order)"),
        ("ambiguous_tie.txt", "auto", utc(2020, 6, 5, 10), "date order day-first (ambiguous dates, default)"),
        ("ambiguous_tie.txt", "month_first", utc(2020, 5, 6, 10), "date order month-first (options)"),
        ("ambiguous_day_first.txt", "month_first", utc(2020, 1, 2, 10), "date order month-first (options)"),
        ("ambiguous_month_first.txt", "day_first", utc(2020, 2, 1, 10), "date order day-first (options)"),
        ("android_us_12h.txt", "day_first", None, "date order day-first (options)"),
    ],
)
def test_date_order(name: str, order: str, first: datetime | None, note: str) -> None:
    _, msgs, report = run(FIX / name, whatsapp_date_order=order)
    if first is not None:
        assert msgs[0].timestamp == first
    else:  # forced day-first on a month-first file: 12/24 is no date, counted, never a crash
        assert report.skipped["malformed timestamp"] == 4
        assert [m.text for m in msgs] == ["lowercase am", "dotted pm"]
        assert msgs[0].timestamp == utc(2020, 2, 1, 9, 5)
    assert report.notes[note] == 1


def test_year_first_and_dst_fall_back() -> None:
    _, msgs, report = run(FIX / "dst_berlin.txt", timezone="Europe/Berlin")
    # 02:30 CEST, then the clocks go back and 02:10 is the second (CET) reading.
    assert [m.timestamp for m in msgs] == [
        utc(2019, 10, 27, 0, 30),
        utc(2019, 10, 27, 1, 10),
        utc(2019, 10, 27, 2),
    ]
    assert report.notes == Counter({"date order year-first": 1})


# -- encoding and odd lines -----------------------------------------------------------------------


def test_cp1252_lines_fall_back() -> None:
    _, msgs, report = run(FIX / "cp1252.txt")
    assert [(m.author_name, m.text) for m in msgs] == [("Zoë", "Café au lait € 2"), ("Zoë", "naïve")]
    assert report.notes["line not utf-8, read as cp1252"] == 1


def test_odd_lines(tmp_path: Path) -> None:
    text = (
        "Exported by a tool\n"
        "31/02/2020, 10:00 - A: no such day\n"
        "more of the bad one\n"
        "01/03/2020, 13:00 PM - A: no such hour\n"
        '13/03/2020, 10:00 - Bob "the builder": quoted name\n'
        "13/03/2020, 10:01 - A: \n"
        "13/03/2020, 10:02 - \u202a\u202c: only marks\n"
        "13/03/2020, 10:03 - A: \u200eunknown generated notice\n"
        "13/03/2020, 10:04 - A: Waiting for this message. This may take a while.\n"
        "13/03/2020, 10:05 - A: Messages are fun, end-to-end or not\n"
    )
    _, msgs, report = run(write(tmp_path, text))
    assert [(m.author_name, m.text) for m in msgs] == [('Bob "the builder"', "quoted name")]
    assert report.skipped == Counter(
        {"line before first message": 1, "malformed timestamp": 2, "empty message": 1, "system line": 4}
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("WhatsApp Chat with Alice.txt", "Alice"),
        ("WhatsApp Chat with Alice (1).txt", "Alice"),
        ("WhatsApp-Chat mit Jörg.txt", "Jörg"),
        ("Chat de WhatsApp con Ana.txt", "Ana"),
        ("WhatsApp Chat - Family/_chat.txt", "Family"),
        ("WhatsApp Chat - Family.zip/_chat.txt", "Family"),
        ("holiday/_chat.txt", "holiday"),
        ("family chat.txt", "family chat"),
    ],
)
def test_chat_name(name: str, expected: str) -> None:
    assert whatsapp._chat_name(Path("/exports") / name) == expected


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"   \n\n\t\n", b"\xff\xfe\x00garbage\x81\x8d" * 50, b"Meeting notes\nnothing here\n"],
)
def test_not_a_chat_raises(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "x.txt"
    p.write_bytes(content)
    with pytest.raises(ExportError, match="line 1: not a WhatsApp chat export"):
        list(whatsapp.parse(p, ParseOptions(timezone="UTC"), ParseReport()))


def test_bad_timezone_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown timezone 'Mars/Olympus'"):
        list(whatsapp.parse(ANDROID, ParseOptions(timezone="Mars/Olympus"), ParseReport()))
    with pytest.raises(ExportError, match="cannot open"):
        list(whatsapp.parse(tmp_path / "missing.txt", ParseOptions(timezone="UTC"), ParseReport()))


@settings(max_examples=40, deadline=None)
@given(
    which=st.sampled_from(ALL_FIXTURES),
    cut=st.floats(0, 1),
    noise=st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=4)), max_size=4),
)
def test_damaged_files_parse_or_raise_export_error(
    tmp_path_factory: pytest.TempPathFactory, which: Path, cut: float, noise: list[tuple[float, bytes]]
) -> None:
    data = bytearray(which.read_bytes())
    data = data[: int(len(data) * cut)]
    for where, junk in noise:
        at = int(len(data) * where)
        data[at : at + len(junk)] = junk
    p = tmp_path_factory.mktemp("wa") / which.name
    p.write_bytes(bytes(data))
    try:
        convs = list(whatsapp.parse(p, ParseOptions(timezone="Europe/Berlin"), ParseReport()))
    except ExportError:
        return
    for m in (m for c in convs for m in c.messages):
        assert m.timestamp is not None and m.timestamp.tzinfo is UTC
        assert m.text.strip() and m.author_name


# -- detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.name)
def test_looks_like_fixtures(path: Path) -> None:
    assert whatsapp.looks_like(read_head(path), path)


@pytest.mark.parametrize("name", ["not_a_chat.txt", "diary.txt"])
def test_looks_like_rejects_documents(name: str) -> None:
    assert not whatsapp.looks_like(read_head(FIX / name), FIX / name)


def test_looks_like_tolerates_a_junk_first_line() -> None:
    lines = "".join(f"24/12/2019, 10:0{i} - A: line {i}\n" for i in range(6))
    assert whatsapp.looks_like("Chat history\n" + lines, Path("x.txt"))


def test_machine_local_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(time, "tzset"):
        pytest.skip("no time.tzset on this platform")
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        _, msgs, _ = run(ANDROID, timezone=None)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert msgs[0].timestamp == utc(2019, 12, 24, 14, 4)  # 09:04 EST
    assert [m.id for m in msgs] == [m.id for m in run(ANDROID, timezone="America/New_York")[1]]


def test_looks_like_rejects_prose_and_json() -> None:
    p = Path("x.txt")
    assert not whatsapp.looks_like('{"messages": [{"date": "12/24/19, 11:23 - A: b"}]}', p)
    assert not whatsapp.looks_like("Dear diary,\n12/24/19, 11:23 - A: b\n", p)
    assert not whatsapp.looks_like("", p)


def _realdata() -> list[Path]:
    if not REALDATA.is_dir():
        return []
    return sorted(p for p in REALDATA.rglob("*") if p.is_file() and p.suffix != ".md")


@pytest.mark.skipif(not _realdata(), reason="no realdata folder (set TWINLM_EXTRA_EXPORTS)")
def test_detection_on_realdata() -> None:
    from twinlm.sources import detect

    for path in _realdata():
        mine = path.parent.name == "whatsapp"
        assert whatsapp.looks_like(read_head(path), path) == mine, path
        if mine:
            assert detect(path) == "whatsapp", path


# (conversation messages, distinct authors, skips) per real export, with the date order chosen.
REAL_EXPECTED = {
    "chat-analytics_4A_11M.txt": (11, 5, {"system line": 3}, "month-first (unpadded US-style dates)"),
    "chat-miner_testlog_android.txt": (20, 6, {"system line": 3}, "month-first (a date field > 12)"),
    "whatsapp-chat-parser_short-chat_android.txt": (3, 3, {"system line": 2}, "month-first (dates in order)"),
    "whatstk_pokemon_android_de.txt": (18, 8, {"system line": 2}, "day-first (a date field > 12)"),
}
SERVICE_WORDS = ("end-to-end", "created group", " added ", "You were added", "secured with")


@pytest.mark.skipif(
    not (REALDATA / "whatsapp").is_dir(), reason="no realdata folder (set TWINLM_EXTRA_EXPORTS)"
)
def test_realdata() -> None:
    for path in sorted((REALDATA / "whatsapp").glob("*.txt")):
        convs, msgs, report = run(path)
        assert len(convs) == 1 and convs[0].title == path.stem
        assert not [m.text for m in msgs if any(w in m.text for w in SERVICE_WORDS)], path
        assert all(m.text.strip() and m.timestamp for m in msgs)
        if path.name in REAL_EXPECTED:
            n, authors, skips, order = REAL_EXPECTED[path.name]
            assert (len(msgs), len({m.author_name for m in msgs}), dict(report.skipped)) == (
                n,
                authors,
                skips,
            )
            assert report.notes[f"date order {order}"] == 1


def test_unpadded_two_digit_year_dates_tie_break_to_month_first(tmp_path: Path) -> None:
    path = tmp_path / "WhatsApp Chat with Bo.txt"
    path.write_text("12/9/20, 23:55 - Bo: hi\n12/9/20, 23:56 - Al: hey\n", encoding="utf-8")
    report = ParseReport()
    (conv,) = list(whatsapp.parse(path, ParseOptions(timezone="UTC"), report))
    assert conv.messages[0].timestamp == datetime(2020, 12, 9, 23, 55, tzinfo=UTC)
    assert report.notes["date order month-first (unpadded US-style dates)"] == 1
    padded = tmp_path / "WhatsApp Chat with Cy.txt"
    padded.write_text("12/09/2020, 23:55 - Cy: hi\n", encoding="utf-8")
    (conv,) = list(whatsapp.parse(padded, ParseOptions(timezone="UTC"), ParseReport()))
    assert conv.messages[0].timestamp == datetime(2020, 9, 12, 23, 55, tzinfo=UTC)  # day-first default


# -- keys that survive a re-export (issue 9) -------------------------------------------------------


def test_key_text_drops_what_exports_write_differently() -> None:
    assert (
        whatsapp_keys.key_text("Nice view\n[photo]")
        == whatsapp_keys.key_text("Nice view\n[media]")
        == "Nice view"
    )
    assert whatsapp_keys.key_text("[sticker]") == ""
    assert (
        whatsapp_keys.key_text("\u200eLocation:  https://maps.example/x\r")
        == "Location: https://maps.example/x"
    )
    assert whatsapp_keys.key_text("two\nlines") == "two lines"


@pytest.mark.parametrize("shift", [0, 15, -300, 330, 345, 14 * 60])
def test_chat_key_is_the_same_in_every_time_zone(shift: int) -> None:
    first = [(28_000_000, "hi"), (28_000_002, "hello"), (28_000_090, "")]
    moved = [(minute + shift, text) for minute, text in first]
    assert whatsapp_keys.chat_key(moved) == whatsapp_keys.chat_key(first)
    assert whatsapp_keys.chat_key([(m + 7, t) for m, t in first]) != whatsapp_keys.chat_key(first)
    assert whatsapp_keys.chat_key([]) is None
