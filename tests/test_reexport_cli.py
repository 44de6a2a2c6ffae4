"""`twinlm join-chats` after an unsure WhatsApp match, `twinlm superseded` (list, --restore), and the
schema 1 -> 2 migration that re-keys WhatsApp and Messenger rows of an old corpus (issue 9)."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

from test_reexport import CHAT, OPTIONS, OTHER_CHAT, android, write
from typer.testing import CliRunner

from twinlm.cli import app
from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout + result.stderr


def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "twin"
    assert run("init", str(ws), "--name", "alex", "--me", "Alice")[0] == 0
    config = ws / "twin.yaml"
    config.write_text(config.read_text().replace("timezone: null", "timezone: Europe/Berlin"))
    return ws


def test_unsure_match_then_merge(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    first = write(tmp_path / "a" / "WhatsApp Chat with Alice.txt", android(CHAT[:2]))
    later = write(tmp_path / "b" / "WhatsApp Chat with Alice.txt", android(CHAT[1:2] + OTHER_CHAT[1:]))
    assert run("ingest", "-w", str(ws), str(first))[0] == 0
    code, out = run("ingest", "-w", str(ws), str(later), "--json")
    assert code == 0
    notes = [n for f in json.loads(out)["files"] for n in f["notes"]]
    unsure = [n for n in notes if "may be the same chat" in n]
    (command,) = [re.search(r"twinlm join-chats (\S+) (\S+)", n) for n in unsure]
    assert command is not None
    code, out = run("join-chats", command[1], command[2], "-w", str(ws))
    assert code == 0, out
    assert "2 message(s) moved, 1 copies dropped" in out
    with Corpus(ws / "corpus.db") as corpus:
        assert corpus.count("conversations") == 1 and corpus.count("messages") == 4
        # Merged for good: the same export again adds nothing.
        assert ingest([later], corpus, OPTIONS).total().changes.new_messages == 0
    code, out = run("join-chats", command[1], command[2], "-w", str(ws))
    assert code == 1 and "no conversation" in out


def test_superseded_list_and_restore(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    assert (
        run(
            "ingest",
            "-w",
            str(ws),
            str(write(tmp_path / "a" / "WhatsApp Chat with Alice.txt", android(CHAT))),
        )[0]
        == 0
    )
    deleted = [(w, a, "This message was deleted" if t == "See you thre" else t) for w, a, t in CHAT]
    code, out = run(
        "ingest", "-w", str(ws), str(write(tmp_path / "b" / "WhatsApp Chat with Alice.txt", android(deleted)))
    )
    assert code == 0 and "messages superseded" in out
    code, out = run("superseded", "-w", str(ws), "--json")
    assert [(r["text"], r["import"]) for r in json.loads(out)] == [("See you thre", 2)]
    code, out = run("superseded", "-w", str(ws), "--restore", "--import", "2")
    assert code == 0 and "1 message(s) restored" in out
    assert json.loads(run("superseded", "-w", str(ws), "--json")[1]) == []


def test_schema_1_corpus_is_migrated_and_its_next_export_matches(tmp_path: Path) -> None:
    db = tmp_path / "corpus.db"
    export = write(tmp_path / "a" / "WhatsApp Chat with Alice.txt", android(CHAT))
    tiny = write(tmp_path / "a" / "WhatsApp Chat with Dan.txt", android(OTHER_CHAT[1:]))  # 2 messages
    thread = write(
        tmp_path / "m" / "message_1.json",
        json.dumps(
            {
                "participants": [{"name": "Alice"}, {"name": "Sam"}],
                "messages": [
                    {"sender_name": "Sam", "timestamp_ms": 1_700_000_005_000, "content": "ok"},
                    {"sender_name": "Alice", "timestamp_ms": 1_700_000_000_000, "content": "hi"},
                ],
                "title": "Sam",
                "thread_path": "inbox/sam_1",
            }
        ),
    )
    with Corpus(db) as corpus:
        ingest([export, tiny, thread], corpus, OPTIONS)
    # What a schema 1 corpus looked like: other ids (name and local time in them), no new columns.
    raw = sqlite3.connect(db)
    raw.execute("UPDATE messages SET native_id = 'old-' || id")
    raw.execute("UPDATE conversations SET native_id = title WHERE source = 'whatsapp'")
    raw.execute("UPDATE messages SET excluded = 1 WHERE text = 'ok' AND source = 'messenger'")
    raw.execute("DROP INDEX messages_whatsapp_ts")
    for table, column in (("messages", "superseded_by_import"), ("conversations", "export_lo"),
                          ("conversations", "export_hi")):  # fmt: skip
        raw.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    raw.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with Corpus(db) as corpus:
        version = corpus.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == ("2",)
        again = ingest([export, tiny, thread], corpus, OPTIONS)
        assert again.total().changes.new_messages == 0
        assert corpus.count("conversations") == 3
        assert corpus.db.execute("SELECT count(*) FROM messages WHERE excluded").fetchone() == (1,)
        assert corpus.db.execute("SELECT count(*) FROM messages WHERE superseded_by_import").fetchone() == (
            0,
        )
