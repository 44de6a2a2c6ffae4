"""Hostile input to `twinlm ingest` (issue 16 point 4): symbolic links out of the folder given, encrypted
zips, zip and nested-zip bombs, deeply nested JSON, a DOCX bomb and over-long lines. Each hostile file is
refused with one line naming it, the other files still import, and the corpus is otherwise unchanged.

The fixtures are made here, small on disk (sparse files, highly compressible members). Memory is measured
in a child process (its peak RSS); time is not asserted (the child only has a generous hang guard).
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import resource
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

import twinlm
from twinlm.corpus.db import Corpus
from twinlm.errors import ExportError
from twinlm.ingest import SYMLINK_BROKEN, SYMLINK_OUT, ingest
from twinlm.model import ParseOptions
from twinlm.sources._common import bounded_lines

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


# --- zips: hand-made, so that members can be declared huge, flagged encrypted, or many -----------------


@dataclass
class Entry:
    name: str
    raw: bytes  # the bytes as stored
    crc: int
    size: int  # uncompressed
    method: int = zipfile.ZIP_DEFLATED
    flags: int = 0  # bit 0: encrypted


def stored(name: str, data: bytes, flags: int = 0) -> Entry:
    return Entry(name, data, zlib.crc32(data), len(data), zipfile.ZIP_STORED, flags)


def zeros(name: str, size: int) -> Entry:
    """`size` zero bytes, deflated (a 48 MiB member is ~47 KB)."""
    return Entry(name, *_deflated_zeros(size), size)


@functools.cache
def _deflated_zeros(size: int) -> tuple[bytes, int]:
    packer = zlib.compressobj(1, zlib.DEFLATED, -15)
    mib, parts, crc = bytes(1 << 20), [], 0
    for _ in range(size >> 20):
        parts.append(packer.compress(mib))
        crc = zlib.crc32(mib, crc)
    parts.append(packer.flush())
    return b"".join(parts), crc


def zip_bytes(entries: list[Entry]) -> bytes:
    """A zip of `entries` as given (zipfile cannot write encrypted members or reuse deflated bytes)."""
    out, directory = bytearray(), bytearray()
    for e in entries:
        name = e.name.encode()
        head = (e.flags, e.method, 0, 0x21, e.crc, len(e.raw), e.size, len(name))
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, *head, 0, 0, 0, 0, 0, len(out))
        directory += name
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, *head, 0) + name + e.raw
    start, n = len(out), len(entries)
    out += directory
    if n > 0xFFFF:  # zip64 end record and locator
        end64 = len(out)
        out += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(directory), start)
        out += struct.pack("<4sLQL", b"PK\x06\x07", 0, end64, 1)
    count = min(n, 0xFFFF)
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), start, 0)
    return bytes(out)


def test_zip_bytes_is_a_valid_zip(tmp_path: Path) -> None:
    path = tmp_path / "t.zip"
    path.write_bytes(zip_bytes([stored("a.txt", b"hello"), zeros("z.bin", 2 << 20)]))
    with zipfile.ZipFile(path) as z:
        assert z.read("a.txt") == b"hello" and z.read("z.bin") == bytes(2 << 20) and z.testzip() is None


def test_encrypted_zip_is_one_error_line_and_the_other_files_import(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    chat = WHATSAPP.read_bytes()
    (folder / "locked.zip").write_bytes(
        zip_bytes([stored("WhatsApp Chat with Mom.txt", chat, flags=1), stored("b.txt", b"x", flags=1)])
    )
    (folder / "half.zip").write_bytes(
        zip_bytes([stored("WhatsApp Chat with Mom.txt", chat), stored("secret/_chat.txt", chat, flags=1)])
    )
    (folder / "result.json").write_bytes(TELEGRAM.read_bytes())
    with Corpus(tmp_path / "corpus.db") as corpus:
        result = ingest([folder], corpus, OPTIONS)
        errors = [f.error or "" for f in result.failed]
        assert len(errors) == 2 and all("\n" not in e and "encrypted" in e for e in errors)
        assert errors[0].startswith(f"{folder / 'half.zip'}:") and "'secret/_chat.txt'" in errors[0]
        assert errors[1].startswith(f"{folder / 'locked.zip'}:")
        assert sorted(f.format for f in result.files if not f.error) == ["telegram", "whatsapp"]
        assert counts(corpus)[0] == 2


# --- every hostile file at once, in a child process whose memory is measured ---------------------------

CHILD = """
import json, resource, sys
from pathlib import Path
from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions

db, paths, documents = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
with Corpus(Path(db)) as corpus:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = ingest([Path(p) for p in paths], corpus, ParseOptions(timezone="UTC"),
                    documents=[Path(p) for p in documents])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
