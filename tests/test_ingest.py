from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from twinlm.corpus.db import Corpus
from twinlm.errors import ExportError
from twinlm.ingest import ingest
from twinlm.model import ParseOptions

from testdata import DOCUMENTS, EXAMPLES

OPTIONS = ParseOptions(timezone="UTC")
CHATGPT = EXAMPLES / "chatgpt" / "conversations.json"
WHATSAPP = EXAMPLES / "whatsapp" / "WhatsApp Chat with Mom.txt"


def rows(corpus: Corpus) -> list[tuple]:
    return corpus.db.execute(
        "SELECT source, native_id, author_name, ts, text FROM messages ORDER BY source, native_id"
    ).fetchall()


def test_examples_ingest_every_format_and_reingest_adds_nothing(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        first = ingest([EXAMPLES], corpus, OPTIONS, documents=[DOCUMENTS])
        assert not first.failed
        assert {f.format for f in first.files} == {
            "chatgpt",
            "discord",
            "telegram",
            "whatsapp",
            "messenger",
            "documents",
        }
        assert first.total().changes.new_messages == corpus.count("messages") > 40
        before = rows(corpus)
        again = ingest([EXAMPLES], corpus, OPTIONS, documents=[DOCUMENTS])
        total = again.total().changes
        assert (total.new_messages, total.new_conversations, total.updated_messages) == (0, 0, 0)
        assert rows(corpus) == before
        # System and service texts never arrive as messages.
        texts = " ".join(r[4] for r in before)
        for leaked in ("end-to-end encrypted", "Pinned a message", "phone_call", "reached level"):
            assert leaked not in texts


def test_newer_export_adds_only_new_messages(tmp_path: Path) -> None:
    old = tmp_path / "WhatsApp Chat with Mom.txt"
    lines = WHATSAPP.read_text(encoding="utf-8").splitlines(keepends=True)
    old.write_text("".join(lines[:5]), encoding="utf-8")
    with Corpus(tmp_path / "corpus.db") as corpus:
        assert ingest([old], corpus, OPTIONS).total().changes.new_messages == 4
        shutil.copy(WHATSAPP, old)  # next month's export: the full history again, plus more
        newer = ingest([old], corpus, OPTIONS).total().changes
        assert newer.new_messages == corpus.count("messages") - 4 > 0
        assert newer.updated_messages <= 1  # the last old message gained a continuation line at most


def test_zip_export_is_read_and_media_skipped(tmp_path: Path) -> None:
    archive = tmp_path / "chatgpt-export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(CHATGPT, "conversations.json")
        z.writestr("file-abc.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
        z.writestr("__MACOSX/._conversations.json", b"junk")
    whatsapp_zip = tmp_path / "WhatsApp Chat - Mom.zip"
    with zipfile.ZipFile(whatsapp_zip, "w") as z:
        z.write(WHATSAPP, "_chat.txt")
        z.writestr("IMG-20240612-WA0001.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 100)
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([archive, whatsapp_zip], corpus, OPTIONS)
        assert not result.failed
        assert [(f.name, f.format) for f in result.files] == [
            (f"{archive}/conversations.json", "chatgpt"),
            (f"{whatsapp_zip}/_chat.txt", "whatsapp"),
        ]
        assert result.not_exports["media file in archive"] == 2
        query = "SELECT title FROM conversations WHERE source = 'whatsapp'"
        titles = {r[0] for r in corpus.db.execute(query)}
        assert titles == {"Mom"}  # `_chat.txt` is named after its archive
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ingest")] == []  # scratch removed


def test_zip_with_escaping_path_is_refused_and_others_still_import(tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.write(CHATGPT, "conversations.json")
        z.writestr("../../outside.txt", "12/06/2024, 19:02 - Mom: hi\n")
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([evil, WHATSAPP], corpus, OPTIONS)
        assert [f.error for f in result.failed] == [
            f"{evil}: unsafe path '../../outside.txt' in zip; refusing to unpack it"
        ]
        assert corpus.db.execute("SELECT DISTINCT source FROM messages").fetchall() == [("whatsapp",)]
    assert not (tmp_path.parent / "outside.txt").exists()


def test_zip_bombs_are_refused_before_unpacking(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("conversations.json", b"\0" * (70 * 2**20))
    with Corpus(tmp_path / "corpus.db") as corpus:
        (failed,) = ingest([bomb], corpus, OPTIONS).failed
        assert "refusing a likely zip bomb" in (failed.error or "")
        small_limit = ingest([bomb], corpus, OPTIONS, max_unpacked_bytes=2**20).failed
        assert "ingest.max_unpacked_gb" in (small_limit[0].error or "")
        assert corpus.count("messages") == 0


def test_bad_files_get_one_line_errors_and_leave_no_trace(tmp_path: Path) -> None:
    truncated = tmp_path / "conversations.json"
    truncated.write_bytes(CHATGPT.read_bytes()[:3000])
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    unknown = tmp_path / "data.json"
    unknown.write_text('{"hello": "world"}')
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([truncated, empty, unknown, WHATSAPP], corpus, OPTIONS)
        errors = {Path(f.name).name: f.error or "" for f in result.failed}
        assert set(errors) == {"conversations.json", "empty.json", "data.json"}
        assert errors["conversations.json"].startswith(f"{truncated}:byte ")
        assert "not a recognised export" in errors["data.json"]
        assert all("\n" not in e for e in errors.values())
        # The truncated file yielded conversations before failing: none of them stayed.
        assert corpus.db.execute("SELECT DISTINCT source FROM messages").fetchall() == [("whatsapp",)]
        summary = corpus.db.execute("SELECT summary FROM imports").fetchone()[0]
        assert "conversations.json" in summary


def test_unknown_files_inside_folders_are_counted_not_errors(tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    shutil.copy(WHATSAPP, folder)
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([folder], corpus, OPTIONS)
        assert not result.failed
        assert result.not_exports == {"media file": 1}
        assert result.skipped == [(str(folder / "photo.jpg"), "media file")]
        assert [f.format for f in result.files] == ["whatsapp"]


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus, pytest.raises(ExportError, match="no such file"):
        ingest([tmp_path / "nope.json"], corpus, OPTIONS)


def test_progress_follows_bytes_read_in_large_files(tmp_path: Path) -> None:
    chat = tmp_path / "WhatsApp Chat with Mom.txt"
    chat.write_text("".join(f"12/06/2024, 19:{i % 60:02d} - Mom: message {i}\n" for i in range(12_000)))
    telegram = tmp_path / "result.json"
    messages = [
        {
            "id": i,
            "type": "message",
            "date_unixtime": str(1_700_000_000 + i),
            "from": "Jo",
            "from_id": "user1",
            "text": f"message {i}",
        }
        for i in range(40_000)
    ]
    telegram.write_text(
        json.dumps({"name": "Jo", "type": "personal_chat", "id": 1, "messages": messages}, indent=1)
    )
    for path in (chat, telegram):
        calls: list[tuple[int, int, int]] = []

        def record(_: str, n: int, done: int, size: int, calls: list = calls) -> None:
            calls.append((n, done, size))

        with Corpus(tmp_path / f"{path.stem}.db") as corpus:
            ingest([path], corpus, OPTIONS, on_progress=record)
        size = path.stat().st_size
        assert calls[-1] == (12_000 if path == chat else 40_000, size, size)
        positions = [done for _, done, _ in calls]
        assert positions == sorted(positions)
        assert 0 < positions[0] < size  # updates arrive while the file is being read, not only at the end


def test_walking_the_workspace_skips_its_own_files(tmp_path: Path) -> None:
    from twinlm.config import TwinConfig
    from twinlm.workspace import init_workspace

    ws = tmp_path / "twin"
    init_workspace(ws, TwinConfig())
    (ws / "exports").mkdir()
    shutil.copy(WHATSAPP, ws / "exports")
    (ws / "reports" / "notes.md").write_text("# a report the pipeline wrote\n")
    with Corpus(ws / "corpus.db") as corpus:
        result = ingest([ws], corpus, OPTIONS)
        assert [(Path(f.name).name, f.format) for f in result.files] == [(WHATSAPP.name, "whatsapp")]
        assert not result.not_exports
