"""The build reads each conversation in time order; ties and messages without a time keep their
position in the export, whatever order the exports were ingested in."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

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
