"""Property tests over every export format.

Through `ingest`, into a corpus that already holds data: a truncated or mutated file either
imports, or fails with a one-line error and the corpus is exactly as before (10 examples per
format: each copies a corpus, ~0.3 s).

Per parser, on generated exports: what parses keeps its messages' count, order (by the format's
rule), authors, texts and times exactly; a damaged copy fails in one line or keeps the undamaged
messages in order. Each parser's own fuzz test checks that only ExportError escapes its fixtures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twinlm.corpus.db import Corpus
from twinlm.errors import ExportError
from twinlm.ingest import ingest
from twinlm.model import ParseOptions, ParseReport
from twinlm.sources import chatgpt, discord, messenger, telegram, whatsapp

from testdata import DOCUMENTS, EXAMPLES, FIXTURES

OPTIONS = ParseOptions(timezone="UTC")
SAMPLES = {
    "chatgpt": EXAMPLES / "chatgpt" / "conversations.json",
    "discord": next((EXAMPLES / "discord").glob("*.json")),
    "telegram": EXAMPLES / "telegram" / "result.json",
    "whatsapp": EXAMPLES / "whatsapp" / "WhatsApp Chat with Mom.txt",
    "messenger": next((EXAMPLES / "messenger").rglob("message_1.json")),
    "documents": DOCUMENTS / "climbing-notes.md",
    "jsonl": next((FIXTURES / "jsonl").glob("*.jsonl")),
}


def snapshot(corpus: Corpus) -> tuple[list[tuple], list[tuple]]:
    return (
        corpus.db.execute("SELECT * FROM messages ORDER BY id").fetchall(),
        corpus.db.execute("SELECT * FROM conversations ORDER BY id").fetchall(),
    )


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    cut = draw(st.integers(0, len(data)))
    out = bytearray(data[:cut] if draw(st.booleans()) else data)
    for _ in range(draw(st.integers(0, 4))):
        if out:
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    return bytes(out)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus with the examples already in it, copied for each example run."""
    db = tmp_path_factory.mktemp("seed") / "corpus.db"
    with Corpus(db) as corpus:
        assert not ingest([EXAMPLES], corpus, OPTIONS, documents=[DOCUMENTS]).failed
        corpus.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_mutated_export_imports_whole_or_not_at_all(fmt: str, seeded: Path, tmp_path_factory) -> None:
    original = SAMPLES[fmt].read_bytes()

    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=mutations(original))
    def check(data: bytes) -> None:
        work = tmp_path_factory.mktemp(fmt)
        db = work / "corpus.db"
        db.write_bytes(seeded.read_bytes())
        target = work / SAMPLES[fmt].name
        target.write_bytes(data)
        with Corpus(db) as corpus:
            before = snapshot(corpus)
            as_document = fmt == "documents"
            result = ingest(
                [] if as_document else [target], corpus, OPTIONS, documents=[target] if as_document else []
            )
            if result.failed:
                (failed,) = result.failed
                assert failed.error and "\n" not in failed.error and str(target) in failed.error
                assert snapshot(corpus) == before
            else:
                assert corpus.count("messages") >= len(before[0])

    check()


# --------------------------------------------------------------------- generated exports, per parser
#
# Each strategy below writes a valid export of random messages (counts, authors, unicode texts with
# newlines and emoji, equal and out-of-order times) and returns the rows the format's documented rules
# say it holds: (author name, text, UTC time) in the format's order. Parsing must give exactly those.
# A damaged copy (up to 8 bytes overwritten, cut short half the time, as in tests/sources/damage.py)
# must give the parser's one-line error, or messages that are the original ones in order except at
# most one per damaged place (a text or time the damage itself changed).

Row = tuple[str, str, datetime | None]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Export:
    name: str
    data: bytes
    expected: list[Row]
    options: ParseOptions


EMOJI = st.sampled_from(["😂", "👍🏽", "❤️\u200d🔥", "🇳🇱", "漢字", "e\u0301", "\n"])


