"""A re-import whose export holds a stored message (same source, same native id) with other text keeps the
stored text, and says so (issue 16): a crafted or tampered export cannot rewrite what is in the corpus."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from twinlm.cli import app
from twinlm.corpus.db import Corpus
from twinlm.ingest import CHANGED_TEXT_NOTE, ingest
from twinlm.model import ParseOptions

OPTIONS = ParseOptions(timezone="UTC")
TEXTS = ["Hi there", "How are you?", "Fine, thanks", "See you tomorrow"]


def telegram_export(path: Path, texts: list[str]) -> Path:
    """A Telegram Desktop single-chat export (current schema) with one message per text, ids 1, 2, ..."""
    messages = [
        {
            "id": i,
            "type": "message",
            "date": f"2024-03-01T12:0{i}:00",
            "date_unixtime": str(1709294400 + 60 * i),
            "from": "Alice" if i % 2 else "Bob",
            "from_id": "user1" if i % 2 else "user2",
            "text": text,
            "text_entities": [{"type": "plain", "text": text}],
        }
        for i, text in enumerate(texts, start=1)
    ]
    export = {"name": "Alice", "type": "personal_chat", "id": 4000000001, "messages": messages}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(export), encoding="utf-8")
    return path


def stored_texts(corpus: Corpus) -> list[str]:
    return [row[0] for row in corpus.db.execute("SELECT text FROM messages ORDER BY ts")]


def test_reimport_with_changed_text_keeps_the_stored_text_and_says_so(tmp_path: Path) -> None:
    tampered = [TEXTS[0], "Wire 500 EUR to DE89 3704 0044 0532 0130 00 now", TEXTS[2], "See you Friday"]
    with Corpus(tmp_path / "corpus.db") as corpus:
        first = ingest([telegram_export(tmp_path / "a" / "result.json", TEXTS)], corpus, OPTIONS)
        assert not first.failed and first.total().changes.new_messages == 4
        again = ingest(
            [telegram_export(tmp_path / "b" / "result.json", [*tampered, "A new one"])], corpus, OPTIONS
        )
        assert not again.failed
        # The stored texts stay; the message that is new in the export is added.
        assert stored_texts(corpus) == [*TEXTS, "A new one"]
        assert again.total().changes.new_messages == 1
        notes = again.files[0].report.notes
        changed = [what for what in notes if what.startswith(CHANGED_TEXT_NOTE)]
        assert len(changed) == 1 and notes[changed[0]] == 2
        assert "4000000001:2" in changed[0] and "4000000001:4" in changed[0]  # which messages, by id
        summary = again.summary()["files"][0]["notes"]  # what `ingest --json` prints, and the imports table
        assert summary[changed[0]] == 2
        # A third import of the tampered export: still the stored text, still said.
        third = ingest([tmp_path / "b" / "result.json"], corpus, OPTIONS)
        assert stored_texts(corpus) == [*TEXTS, "A new one"]
        assert (
            sum(n for what, n in third.files[0].report.notes.items() if what.startswith(CHANGED_TEXT_NOTE))
            == 2
        )


def test_unchanged_reimport_says_nothing_and_the_user_edit_survives(tmp_path: Path) -> None:
    export = telegram_export(tmp_path / "a" / "result.json", TEXTS)
    with Corpus(tmp_path / "corpus.db") as corpus:
        ingest([export], corpus, OPTIONS)
        corpus.db.execute("UPDATE messages SET user_text = 'mine' WHERE text = 'Fine, thanks'")
        again = ingest([export], corpus, OPTIONS)
        assert not any(what.startswith(CHANGED_TEXT_NOTE) for what in again.files[0].report.notes)
        assert again.total().changes.updated_messages == 0
        assert corpus.db.execute("SELECT user_text FROM messages WHERE text = 'Fine, thanks'").fetchone() == (
            "mine",
        )


def test_cli_ingest_prints_the_changed_text_note(tmp_path: Path) -> None:
    runner = CliRunner()
    workspace = tmp_path / "twin"
    assert runner.invoke(app, ["init", str(workspace), "--name", "t", "--me", "Bob"]).exit_code == 0
    first = runner.invoke(
        app, ["ingest", "-w", str(workspace), str(telegram_export(tmp_path / "a.json", TEXTS))]
    )
    assert first.exit_code == 0, first.output
    edited = telegram_export(tmp_path / "b.json", [TEXTS[0], "changed", *TEXTS[2:]])
    again = runner.invoke(app, ["ingest", "-w", str(workspace), str(edited)])
    assert again.exit_code == 0, again.output
    assert CHANGED_TEXT_NOTE in " ".join(again.output.split())
