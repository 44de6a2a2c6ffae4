"""Re-exports of the same chat (issue 9, points 1 and 2): another phone, layout, time zone, contact name,
file name, media or a platform edit adds no message and keeps the user's exclusions and edits; the
newest export of a whole conversation supersedes what it no longer holds (kept, never trained, undoable).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from twinlm.config import TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.corpus.queries import superseded
from twinlm.identities import resolver
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.prepare.select import chats

from testdata import REALDATA

OPTIONS = ParseOptions(timezone="Europe/Berlin")

# (local time, author, text) of the original chat; "MEDIA" is a media-only message.
CHAT = [
    (datetime(2024, 3, 13, 14, 5, 12), "Alice", "Hi! Are we still on for Friday?"),
    (datetime(2024, 3, 13, 14, 6, 3), "Bob", "Yes, 7pm at the usual place"),
    (datetime(2024, 3, 13, 14, 6, 40), "Bob", "ok"),
    (datetime(2024, 3, 13, 14, 6, 41), "Alice", "ok"),
    (datetime(2024, 3, 13, 14, 7, 0), "Alice", "MEDIA"),
    (datetime(2024, 3, 13, 14, 8, 30), "Bob", "See you thre"),
    (datetime(2024, 3, 13, 23, 59, 5), "Alice", "Running late\nby 10 minutes"),
    (datetime(2024, 3, 14, 0, 1, 0), "Bob", "No worries"),
]
OTHER_CHAT = [
    (datetime(2024, 3, 13, 14, 5, 12), "Carol", "Hi! Are we still on for Friday?"),
    (datetime(2024, 3, 13, 16, 0, 0), "Dan", "No, sorry, I am ill"),
    (datetime(2024, 3, 13, 16, 1, 0), "Carol", "Get well soon"),
]


def android(
    chat: list, *, shift: timedelta = timedelta(0), names: dict | None = None, media: str = ""
) -> str:
    lines = [
        "13/03/2024, 14:05 - Messages and calls are end-to-end encrypted. No one outside of this chat, "
        "not even WhatsApp, can read or listen to them. Tap to learn more."
    ]
    for when, who, text in chat:
        t = when + shift
        body = (media or "<Media omitted>") if text == "MEDIA" else text
        lines.append(f"{t:%d/%m/%Y, %H:%M} - {(names or {}).get(who, who)}: {body}")
    return "\n".join(lines) + "\n"


def ios(chat: list, *, names: dict | None = None) -> str:
    """iPhone layout: brackets, seconds, US dates with a 12-hour clock, U+200E marks on generated text."""
    lines = [
        "[3/13/24, 2:05:00\u202fPM] Alice: \u200eMessages and calls are end-to-end encrypted. No one "
        "outside of this chat, not even WhatsApp, can read or listen to them."
    ]
    for when, who, text in chat:
        body = "\u200eimage omitted" if text == "MEDIA" else text
        stamp = f"{when.month}/{when.day}/{when:%y}, {when.hour % 12 or 12}:{when:%M:%S}\u202f{when:%p}"
        lines.append(f"[{stamp}] {(names or {}).get(who, who)}: {body}")
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def zipped(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("_chat.txt", text)
    return path


def state(corpus: Corpus) -> tuple[int, list[tuple]]:
    """(all message rows, the live rows with the user's columns) for comparing before and after. Media
    placeholders may change ("[media]" from an export without media, "[photo]" from one with)."""
    total = corpus.count("messages")
    live = corpus.db.execute(
        "SELECT excluded, user_text, CASE kind WHEN 'text' THEN coalesce(user_text, text) ELSE kind END "
        "FROM messages "
        "WHERE superseded_by_import IS NULL ORDER BY ts, id"
    ).fetchall()
    return total, live


def original(tmp_path: Path, corpus: Corpus) -> None:
    first = ingest([write(tmp_path / "a" / "WhatsApp Chat with Alice.txt", android(CHAT))], corpus, OPTIONS)
    assert not first.failed and first.total().changes.new_messages == len(CHAT)
    corpus.db.execute("UPDATE messages SET excluded = 1 WHERE text = 'Yes, 7pm at the usual place'")
    corpus.db.execute("UPDATE messages SET user_text = 'See you there!' WHERE text = 'See you thre'")


EDITED = [(w, a, "See you there <This message was edited>" if t == "See you thre" else t) for w, a, t in CHAT]
RENAMED = {"Alice": "Alice Smith", "Bob": "Bobby"}
VARIANTS = {
    "ios after android": lambda d: zipped(d / "WhatsApp Chat - Alice.zip", ios(CHAT)),
    "with media": lambda d: write(
        d / "WhatsApp Chat with Alice.txt", android(CHAT, media="IMG-20240313-WA0001.jpg (file attached)")
    ),
    "contact renamed": lambda d: write(
        d / "WhatsApp Chat with Alice Smith.txt", android(CHAT, names=RENAMED)
    ),
    "another phone": lambda d: zipped(d / "WhatsApp Chat - Alice Smith.zip", ios(CHAT, names=RENAMED)),
    "re-downloaded zip": lambda d: zipped(d / "Alice 2.zip", ios(CHAT)),
    "another time zone": lambda d: write(
        d / "WhatsApp Chat with Alice.txt", android(CHAT, shift=timedelta(hours=-5))
    ),
    "half-hour zone": lambda d: write(
        d / "WhatsApp Chat with Alice.txt", android(CHAT, shift=timedelta(hours=4, minutes=30))
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reexport_variant_adds_nothing_and_keeps_user_choices(tmp_path: Path, variant: str) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        original(tmp_path, corpus)
        before = state(corpus)
        again = ingest([VARIANTS[variant](tmp_path / "b")], corpus, OPTIONS)
        assert not again.failed
        assert again.total().changes.new_messages == 0
        assert state(corpus) == before
        assert corpus.count("conversations") == 1


def test_message_edited_since_replaces_its_row_and_keeps_the_users_edit(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        original(tmp_path, corpus)
        total, _ = state(corpus)
        again = ingest(
            [write(tmp_path / "b" / "WhatsApp Chat with Alice.txt", android(EDITED))], corpus, OPTIONS
        )
        assert again.total().changes.new_messages == 0
        assert corpus.count("messages") == total
        row = corpus.db.execute(
            "SELECT text, edited, user_text, superseded_by_import FROM messages WHERE user_text IS NOT NULL"
        ).fetchone()
        assert row == ("See you there", 1, "See you there!", None)


def test_two_loose_chat_files_in_one_folder(tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    write(folder / "_chat.txt", ios(CHAT))
    write(folder / "_chat 2.txt", ios(OTHER_CHAT))
    with Corpus(tmp_path / "corpus.db") as corpus:
        ingest([folder], corpus, OPTIONS)
        assert corpus.count("conversations") == 2  # different chats stay apart
        assert corpus.count("messages") == len(CHAT) + len(OTHER_CHAT)
        write(folder / "_chat 3.txt", ios(CHAT))  # the first chat downloaded again
        again = ingest([folder], corpus, OPTIONS)
        assert again.total().changes.new_messages == 0
        assert corpus.count("conversations") == 2


def test_unsure_match_is_a_counted_notice_not_a_guess(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        short = write(tmp_path / "a" / "WhatsApp Chat with Alice.txt", android(CHAT[:1]))
        ingest([short], corpus, OPTIONS)
        # Same first message, then a different conversation: one message is too little to be sure.
        other = write(tmp_path / "b" / "WhatsApp Chat with Alice.txt", android(CHAT[:1] + OTHER_CHAT[1:]))
        result = ingest([other], corpus, OPTIONS)
        assert corpus.count("conversations") == 2
        (notes,) = [f.report.notes for f in result.files]
        (note,) = [n for n in notes if "may be the same chat" in n]
        assert "WhatsApp Chat with Alice.txt" in note and "twinlm" in note


def test_deleted_for_everyone_is_superseded_and_undoable(tmp_path: Path) -> None:
    deleted = [(w, a, "This message was deleted" if t.startswith("Running late") else t) for w, a, t in CHAT]
    with Corpus(tmp_path / "corpus.db") as corpus:
        original(tmp_path, corpus)
        result = ingest(
            [write(tmp_path / "b" / "WhatsApp Chat with Alice.txt", android(deleted))], corpus, OPTIONS
        )
        assert corpus.count("messages") == len(CHAT)  # kept...
        assert "Running late\nby 10 minutes" not in trained_texts(corpus)  # ...never trained
        listed = superseded(corpus)
        assert [(s.text, s.import_id) for s in listed] == [("Running late\nby 10 minutes", result.import_id)]
        assert corpus.restore_superseded(result.import_id) == 1
        assert "Running late\nby 10 minutes" in trained_texts(corpus)


def test_older_partial_whatsapp_export_supersedes_nothing_outside_its_range(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        original(tmp_path, corpus)
        # WhatsApp exports at most the newest 40,000 messages: an export that starts later.
        ingest([write(tmp_path / "b" / "WhatsApp Chat with Alice.txt", android(CHAT[3:]))], corpus, OPTIONS)
        assert (
            corpus.db.execute(
                "SELECT count(*) FROM messages WHERE superseded_by_import IS NOT NULL"
            ).fetchone()[0]
            == 0
        )


def trained_texts(corpus: Corpus) -> list[str]:
    resolve = resolver(TwinConfig(me=["Alice"]))
    return [line.text for chat in chats(corpus, resolve, Counter()) for line in chat.lines]


# -- ChatGPT: an edited question -------------------------------------------------------------------


def gpt_node(node_id: str, parent: str | None, children: list[str], role: str, text: str, t: float) -> dict:
    return {
        "id": node_id,
        "parent": parent,
        "children": children,
        "message": {
            "id": node_id,
            "author": {"role": role},
            "create_time": t,
            "content": {"content_type": "text", "parts": [text]},
            "metadata": {},
            "recipient": "all",
        },
    }


def gpt_export(path: Path, edited: bool) -> Path:
    mapping = {
        "root": {"id": "root", "message": None, "parent": None, "children": ["q1"]},
        "q1": gpt_node("q1", "root", ["a1"], "user", "Q1", 1_700_000_000),
        "a1": gpt_node("a1", "q1", ["q2a", "q2b"] if edited else ["q2a"], "assistant", "A1", 1_700_000_001),
        "q2a": gpt_node("q2a", "a1", ["a2a"], "user", "Q2a", 1_700_000_010),
        "a2a": gpt_node("a2a", "q2a", [], "assistant", "A2a", 1_700_000_011),
    }
    if edited:
        mapping["q2b"] = gpt_node("q2b", "a1", ["a2b"], "user", "Q2b", 1_700_000_020)
        mapping["a2b"] = gpt_node("a2b", "q2b", [], "assistant", "A2b", 1_700_000_021)
    conv = {
        "title": "Maths",
        "create_time": 1_700_000_000,
        "id": "conv-1",
        "conversation_id": "conv-1",
        "current_node": "a2b" if edited else "a2a",
        "mapping": mapping,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([conv]), encoding="utf-8")
    return path


def test_chatgpt_edited_question_builds_from_the_newest_branch(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        ingest([gpt_export(tmp_path / "a" / "conversations.json", edited=False)], corpus, OPTIONS)
        ingest([gpt_export(tmp_path / "b" / "conversations.json", edited=True)], corpus, OPTIONS)
        assert trained_texts(corpus) == ["Q1", "A1", "Q2b", "A2b"]
        # An older export read again later does not undo the newer one's branch.
        ingest([gpt_export(tmp_path / "a" / "conversations.json", edited=False)], corpus, OPTIONS)
        assert corpus.count("messages") == 6


# -- sources that may export a date range never supersede -------------------------------------------


def test_partial_telegram_export_supersedes_nothing(tmp_path: Path) -> None:
    def export(ids: range) -> dict:
        return {
            "name": "Sam",
            "type": "personal_chat",
            "id": 42,
            "messages": [
                {
                    "id": i,
                    "type": "message",
                    "date": f"2024-03-13T14:{i:02d}:00",
                    "date_unixtime": str(1_710_338_400 + 60 * i),
                    "from": "Sam",
                    "from_id": "user42",
                    "text": f"message {i}",
                }
                for i in ids
            ],
        }

    with Corpus(tmp_path / "corpus.db") as corpus:
        ingest([write(tmp_path / "a" / "result.json", json.dumps(export(range(1, 6))))], corpus, OPTIONS)
        ingest([write(tmp_path / "b" / "result.json", json.dumps(export(range(3, 5))))], corpus, OPTIONS)
        assert (
            corpus.db.execute(
                "SELECT count(*) FROM messages WHERE superseded_by_import IS NOT NULL"
            ).fetchone()[0]
            == 0
        )


# -- real export samples ----------------------------------------------------------------------------


@pytest.mark.skipif(not (REALDATA / "whatsapp").is_dir(), reason="no realdata (set TWINLM_EXTRA_EXPORTS)")
def test_realdata_whatsapp_reexports_add_nothing(tmp_path: Path) -> None:
    originals = sorted((REALDATA / "whatsapp").glob("*.txt"))
    with Corpus(tmp_path / "corpus.db") as corpus:
        first = ingest(originals, corpus, OPTIONS)
        assert not first.failed
        chats, total = corpus.count("conversations"), corpus.count("messages")
        assert chats == len(originals)  # different real chats stay apart
        for i, path in enumerate(originals):
            text = path.read_text(encoding="utf-8-sig")
            author = Counter(re.findall(r" - ([^:\n]{1,40}): ", text)).most_common(1)[0][0]
            renamed = write(tmp_path / f"v{i}" / "_chat.txt", text.replace(f"{author}: ", "Someone Else: "))
            # Another file name and contact name, and read as if made in another time zone.
            for options in (OPTIONS, ParseOptions(timezone="America/New_York")):
                again = ingest([renamed], corpus, options)
                assert again.total().changes.new_messages == 0, (path.name, options.timezone)
        assert (corpus.count("conversations"), corpus.count("messages")) == (chats, total)
        assert superseded(corpus) == []


def test_another_zone_with_other_daylight_saving_dates(tmp_path: Path) -> None:
    """New York moves its clocks on 10 March, Berlin on 31 March: between them the two are 5 hours
    apart, otherwise 6. The export made in New York still adds nothing."""
    spring = [
        (datetime(2024, 3, 1, 9, 0), "Alice", "Hello there"),
        (datetime(2024, 3, 1, 9, 5), "Bob", "Morning"),
        (datetime(2024, 3, 1, 9, 6), "Alice", "Coffee later?"),
        (datetime(2024, 3, 20, 18, 0), "Bob", "In the gap between the two clock changes"),
        (datetime(2024, 3, 20, 18, 1), "Alice", "ok"),
        (datetime(2024, 4, 5, 12, 0), "Bob", "After both"),
    ]
    berlin, new_york = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")
    there = [(w.replace(tzinfo=berlin).astimezone(new_york).replace(tzinfo=None), a, t) for w, a, t in spring]
    assert there[3][0].hour == 13 and there[0][0].hour == 3  # 5 hours, then 6
    with Corpus(tmp_path / "corpus.db") as corpus:
        ingest([write(tmp_path / "a" / "WhatsApp Chat with Alice.txt", android(spring))], corpus, OPTIONS)
        later = write(tmp_path / "b" / "WhatsApp Chat with Alice.txt", android(there))
        again = ingest([later], corpus, OPTIONS)
        assert again.total().changes.new_messages == 0
        assert corpus.count("messages") == len(spring) and superseded(corpus) == []


def test_export_lacking_too_much_of_a_chat_supersedes_nothing(tmp_path: Path) -> None:
    """The same first messages, then 25 others: not deletions but a different chat taken for this one."""
    start = datetime(2024, 3, 1, 9, 0)
    head = [(start + timedelta(minutes=i), "Alice", f"opening line {i}") for i in range(5)]
    one = head + [(start + timedelta(hours=1, minutes=i), "Bob", f"first chat {i}") for i in range(25)]
    two = head + [(start + timedelta(hours=1, minutes=i), "Bob", f"other chat {i}") for i in range(26)]
    with Corpus(tmp_path / "corpus.db") as corpus:
        ingest([write(tmp_path / "a" / "WhatsApp Chat with Alice.txt", android(one))], corpus, OPTIONS)
        again = ingest(
            [write(tmp_path / "b" / "WhatsApp Chat with Alice.txt", android(two))], corpus, OPTIONS
        )
        assert superseded(corpus) == []
        (notes,) = [f.report.notes for f in again.files]
        assert any("too many to be deletions" in note for note in notes)


def test_two_chatgpt_exports_in_one_ingest_are_named(tmp_path: Path) -> None:
    old = gpt_export(tmp_path / "2024-01" / "conversations.json", edited=False)
    new = gpt_export(tmp_path / "2024-02" / "conversations.json", edited=True)
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([old, new], corpus, OPTIONS)
    notes = result.files[1].report.notes
    assert any(f"conversation also in {old}" in note for note in notes)


# -- Messenger: a thread split over files, a renamed sender, a message unsent since ----------------


def messenger_thread(folder: Path, parts: dict[str, list[tuple[int, str, str]]]) -> Path:
    for name, said in parts.items():
        data = {
            "participants": [{"name": "Alice Smith"}, {"name": "Sam Park"}],
            "messages": [
                {"sender_name": who, "timestamp_ms": t, "content": text} for t, who, text in reversed(said)
            ],
            "title": "Alice Smith",
            "thread_path": "inbox/alicesmith_a1b2c3",
        }
        write(folder / name, json.dumps(data))
    return folder


def test_messenger_reexport_renamed_sender_and_unsent_message(tmp_path: Path) -> None:
    base = 1_700_000_000_000
    said = [(base + 60_000 * i, "Alice Smith" if i % 2 else "Sam Park", f"message {i}") for i in range(60)]
    with Corpus(tmp_path / "corpus.db") as corpus:
        ingest(
            [messenger_thread(tmp_path / "a", {"message_1.json": said[30:], "message_2.json": said[:30]})],
            corpus,
            OPTIONS,
        )
        assert corpus.count("messages") == 60 and corpus.count("conversations") == 1
        # Next download: only the newest file read again, Alice renamed, message 40 unsent.
        renamed = [
            (t, "Alice S." if who == "Alice Smith" else who, text)
            for t, who, text in said[30:]
            if text != "message 40"
        ]
        again = ingest([messenger_thread(tmp_path / "b", {"message_1.json": renamed})], corpus, OPTIONS)
        assert again.total().changes.new_messages == 0
        assert corpus.count("messages") == 60
        assert [s.text for s in superseded(corpus)] == ["message 40"]  # the older file's rows untouched