def texts(chars: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[str]:
    """Strings of `chars` and emoji (several code points each), at least one non-space character."""
    pieces = st.lists(st.one_of(chars, EMOJI), min_size=1, max_size=max_size).map("".join)
    return pieces.filter(lambda s: not s.isspace())


# Any text a JSON export can hold (no lone surrogates): controls, newlines, quotes, backslashes.
JSON_TEXTS = texts(st.characters(codec="utf-8"), 30)
JSON_NAMES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


def times(draw: st.DrawFn, n: int, spread: int) -> list[int]:
    """`n` times drawn from a few values (so equal times are common), in any order."""
    pool = draw(st.lists(st.integers(0, spread), min_size=1, max_size=4))
    return [draw(st.sampled_from(pool)) for _ in range(n)]


def authors(draw: st.DrawFn, names: st.SearchStrategy[str]) -> list[str]:
    return draw(st.lists(names, min_size=1, max_size=4, unique=True))


# WhatsApp reserves what starts a header line ("[" or a digit at a line's start), "<...>" edit marks,
# ":" and quotes in names, bidi marks (Cf) and trailing blank lines: the texts avoid those.
_WA_CHARS = st.characters(
    codec="utf-8",
    categories=("L", "M", "Nd", "Pc", "Pd", "Po", "Ps", "Pe", "Sm", "So"),
    exclude_characters='<:[]"\u201c\u201d\u201e\u00ab\u00bb',
)
_WA_LINE = st.lists(
    st.one_of(_WA_CHARS, EMOJI.filter(lambda e: e != "\n"), st.just(" ")), min_size=1, max_size=12
)
_WA_LINE = _WA_LINE.map("".join).filter(lambda s: bool(s.strip()) and not s[0].isdigit())
WA_TEXTS = st.lists(_WA_LINE, min_size=1, max_size=3).map("\n".join).filter(lambda s: s.strip() != "null")
WA_NAMES = st.text(_WA_CHARS, min_size=1, max_size=10)


@st.composite
def whatsapp_export(draw: st.DrawFn) -> Export:
    """Android ("05/03/2021, 14:07 - Name: text") or iOS ("[05/03/2021, 14:07:09] Name: text") lines;
    a text's later lines follow its header line. Order: the file's."""
    ios = draw(st.booleans())
    names = authors(draw, WA_NAMES)
    n = draw(st.integers(1, 12))  # a file with no message line is no WhatsApp export (an error)
    base = datetime(2021, 3, 5, tzinfo=UTC)
    lines, expected = [], []
    for offset in times(draw, n, 3_000_000):
        at = base + timedelta(seconds=offset if ios else offset // 60 * 60)
        name, text = draw(st.sampled_from(names)), draw(WA_TEXTS)
        date = f"{at:%d/%m/%Y}, {at:%H:%M:%S}" if ios else f"{at:%d/%m/%Y}, {at:%H:%M}"
        lines.append(f"[{date}] {name}: {text}" if ios else f"{date} - {name}: {text}")
        expected.append((name, text, at))
    data = "".join(line + draw(st.sampled_from(["\n", "\r\n"])) for line in lines).encode()
    options = ParseOptions(timezone="UTC", whatsapp_date_order="day_first")
    return Export("WhatsApp Chat with Fuzz.txt", data, expected, options)


@st.composite
def telegram_export(draw: st.DrawFn) -> Export:
    """One chat of today's schema; a text is a string or a list of strings and entity objects.
    Order: the file's (whatever the times)."""
    names = authors(draw, JSON_NAMES)
    messages, expected = [], []
    for i, seconds in enumerate(times(draw, draw(st.integers(0, 12)), 10**9)):
        parts = draw(st.lists(JSON_TEXTS, min_size=1, max_size=3))
        text: Any = (
            parts[0]
            if len(parts) == 1
            else [p if k % 2 else {"type": "bold", "text": p} for k, p in enumerate(parts)]
        )
        author = draw(st.integers(0, len(names) - 1))
        at = EPOCH + timedelta(seconds=1_300_000_000 + seconds)
        messages.append(
            {
                "id": i + 1,
                "type": "message",
                "date": at.replace(tzinfo=None).isoformat(),
                "date_unixtime": str(int(at.timestamp())),
                "from": names[author],
                "from_id": f"user{100 + author}",
                "text": text,
            }
        )
        expected.append((names[author], "".join(parts), at))
    chat = {"name": "Fuzz", "type": "personal_chat", "id": 4242, "messages": messages}
    indent = draw(st.sampled_from([None, 1, 2]))
    data = json.dumps(chat, indent=indent, ensure_ascii=draw(st.booleans())).encode()
    return Export("result.json", data, expected, ParseOptions(timezone="UTC"))


@st.composite
def discord_export(draw: st.DrawFn) -> Export:
    """DiscordChatExporter's layout; times with any UTC offset; the nickname is the name shown.
    Order: the file's."""
    names = authors(draw, JSON_NAMES)
    messages, expected = [], []
    for i, ms in enumerate(times(draw, draw(st.integers(0, 12)), 10**12)):
        at = EPOCH + timedelta(milliseconds=1_500_000_000_000 + ms)
        zone = timezone(timedelta(minutes=15 * draw(st.integers(-48, 56))))
        author, text = draw(st.integers(0, len(names) - 1)), draw(JSON_TEXTS)
        messages.append(
            {
                "id": str(900000 + i),
                "type": "Default",
                "timestamp": at.astimezone(zone).isoformat(timespec="milliseconds"),
                "timestampEdited": None,
                "isPinned": False,
                "content": text,
                "author": {
                    "id": str(500 + author),
                    "name": f"user{author}",
                    "nickname": names[author],
                    "isBot": False,
                },
                "attachments": [],
                "embeds": [],
                "stickers": [],
                "reactions": [],
                "mentions": [],
            }
        )
        expected.append((names[author], text, at))
    export = {
        "guild": {"id": "1", "name": "Guild", "iconUrl": None},
        "channel": {
            "id": "2",
            "type": "GuildTextChat",
            "categoryId": None,
            "category": None,
            "name": "general",
        },
        "dateRange": {"after": None, "before": None},
        "exportedAt": "2024-06-01T00:00:00.000+00:00",
        "messages": messages,
        "messageCount": len(messages),
    }
    data = json.dumps(
        export, indent=draw(st.sampled_from([None, 2])), ensure_ascii=draw(st.booleans())
    ).encode()
    return Export("Guild - general [2].json", data, expected, ParseOptions(timezone="UTC"))


def mojibake(text: str) -> str:
    """How Facebook writes UTF-8: each byte as the latin-1 code point."""
    return text.encode("utf-8").decode("latin-1")


@st.composite
def messenger_export(draw: st.DrawFn) -> Export:
    """message_1.json with mojibake text. Order: oldest first; equal times in the reverse of the
    file's order (the file is newest-first), whatever order the file's times are in."""
    names = authors(draw, JSON_NAMES)
    written = []
    for ms in times(draw, draw(st.integers(0, 12)), 10**12):
        written.append((1_400_000_000_000 + ms, draw(st.sampled_from(names)), draw(JSON_TEXTS)))
    # The documented rule, spelled out: newest-first file read backwards, then a stable sort on time.
    ordered = sorted(reversed(written), key=lambda w: w[0])
    export = {
        "participants": [{"name": mojibake(name)} for name in names],
        "messages": [
            {"sender_name": mojibake(name), "timestamp_ms": ms, "content": mojibake(text), "type": "Generic"}
            for ms, name, text in written
        ],
        "title": mojibake(names[0]),
        "is_still_participant": True,
        "thread_type": "Regular",
        "thread_path": "inbox/fuzz_1234",
        "magic_words": [],
    }
    data = json.dumps(export, indent=draw(st.sampled_from([None, 2]))).encode()
    expected = [(name, text, EPOCH + timedelta(milliseconds=ms)) for ms, name, text in ordered]
    return Export("message_1.json", data, expected, ParseOptions())


@st.composite
def chatgpt_export(draw: st.DrawFn) -> Export:
    """conversations.json: per conversation a chain of user/assistant nodes (mapping in any key order,
    times in any order or none) with an abandoned one-node branch. Order: the visible branch, root to
    current_node; conversations in file order."""
    conversations, expected = [], []
    for c in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 8))
        ids = [f"c{c}-root"] + [f"c{c}-n{i}" for i in range(n)]
        mapping: dict[str, Any] = {ids[0]: {"id": ids[0], "message": None, "parent": None, "children": []}}
        for i in range(1, n + 1):
            role = draw(st.sampled_from(["user", "assistant"]))
            at = draw(st.one_of(st.none(), st.integers(0, 10**9).map(lambda s: 1_600_000_000 + s / 8)))
            text = draw(JSON_TEXTS)
            mapping[ids[i]] = node(ids[i], ids[i - 1], role, text, at)
            mapping[ids[i - 1]]["children"].append(ids[i])
            author = "You" if role == "user" else "ChatGPT"
            expected.append((author, text, None if at is None else EPOCH + timedelta(seconds=at)))
        if n:  # an edited-away turn: the older child of a node on the branch, never shown
            parent = ids[draw(st.integers(0, n - 1))]
            mapping[f"c{c}-old"] = node(f"c{c}-old", parent, "user", draw(JSON_TEXTS), None)
            mapping[parent]["children"].insert(0, f"c{c}-old")
        keys = draw(st.permutations(list(mapping)))
        conversations.append(
            {
                "title": f"Conversation {c}",
                "create_time": 1_600_000_000.0,
                "mapping": {k: mapping[k] for k in keys},
                "current_node": ids[-1],
                "conversation_id": f"conv-{c}",
            }
        )
    data = json.dumps(
        conversations, indent=draw(st.sampled_from([None, 1])), ensure_ascii=draw(st.booleans())
    )
    return Export("conversations.json", data.encode(), expected, ParseOptions())


