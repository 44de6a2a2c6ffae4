"""Hostile input to `twinlm ingest` (issue 16 point 4): symbolic links out of the folder given, encrypted
zips, zip and nested-zip bombs, deeply nested JSON, a DOCX bomb and over-long lines. Each hostile file is
refused with one line naming it, the other files still import, and the corpus is otherwise unchanged.

The fixtures are made here, small on disk (sparse files, highly compressible members). Memory is measured
in a child process (its peak RSS); time is not asserted (the child only has a generous hang guard).
"""

from __future__ import annotations

from pathlib import Path

from twinlm.corpus.db import Corpus
from twinlm.ingest import SYMLINK_BROKEN, SYMLINK_OUT, ingest
from twinlm.model import ParseOptions

from testdata import EXAMPLES

OPTIONS = ParseOptions(timezone="UTC")
TELEGRAM = EXAMPLES / "telegram" / "result.json"
WHATSAPP = EXAMPLES / "whatsapp" / "WhatsApp Chat with Mom.txt"


def counts(corpus: Corpus) -> tuple[int, int]:
    return corpus.count("conversations"), corpus.count("messages")


# --- symbolic links -------------------------------------------------------------------------------------


def test_symlinks_out_of_the_folder_are_skipped_with_a_note(tmp_path: Path) -> None:
    folder, outside = tmp_path / "in", tmp_path / "outside"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.json").write_bytes(TELEGRAM.read_bytes())
    (outside / "notes.txt").write_text("my bank pin is 1234\n" * 20)
    (folder / "WhatsApp Chat with Mom.txt").write_bytes(WHATSAPP.read_bytes())
    (folder / "secret.json").symlink_to(outside / "secret.json")
    (folder / "passwd.txt").symlink_to("/etc/passwd")
    (folder / "notes.txt").symlink_to(outside / "notes.txt")
    (folder / "outdir").symlink_to(outside, target_is_directory=True)
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)  # a cycle
    (folder / "self.json").symlink_to(folder / "self.json")  # a link to itself
    (folder / "again.txt").symlink_to(folder / "WhatsApp Chat with Mom.txt")  # inside: read once

    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([folder], corpus, OPTIONS)
        assert not result.failed
        assert [f.format for f in result.files] == ["whatsapp"]
        skipped = dict(result.skipped)
        for name in ("secret.json", "passwd.txt", "outdir"):
            assert skipped[str(folder / name)] == SYMLINK_OUT
        assert skipped[str(folder / "self.json")] == SYMLINK_BROKEN
        assert counts(corpus)[0] == 1

        # The same folder given as documents: the linked text outside is not read as a document.
        result = ingest([], corpus, OPTIONS, documents=[folder])
        assert not any("notes" in f.name or "passwd" in f.name for f in result.files)
        assert dict(result.skipped)[str(folder / "notes.txt")] == SYMLINK_OUT
        text = "\n".join(row[0] for row in corpus.db.execute("SELECT text FROM messages"))
        assert "bank pin" not in text and "root:" not in text