files = [[f.name, f.format, f.error] for f in result.files]
print(json.dumps({"files": files, "skipped": result.skipped, "grew_mb": (peak - before) / 1024}))
"""


def limit_memory() -> None:
    # Beyond the 500 MB asserted: a regression fails the test instead of taking the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def ingest_in_child(db: Path, paths: list[Path], documents: list[Path]) -> dict:
    root = Path(twinlm.__file__).parent.parent
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(db),
            json.dumps([str(p) for p in paths]),
            json.dumps([str(p) for p in documents]),
        ],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard only: no timing is asserted
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        preexec_fn=limit_memory,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def sparse_long_line(path: Path, lines: bytes, start: bytes, size: int = 1 << 30) -> Path:
    """`lines`, then one line of `size` bytes (`start` and zeros: a sparse file, nothing written)."""
    with open(path, "wb") as f:
        f.write(lines + start)
        f.seek(len(lines) + size)
        f.write(b"\n")
    return path


def docx_bomb(path: Path, xml_bytes: int = 32 << 20) -> Path:
    import docx

    document = docx.Document()
    document.add_paragraph("hello")
    document.save(str(path))
    with zipfile.ZipFile(path) as z:
        parts = {name: z.read(name) for name in z.namelist()}
    body = parts["word/document.xml"]
    at = body.index(b"<w:body>") + len(b"<w:body>")
    paragraph = b"<w:p><w:r><w:t>x</w:t></w:r></w:p>"
    parts["word/document.xml"] = body[:at] + paragraph * (xml_bytes // len(paragraph)) + body[at:]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in parts.items():
            z.writestr(name, data)
    return path


def test_hostile_files_are_refused_with_one_line_in_bounded_memory(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    # One member declared 256 MiB of zeros (1000x).
    (hostile / "bomb.zip").write_bytes(zip_bytes([zeros("result.json", 256 << 20)]))
    # 12 members of 48 MiB (each under the per-member floor): 576 MiB from 0.6 MB.
    (hostile / "spread.zip").write_bytes(zip_bytes([zeros(f"{i}.json", 48 << 20) for i in range(12)]))
    # Zips in a zip: 6 x 96 MiB, counted against the outer archive's limit.
    inner = zip_bytes([zeros("a.json", 48 << 20), zeros("b.json", 48 << 20)])
    (hostile / "nested.zip").write_bytes(zip_bytes([stored(f"inner{i}.zip", inner) for i in range(6)]))
    # Entries: two zips of 60,000 empty members inside one (each fine alone, 120,002 together; the
    # empty members are not unpacked).
    many = zip_bytes([stored(f"{i}", b"") for i in range(60_000)])
    (hostile / "entries.zip").write_bytes(zip_bytes([stored("a.zip", many), stored("b.zip", many)]))
    # "[0,[0,[0,..." 400,000 deep in a Messenger export (no run of brackets for the old guard to see).
    (hostile / "inbox").mkdir()
    messenger = b'{"participants": [{"name": "A"}], "messages": [{"sender_name": "A", "content": "hi", "x": '
    (hostile / "inbox" / "message_1.json").write_bytes(messenger + b"[0," * 400_000)
    telegram = (
        b'{"name": "x", "type": "personal_chat", "id": 1, "messages": [{"id": 1, "type": "message", "text": '
    )
    (hostile / "result.json").write_bytes(telegram + b"[0," * 400_000)
    chatgpt = (
        b'[{"title": "t", "create_time": 1700000000, "mapping": {"a": {"id": "a", "message": {"id": "a", '
        b'"author": {"role": "user"}, "content": {"content_type": "text", "parts": ['
    )
    (hostile / "conversations.json").write_bytes(chatgpt + b'{"a":' * 400_000)
    # 1 GiB lines after a valid start, in a WhatsApp chat and a JSONL dataset (sparse files).
    chat = b"".join(b"[01/03/2024, 10:%02d:00] Eve: hello number %d\n" % (i % 60, i) for i in range(2000))
    sparse_long_line(hostile / "WhatsApp Chat with Eve.txt", chat, b"[01/03/2024, 11:00:00] Eve: ")
    sample = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    sparse_long_line(hostile / "data.jsonl", sample * 1000, b'{"messages": [{"role": "user", "content": "')
    # A DOCX whose body inflates 250x (32 MiB of paragraphs: 645 MB and 80 s in python-docx).
    documents = tmp_path / "documents"
    documents.mkdir()
    docx_bomb(documents / "bomb.docx")
    names = [*sorted(str(p) for p in hostile.rglob("*") if p.is_file()), str(documents / "bomb.docx")]

    db = tmp_path / "corpus.db"
    with Corpus(db) as corpus:
        assert not ingest([TELEGRAM], corpus, OPTIONS).failed
        before = counts(corpus)
    shown = ingest_in_child(db, [hostile], [documents])
    errors = {name: error for name, _, error in shown["files"] if error}
    assert sorted(errors) == sorted(names), errors
    for name, error in errors.items():
        assert error.startswith(f"{name}:") and "\n" not in error
    assert "bomb" in errors[str(hostile / "bomb.zip")]
    assert "zip would unpack to more than" in errors[str(hostile / "spread.zip")]
    assert "zip would unpack to more than" in errors[str(hostile / "nested.zip")]
    assert "entries" in errors[str(hostile / "entries.zip")]
    for deep in ("inbox/message_1.json", "result.json", "conversations.json"):
        assert "nested too deeply" in errors[str(hostile / deep)]
    assert "a line longer than" in errors[str(hostile / "WhatsApp Chat with Eve.txt")]
    assert "a line longer than" in errors[str(hostile / "data.jsonl")]
    assert "zip bomb" in errors[str(documents / "bomb.docx")]
    assert shown["grew_mb"] < 500
    with Corpus(db) as corpus:
        assert counts(corpus) == before
    assert not list(tmp_path.glob(".ingest-*"))  # nothing unpacked is left


@pytest.mark.parametrize("seed", range(3))
def test_bounded_lines_are_the_file_lines(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        parts = [rng.choice([b"a", b"b\r", b"\rab"]) * rng.choice([0, 1, 5, 30_000]) for _ in range(6)]
        data = b"\n".join(parts) + rng.choice([b"", b"\n"])
        want = [line.removesuffix(b"\n") for line in io.BytesIO(data)]
        assert list(bounded_lines(Path("f"), io.BytesIO(data), 1 << 20, "x")) == want
    with pytest.raises(ExportError, match=r"^f:byte 3: a line longer than 1 MB: not a chat$"):
        list(bounded_lines(Path("f"), io.BytesIO(b"ok\n" + b"x" * (3 << 20)), 1 << 20, "a chat"))