def node(nid: str, parent: str, role: str, text: str, at: float | None) -> dict[str, Any]:
    message = {
        "id": nid,
        "author": {"role": role, "metadata": {}},
        "create_time": at,
        "content": {"content_type": "text", "parts": [text]},
        "status": "finished_successfully",
        "weight": 1.0,
        "metadata": {},
        "recipient": "all",
    }
    return {"id": nid, "message": message, "parent": parent, "children": []}


PARSERS: dict[str, tuple[ModuleType, Callable[[], st.SearchStrategy[Export]]]] = {
    "chatgpt": (chatgpt, chatgpt_export),
    "discord": (discord, discord_export),
    "messenger": (messenger, messenger_export),
    "telegram": (telegram, telegram_export),
    "whatsapp": (whatsapp, whatsapp_export),
}


def parsed_rows(parser: ModuleType, path: Path, options: ParseOptions) -> list[Row]:
    return [
        (m.author_name, m.text, m.timestamp)
        for conversation in parser.parse(path, options, ParseReport())
        for m in conversation.messages
    ]


def common_in_order(a: list[Row], b: list[Row]) -> int:
    """Length of the longest common subsequence: how many of `a` are `b`'s rows in `b`'s order."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


@pytest.mark.parametrize("fmt", sorted(PARSERS))
def test_generated_export_parses_to_exactly_its_messages(fmt: str, tmp_path_factory) -> None:
    parser, export = PARSERS[fmt]
    work = tmp_path_factory.mktemp(fmt)

    @settings(max_examples=60, deadline=None)
    @given(export())
    def check(export: Export) -> None:
        path = work / export.name
        path.write_bytes(export.data)
        assert parsed_rows(parser, path, export.options) == export.expected

    check()


@pytest.mark.parametrize("fmt", sorted(PARSERS))
def test_damaged_export_fails_in_one_line_or_keeps_the_rest_in_order(fmt: str, tmp_path_factory) -> None:
    parser, export = PARSERS[fmt]
    work = tmp_path_factory.mktemp(fmt)

    @settings(max_examples=60, deadline=None)
    @given(export(), st.data())
    def check(export: Export, data: st.DataObject) -> None:
        damaged = bytearray(export.data)
        places = data.draw(st.integers(0, 8))
        for _ in range(places if damaged else 0):
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            damaged = damaged[: data.draw(st.integers(0, len(damaged)))]
            places += 1
        path = work / export.name
        path.write_bytes(bytes(damaged))
        try:
            rows = parsed_rows(parser, path, export.options)
        except ExportError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            return
        if bytes(damaged) == export.data:
            assert rows == export.expected
        assert len(rows) - common_in_order(rows, export.expected) <= places

    check()
