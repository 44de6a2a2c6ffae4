from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from twinlm.corpus.db import SCHEMA_VERSION, Corpus
from twinlm.errors import TwinError
from twinlm.model import Conversation, Message

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def chat(n: int, *, conv_id: str = "c1", start: int = 0, text: str = "hi {i}") -> Conversation:
    messages = tuple(
        Message(
            id=f"{conv_id}:{i}",
            author_id=f"u{i % 2}",
            author_name=f"User {i % 2}",
            timestamp=T0 + timedelta(minutes=i),
            text=text.format(i=i),
        )
        for i in range(start, start + n)
    )
    return Conversation(source="test", id=conv_id, title="A chat", kind="chat", messages=messages)


def import_all(corpus: Corpus, *conversations: Conversation):
    with corpus.importing(["x"]) as import_id, corpus.file_savepoint() as changes:
        for c in conversations:
            corpus.add(c, import_id)
    return changes


def snapshot(corpus: Corpus) -> list[tuple]:
    return corpus.db.execute(
        "SELECT m.native_id, m.text, m.ts, m.excluded, m.user_text, c.native_id, c.title "
        "FROM messages m JOIN conversations c ON c.id = m.conversation ORDER BY m.native_id"
    ).fetchall()


def test_reimport_adds_nothing_and_newer_export_adds_only_new(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        first = import_all(corpus, chat(10))
        assert (first.new_conversations, first.new_messages, first.updated_messages) == (1, 10, 0)
        before = snapshot(corpus)
        again = import_all(corpus, chat(10))
        assert (again.new_conversations, again.new_messages, again.updated_messages) == (0, 0, 0)
        assert snapshot(corpus) == before
        newer = import_all(corpus, chat(15))  # next month's export: the old 10 plus 5 more
        assert (newer.new_conversations, newer.new_messages, newer.updated_messages) == (0, 5, 0)
        assert corpus.count("messages") == 15
        assert corpus.count("imports") == 3


def test_slices_of_one_conversation_merge(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        changes = import_all(corpus, chat(3), chat(4, start=3), chat(2, conv_id="c2"))
        assert (changes.new_conversations, changes.new_messages) == (2, 9)
        rows = corpus.db.execute(
            "SELECT c.native_id, count(*) FROM messages m JOIN conversations c ON c.id = m.conversation "
            "GROUP BY c.native_id ORDER BY 1"
        ).fetchall()
        assert rows == [("c1", 7), ("c2", 2)]


def test_changed_text_keeps_the_stored_text_and_user_edits(tmp_path: Path) -> None:
    # The first import wins a message's text (issue 16): a re-import with other text under the same key
    # keeps the stored text and names the message in `kept_texts`; other raw columns still update.
    with Corpus(tmp_path / "corpus.db") as corpus:
        import_all(corpus, chat(3))
        corpus.db.execute("UPDATE messages SET excluded = 1 WHERE native_id = 'c1:0'")
        corpus.db.execute("UPDATE messages SET user_text = 'mine' WHERE native_id = 'c1:1'")
        corpus.db.execute("UPDATE conversations SET excluded = 1, user_note = 'private'")
        changes = import_all(corpus, chat(3, text="edited {i}"))
        assert (changes.new_messages, changes.updated_messages) == (0, 0)
        assert changes.kept_texts == ["c1:0", "c1:1", "c1:2"]
        rows = {r[0]: r for r in snapshot(corpus)}
        assert rows["c1:0"][1] == "hi 0" and rows["c1:0"][3] == 1
        assert rows["c1:1"][1] == "hi 1" and rows["c1:1"][4] == "mine"
        # Text and author name changed: the name updates (one updated message), the text stays.
        one = chat(1, text="edited {i}")
        one = replace(one, messages=(replace(one.messages[0], author_name="Renamed"),))
        changes = import_all(corpus, one)
        assert (changes.updated_messages, changes.kept_texts) == (1, ["c1:0"])
        row = corpus.db.execute("SELECT text, author_name FROM messages WHERE native_id = 'c1:0'").fetchone()
        assert row == ("hi 0", "Renamed")
        assert corpus.db.execute("SELECT excluded, user_note FROM conversations").fetchone() == (1, "private")


def test_failed_file_rolls_back_only_that_file(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        with corpus.importing(["a", "b"]) as import_id:
            with corpus.file_savepoint():
                corpus.add(chat(2), import_id)
            with pytest.raises(RuntimeError), corpus.file_savepoint():
                corpus.add(chat(5, conv_id="bad"), import_id)
                raise RuntimeError("parser failed half-way")
            with corpus.file_savepoint() as changes:
                corpus.add(chat(1, conv_id="bad"), import_id)  # the cache must not point at rolled-back rows
        assert changes.new_conversations == 1
        assert corpus.count("messages") == 3
        assert corpus.count("conversations") == 2


def test_exception_rolls_back_the_whole_import(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        import_all(corpus, chat(2))
        before = snapshot(corpus)
        with pytest.raises(KeyError), corpus.importing(["x"]) as import_id:
            corpus.add(chat(50, conv_id="other"), import_id)
            raise KeyError("bug")
        assert snapshot(corpus) == before
        assert corpus.count("imports") == 1


def test_import_killed_half_way_leaves_corpus_as_before(tmp_path: Path) -> None:
    db = tmp_path / "corpus.db"
    with Corpus(db) as corpus:
        import_all(corpus, chat(5))
        before = snapshot(corpus)
    size_before = os.path.getsize(db)
    # A child process imports a large batch and is SIGKILLed in the middle of the transaction.
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_corpus import chat
        from twinlm.corpus.db import Corpus
        corpus = Corpus(__import__("pathlib").Path({str(db)!r}))
        corpus.db.execute("PRAGMA cache_size = 8")  # tiny cache: uncommitted pages spill to the file
        with corpus.importing(["big"]) as import_id, corpus.file_savepoint():
            for k in range(20):
                corpus.add(chat(1000, conv_id=f"k{{k}}"), import_id)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # The killed transaction's pages reached the database file; the journal holds what they replaced.
    assert os.path.getsize(str(db) + "-journal") > 0
    assert os.path.getsize(db) > size_before + 1_000_000
    with Corpus(db) as corpus:
        assert snapshot(corpus) == before
        assert corpus.count("imports") == 1
        assert corpus.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize("damage", ["not sqlite", "cut short"])
def test_a_damaged_corpus_file_is_one_error_line_naming_it(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "corpus.db"
    if damage == "not sqlite":
        path.write_bytes(b"PK\x03\x04 a zip file saved under the corpus's name" * 100)
    else:
        with Corpus(path) as corpus, corpus.importing(["test"]) as import_id, corpus.file_savepoint():
            for n in range(300):
                said = Message(id=f"m{n}", author_id="a", author_name="Ann", timestamp=None, text="x" * 500)
                corpus.add(Conversation("telegram", f"c{n}", "t", "chat", (said,)), import_id)
        path.write_bytes(path.read_bytes()[:20_000])  # a copy that stopped part-way
    before = path.read_bytes()
    with pytest.raises(TwinError, match=rf"^{re.escape(str(path))}: damaged or not a twinlm corpus \("):
        Corpus(path)
    assert path.read_bytes() == before  # not written to


def test_a_corpus_from_a_newer_twinlm_is_refused_not_read_as_an_older_one(tmp_path: Path) -> None:
    path = tmp_path / "corpus.db"
    with Corpus(path) as corpus:
        newer = str(SCHEMA_VERSION + 1)
        corpus.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (newer,))
    with pytest.raises(TwinError, match=r"made by a newer twinlm .*upgrade twinlm"):
        Corpus(path)


def test_another_programs_sqlite_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "corpus.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE bookmarks (url TEXT)")
    before = path.read_bytes()
    with pytest.raises(TwinError, match=r"not a twinlm corpus \(an SQLite database of another program\)"):
        Corpus(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("command", ["status", "stats", "run"])
def test_commands_say_a_damaged_corpus_in_one_line(tmp_path: Path, command: str) -> None:
    from typer.testing import CliRunner

    from twinlm.cli import app

    runner = CliRunner()
    ws = tmp_path / "twin"
    assert runner.invoke(app, ["init", str(ws), "--me", "Bob"]).exit_code == 0
    (ws / "corpus.db").write_bytes(b"SQLite format 3\x00" + b"\x13" * 4000)  # a header, then garbage
    said = runner.invoke(app, [command, "-w", str(ws)])
    assert said.exit_code == 1 and isinstance(said.exception, SystemExit), said.output  # not a crash
    errors = [line for line in said.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {ws / 'corpus.db'}: damaged or not a twinlm corpus (file is not a database); restore it "
        "from a backup, or move it away and ingest your exports again"
    ]


def test_a_corpus_another_command_holds_is_one_line_saying_so_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ingest holds the corpus while it writes; a command run meanwhile in another terminal waits SQLite's
    busy timeout (5 s), then says so in one line, whether the lock meets it as it opens the corpus or
    half-way through its work."""
    from typer.testing import CliRunner

    import twinlm.cli.curate as curate_cli
    from twinlm.cli import app

    runner = CliRunner()
    ws = tmp_path / "twin"
    assert runner.invoke(app, ["init", str(ws), "--me", "Bob"]).exit_code == 0
    Corpus(ws / "corpus.db").close()
    other = sqlite3.connect(ws / "corpus.db", isolation_level=None)
    expected = (
        "the corpus is in use by another twinlm command (an ingest or a change writing it, or a build "
        "reading it) (database is locked); nothing was changed: run this again when that has finished"
    )
    try:
        other.execute("BEGIN EXCLUSIVE")  # as an ingest does once its changes outgrow SQLite's cache
        at_open = runner.invoke(app, ["conversations", "-w", str(ws)])
        other.execute("ROLLBACK")
        real = curate_cli.list_conversations

        def lock_then_list(*args: object, **kwargs: object) -> object:
            other.execute("BEGIN EXCLUSIVE")
            return real(*args, **kwargs)

        monkeypatch.setattr(curate_cli, "list_conversations", lock_then_list)
        midway = runner.invoke(app, ["conversations", "-w", str(ws)])
    finally:
        other.close()
    for said, where in ((at_open, str(ws / "corpus.db")), (midway, "corpus.db")):
        assert said.exit_code == 1 and isinstance(said.exception, SystemExit), said.output  # not a crash
        shown = [line for line in said.stderr.splitlines() if line.strip()]
        assert shown == [f"error: {where}: {expected}"]
