"""The build reads each conversation in time order; ties and messages without a time keep their
position in the export, whatever order the exports were ingested in."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from twinlm.config import TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.identities import resolver
from twinlm.ingest import ingest
from twinlm.model import Conversation, Message, ParseOptions
from twinlm.prepare.select import chats

from testdata import EXAMPLES


def message(mid: str, minute: int | None, author: str = "Sam") -> Message:
    when = None if minute is None else datetime(2024, 6, 1, 12, minute, tzinfo=UTC)
    return Message(id=mid, author_id=author, author_name=author, timestamp=when, text=mid)


def add(corpus: Corpus, *messages: Message) -> None:
    with corpus.importing(["test"]) as import_id, corpus.file_savepoint():
        corpus.add(Conversation("telegram", "chat1", "Chat", "chat", tuple(messages)), import_id)


def texts(corpus: Corpus) -> list[str]:
    (chat,) = chats(corpus, resolver(TwinConfig()), Counter())
    return [line.text for line in chat.lines]


def test_an_older_export_ingested_after_a_newer_one_is_read_in_time_order(tmp_path: Path) -> None:
    """Issue 17, bug 6: the rows of the older export are inserted last; the build still reads by time."""
    with Corpus(tmp_path / "corpus.db") as corpus:
        add(corpus, message("m3", 3), message("m4", 4))  # this month's export, ingested first
        add(corpus, message("m1", 1), message("m2", 2), message("m3", 3))  # last month's, ingested after
        assert texts(corpus) == ["m1", "m2", "m3", "m4"]


def test_equal_times_keep_the_export_order(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        add(corpus, message("c", 5), message("a", 5), message("b", 5), message("d", 6))
        assert texts(corpus) == ["c", "a", "b", "d"]


def test_a_message_without_a_time_stays_where_the_export_put_it(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        add(corpus, message("q1", 1), message("a1", None), message("q2", 3), message("a2", 4))
        assert texts(corpus) == ["q1", "a1", "q2", "a2"]
        add(corpus, message("q0", 0))  # an earlier message arriving later still goes first
        assert texts(corpus) == ["q0", "q1", "a1", "q2", "a2"]


def test_chatgpt_node_without_create_time_keeps_its_place(tmp_path: Path) -> None:
    data = json.loads((EXAMPLES / "chatgpt" / "conversations.json").read_text(encoding="utf-8"))
    conversation = data[0]
    conversation["mapping"]["a1b"]["message"]["create_time"] = None  # the first answer has no time
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps([conversation]), encoding="utf-8")
    with Corpus(tmp_path / "corpus.db") as corpus:
        assert not ingest([path], corpus, ParseOptions(timezone="UTC")).failed
        (chat,) = chats(corpus, resolver(TwinConfig()), Counter())
        roles = [(line.role, line.timestamp_ms is None) for line in chat.lines]
        assert roles[:3] == [("user", False), ("assistant", True), ("user", False)]


def _all_lines(corpus: Corpus, **options: object) -> list[tuple[str, bool, list[tuple]]]:
    """(chat, whether its lines came whole, the lines) for every chat."""
    found = chats(corpus, resolver(TwinConfig()), Counter(), **options)  # type: ignore[arg-type]
    read = [(c, isinstance(c.lines, tuple), list(c.lines)) for c in found]
    for chat, _, lines in read:  # its speakers are noted as its lines are read, streamed or not
        assert chat.speakers == {line.speaker for line in lines}
    return [(chat.key, whole, lines) for chat, whole, lines in read]


def test_conversations_read_by_id_runs_equal_the_sorted_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build reads each conversation's runs of rows by id range instead of sorting every message;
    both reads give the same chats, lines and order, with exclusions, superseded rows, a source filter,
    conversations whose rows interleave over several imports, and long chats streamed only when their
    times never go back."""
    from twinlm.prepare import select

    with Corpus(tmp_path / "corpus.db") as corpus:
        for round_ in range(3):  # each import adds to every conversation: three runs each
            for source, native in (("telegram", "b"), ("discord", "z"), ("telegram", "a"), ("telegram", "c")):
                # z's imports go back in time: the long chat read whole and sorted, not streamed
                minute = 10 * (2 - round_ if native == "z" else round_)
                msgs = [message(f"{native}{round_}-{k}", minute + k, f"p{k % 2}") for k in range(4)]
                with corpus.importing([f"{source}{round_}"]) as import_id, corpus.file_savepoint():
                    corpus.add(Conversation(source, native, native, "chat", tuple(msgs)), import_id)
        db = corpus.db
        db.execute("UPDATE conversations SET excluded = 1 WHERE native_id = 'c'")
        db.execute("UPDATE messages SET excluded = 1 WHERE native_id IN ('b0-1', 'a2-3')")
        db.execute("UPDATE messages SET superseded_by_import = 1 WHERE native_id = 'z1-2'")
        db.execute("UPDATE messages SET excluded = 1 WHERE native_id LIKE 'a%'")  # 'a': nothing left
        db.execute("UPDATE messages SET excluded = 0 WHERE native_id = 'a1-0'")  # ... but one message
        runs = select._runs(corpus)
        assert runs is not None and all(len(r) == 3 for r in runs.values())

        def read() -> tuple[list, list, list]:
            every = _all_lines(corpus)
            return every, _all_lines(corpus, sources=["telegram"]), _all_lines(corpus, stream_over=5)

        by_runs = read()
        monkeypatch.setattr(select, "RUNS_PER_CONVERSATION", 0)  # any run is too many: the sorted read
        assert select._runs(corpus) is None
        assert read() == by_runs
        every, telegram, streaming = by_runs
        assert [key for key, _, _ in every] == ["discord:z", "telegram:a", "telegram:b"]
        assert [key for key, _, _ in telegram] == ["telegram:a", "telegram:b"]
        # Over stream_over lines: b in time order is streamed; z, out of order, is read whole and sorted.
        assert [(key, whole) for key, whole, _ in streaming] == [
            ("discord:z", True),
            ("telegram:a", True),
            ("telegram:b", False),
        ]
        lines = {key: [line.text for line in chat] for key, _, chat in every}
        assert lines["telegram:a"] == ["a1-0"]
        assert "b0-1" not in lines["telegram:b"] and len(lines["telegram:b"]) == 11
        assert "z1-2" not in lines["discord:z"] and len(lines["discord:z"]) == 11
        assert lines["discord:z"][:4] == ["z2-0", "z2-1", "z2-2", "z2-3"]
