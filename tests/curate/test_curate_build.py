"""Curation and the rest of the pipeline (issue 13): changes survive re-ingesting the same and a newer
export, the next build drops what is excluded and trains the edited text, `show` is what the build
makes, and a change while a build or an ingest holds the corpus is one clear error that changes nothing."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from curate_data import CHAT, ME, NEWER, rows, telegram_export

from twinlm.corpus import db as corpus_db
from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.prepare.build import build
from twinlm.prepare.sample import Sample, read_samples
from twinlm.workspace import open_workspace

Run = Callable[..., Any]


def ok(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return result


def mid(workspace: Path, text: str) -> str:
    return str(rows(workspace, "SELECT id FROM messages WHERE text = ?", (text,))[0][0])


def user_columns(workspace: Path) -> list[tuple]:
    return rows(
        workspace,
        "SELECT m.source, m.native_id, m.excluded, m.user_text, c.excluded, c.user_note FROM messages AS m "
        "JOIN conversations AS c ON c.id = m.conversation ORDER BY m.source, m.native_id",
    )


def reingest(workspace: Path, messages: list) -> None:
    export = telegram_export(workspace.parent / "exports" / "tg" / "result.json", messages)
    with Corpus(workspace / "corpus.db") as corpus:
        assert not ingest([export], corpus, ParseOptions(timezone="UTC")).failed


def built(workspace: Path) -> list[Sample]:
    ws = open_workspace(workspace)
    with Corpus(ws.corpus_path) as corpus:
        build(ws.config, corpus, workspace / "data")
    return [
        Sample.from_json(line) for line in (workspace / "data" / "samples.jsonl").read_bytes().splitlines()
    ]


def test_changes_survive_reingesting_the_same_and_a_newer_export(twinlm: Run, workspace: Path) -> None:
    ok(twinlm("edit", mid(workspace, "sure thing, I have the long one"), "sure, the 70 m one"))
    ok(twinlm("exclude", "--messages", "--search", "crux", "-y"))
    ok(twinlm("note", "telegram:42", "climbing"))
    ok(twinlm("exclude", "--chat", "mom", "-y"))
    before = user_columns(workspace)
    reingest(workspace, CHAT)  # the same export again
    assert user_columns(workspace) == before
    reingest(workspace, CHAT + NEWER)  # next month's export: two new messages
    after = user_columns(workspace)
    assert len(after) == len(before) + 2
    assert [r for r in after if r[1] not in ("42:9", "42:10")] == before
    # The log still names the rows: undo works after the re-imports, and the export names them all.
    ok(twinlm("undo"))
    assert rows(workspace, "SELECT excluded FROM conversations WHERE source = 'whatsapp'") == [(0,)]
    exported = workspace.parent / "changes.json"
    ok(twinlm("changes", "export", str(exported)))
    keys = {(i[1], i[2]) for c in json.loads(exported.read_text())["changes"] for i in c["items"]}
    assert ("telegram", "42") in keys and ("telegram", "42:4") in keys


def test_the_next_build_drops_excluded_sessions_and_trains_edited_text(twinlm: Run, workspace: Path) -> None:
    first = {s.id: s for s in built(workspace)}
    assert {"telegram:42#0", "telegram:42#1"} <= set(first)
    assert any(s.source == "whatsapp" for s in first.values())
    ok(twinlm("exclude", "--chat", "mom", "-y"))  # a whole chat
    ok(twinlm("exclude", "--messages", "--since", "2024-03-02", "--until", "2024-03-02", "-y"))  # a session
    ok(twinlm("edit", mid(workspace, "yes, I will be there at seven"), "yes, see you at 7 <b>sharp</b>"))
    ok(twinlm("edit", mid(workspace, "sure thing, I have the long one"), "--drop"))
    after = {s.id: s for s in built(workspace)}
    assert not any(s.source == "whatsapp" for s in after.values())
    assert "telegram:42#1" not in after
    trained = [t.text for t in after["telegram:42#0"].turns if t.trained]
    assert trained == ["yes, see you at 7 <b>sharp</b>"]  # the edit is trained; the dropped one is gone
    # Undo everything: the next build is the first one again.
    for _ in range(4):
        ok(twinlm("undo"))
    assert {s.id: s.turns for s in built(workspace)} == {k: s.turns for k, s in first.items()}


def test_show_is_what_the_build_makes(twinlm: Run, workspace: Path) -> None:
    # Redaction and a cleaning rule at work: Jordan's e-mail address (redacted) and a media-only message.
    ok(twinlm("edit", mid(workspace, "very, the crux is a long reach"), "mail me: jordan@example.com"))
    samples = built(workspace)
    listed = json.loads(ok(twinlm("conversations", "--json")).stdout)["conversations"]
    for conversation in listed:
        if conversation["kind"] == "document":
            continue
        view = json.loads(ok(twinlm("show", conversation["key"], "--json")).stdout)
        shown = [
            (s["id"], [(t["speaker"], t["text"], t["trained"]) for t in s["turns"]])
            for part in view["sessions"]
            for s in part["samples"]
            if s["kept"]
        ]
        made = [
            (s.id, [(t.speaker, t.text, t.trained) for t in s.turns])
            for s in samples
            if s.conversation == conversation["key"]
        ]
        assert shown == made, conversation["key"]
        assert view["samples"] == conversation["last_build"]["samples"] if made else True
    telegram = json.loads(ok(twinlm("show", "telegram:42", "--json")).stdout)
    messages = {m["text"]: m for part in telegram["sessions"] for m in part["messages"]}
    redacted = messages["mail me: jordan@example.com"]
    assert redacted["trained_text"] == "mail me: [EMAIL]" and redacted["rules"] == {"redacted email": 1}
    assert redacted["status"] == "context" and redacted["edited"]
    assert messages["then I need to try it this weekend"]["status"] == "trained"
    discord = json.loads(ok(twinlm("show", "discord:500000000000000001", "--json")).stdout)
    statuses = {m["text"]: (m["status"], m["rules"]) for p in discord["sessions"] for m in p["messages"]}
    assert statuses["[image]"] == ("dropped", {"message dropped: media": 1})


@pytest.fixture
def quick_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_db, "BUSY_TIMEOUT_MS", 50)


def test_a_change_while_a_build_reads_the_corpus_is_one_clear_error(
    twinlm: Run, workspace: Path, quick_timeout: None
) -> None:
    db_path = workspace / "corpus.db"
    before = user_columns(workspace)
    reader = sqlite3.connect(db_path)  # a build streaming the messages: it holds a shared lock
    cursor = reader.execute("SELECT * FROM messages")
    cursor.fetchone()
    result = twinlm("exclude", "telegram:42")
    assert result.exit_code == 1
    assert "in use by another twinlm command" in result.stderr and "nothing was changed" in result.stderr
    assert "Traceback" not in result.output
    cursor.fetchall()  # the build finishes
    reader.close()
    assert user_columns(workspace) == before
    assert rows(workspace, "SELECT count(*) FROM changes") == [(0,)]
    assert rows(workspace, "PRAGMA integrity_check") == [("ok",)]
    ok(twinlm("exclude", "telegram:42"))  # and now it goes through, log and all
    assert rows(workspace, "SELECT excluded FROM conversations WHERE native_id = '42'") == [(1,)]
    assert rows(workspace, "SELECT count(*) FROM changes") == [(1,)]


def test_a_change_while_an_ingest_writes_is_one_clear_error(
    twinlm: Run, workspace: Path, quick_timeout: None
) -> None:
    before = user_columns(workspace)
    writer = sqlite3.connect(workspace / "corpus.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # an ingest's transaction
    writer.execute("UPDATE conversations SET title = title || '!'")
    for args in (
        ["edit", mid(workspace, "not yet, is it hard?"), "hard?"],
        ["undo"],
        ["exclude", "--source", "telegram", "-y"],
    ):
        result = twinlm(*args)
        assert result.exit_code == 1, args
        assert "in use by another twinlm command" in result.stderr or "nothing to undo" in result.stderr
    writer.execute("ROLLBACK")
    writer.close()
    assert user_columns(workspace) == before
    assert rows(workspace, "PRAGMA integrity_check") == [("ok",)]
    assert ME  # the fixture's owner is still "me": nothing above changed the corpus


def test_a_page_of_sessions_is_the_same_as_in_the_whole_view(workspace: Path) -> None:
    ws = open_workspace(workspace)
    from twinlm.curate.view import Viewer

    with Corpus(ws.corpus_path) as corpus:
        row = int(corpus.db.execute("SELECT id FROM conversations WHERE native_id = '42'").fetchone()[0])
        viewer = Viewer(ws.config, corpus)
        whole = viewer.conversation(row)
        second = viewer.conversation(row, 1, 1)
        beyond = viewer.conversation(row, 5, 3)
    assert whole.total_parts == second.total_parts == 2 and len(whole.parts) == 2
    assert [p.index for p in second.parts] == [1]
    assert second.to_json()["sessions"] == [whole.to_json()["sessions"][1]]  # sample ids included
    assert beyond.parts == [] and beyond.total_parts == 2


def test_the_data_version_moves_with_every_change_undo_and_import(twinlm: Run, workspace: Path) -> None:
    def version() -> str:
        with Corpus(workspace / "corpus.db") as corpus:
            return corpus_db.data_version(corpus.db)

    seen = [version()]
    ok(twinlm("exclude", "telegram:42"))
    seen.append(version())
    ok(twinlm("undo"))
    seen.append(version())
    reingest(workspace, CHAT + NEWER)
    seen.append(version())
    assert len(set(seen)) == 4
    assert version() == seen[-1]  # reading changes nothing


# A chat where a message the build drops ("lol", a non-reply) bridges a pause: the review sees one session
# (no pause over the 10-minute gap), the build two (without it, 15 minutes pass). A day later, one more.
BRIDGED = [
    (1, "Jordan", "shall we go climbing on saturday morning?", 0),
    (2, ME, "yes, saturday morning works well for me", 60),
    (3, "Jordan", "lol", 8 * 60),
    (4, ME, "what time should we meet at the gym then?", 16 * 60),
    (5, "Jordan", "at ten, at the usual place by the entrance", 17 * 60),
    (6, ME, "perfect, I will bring the rope and the chalk", 18 * 60),
    (7, "Jordan", "did you see the new route on the north wall?", 86_400),
    (8, ME, "not yet, is it as hard as they all say?", 86_460),
    (9, "Jordan", "very, the crux is a long reach to a sloper", 86_520),
    (10, ME, "then I need to try it this coming weekend", 86_580),
]


def test_a_later_page_numbers_its_samples_as_the_build_does(twinlm: Run, workspace: Path) -> None:
    export = telegram_export(workspace.parent / "exports" / "bridged" / "result.json", BRIDGED, chat_id=77)
    with Corpus(workspace / "corpus.db") as corpus:
        assert not ingest([export], corpus, ParseOptions(timezone="UTC")).failed
    made = [s.id for s in built(workspace) if s.conversation == "telegram:77"]
    assert made == ["telegram:77#0", "telegram:77#1", "telegram:77#2"]  # the build's sessions, as above
    # The second page first: the first page's messages are cleaned to number it (once shown, a page keeps
    # its own count with the cut, so the first page is asked for after).
    pages = [
        json.loads(ok(twinlm("show", "telegram:77", "--session", str(n), "--json")).stdout) for n in (1, 0)
    ]
    parts = [part for page in pages[::-1] for part in page["sessions"]]
    shown = [s["id"] for part in parts for s in part["samples"] if s["kept"]]
    assert shown == made
    assert pages[0]["parts"] == 2  # the review's sessions: the bridged pause is not one

    # Rules that keep the "lol" make the build's first two sessions one: the numbers follow them.
    from twinlm.curate.view import Viewer

    ws = open_workspace(workspace)
    clean = ws.config.build.clean.model_copy(update={"non_replies": False})
    config = ws.config.model_copy(update={"build": ws.config.build.model_copy(update={"clean": clean})})
    with Corpus(ws.corpus_path) as corpus:
        build(config, corpus, workspace / "data-lol")
        row = int(corpus.db.execute("SELECT id FROM conversations WHERE native_id = '77'").fetchone()[0])
        second = Viewer(config, corpus).conversation(row, 1, 1)
    samples = read_samples(workspace / "data-lol" / "samples.jsonl")
    made = [s.id for s in samples if s.conversation == "telegram:77"]
    assert made == ["telegram:77#0", "telegram:77#1"]
    assert [s.id for s in second.samples()] == ["telegram:77#1"]

    # So do the user's edits: an edited "lol" that says more is kept, and the first two sessions are one.
    ok(twinlm("edit", mid(workspace, "lol"), "lol, that sounds like a great plan to me"))
    made = [s.id for s in built(workspace) if s.conversation == "telegram:77"]
    page = json.loads(ok(twinlm("show", "telegram:77", "--session", "1", "--json")).stdout)
    assert made == ["telegram:77#0", "telegram:77#1"]
    assert [s["id"] for part in page["sessions"] for s in part["samples"] if s["kept"]] == ["telegram:77#1"]
