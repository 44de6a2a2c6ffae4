"""`twinlm ingest`: read export files, folders and zips into the corpus, in one transaction.

Each file is detected by content and parsed by its source module; what it yields is upserted under
a per-file savepoint. A file that cannot be read is reported with its one-line error and leaves no
trace; the other files still import. A bug (any other exception) rolls back the whole import.

Exports and documents come from different paths. Export paths (files, folders, zips) yield chat
exports only: whatever else they hold (a Telegram HTML export's pages and stylesheets, a ChatGPT zip's
chat.html, the PDF or contact card attached in a WhatsApp media zip, a README, a CSV) is skipped and
named with its reason, never read as training text. Documents come only from the paths given as
documents (`--documents`, `ingest.documents`). A file that looks like a WhatsApp chat but matches no
layout the parser knows is an error, not a skip: its messages would otherwise be lost silently.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from twinlm import sources
from twinlm.collector import collector_paused
from twinlm.corpus.db import SUPERSEDING, Changes, Corpus
from twinlm.corpus.rematch import ChatMatcher
from twinlm.corpus.supersede import Superseding
from twinlm.errors import ExportError
from twinlm.files import remove_leftovers
from twinlm.model import ParseOptions, ParseReport
from twinlm.sources import whatsapp
from twinlm.sources._common import MAX_ZIP_ENTRIES, check_zip_directory, position, read_head, untrack
from twinlm.sources.whatsapp import LOCAL_TIME_NOTE

# Leading bytes of files that are media, never exports: skipped inside zips without unpacking them.
MEDIA_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"OggS", b"ID3", b"\x1aE\xdf\xa3", b"fLaC")
MAX_ZIP_DEPTH = 2
# What a workspace holds of its own: never read as exports when a folder walk passes through it.
WORKSPACE_FILES = ("twin.yaml", "corpus.db", "corpus.db-journal", "corpus.db-wal", "corpus.db-shm")
WORKSPACE_FOLDERS = ("data", "runs", "export", "reports", "models")
SUSPICIOUS_RATIO = 100  # uncompressed/compressed: chat exports compress 5-20x, bombs 1000x and more
ZIP_FLOOR = 2**26  # bytes any archive may unpack to, whatever its size and ratio
# What a folder given as documents is searched for (a file named on its own is read whatever its name).
DOCUMENT_SUFFIXES = (
    ".txt", ".text", ".md", ".markdown", ".mdown", ".mkd", ".mkdn", ".rst", ".org", ".pdf", ".docx",
)  # fmt: skip

# Why a file was left out (the keys of IngestResult.not_exports; each skipped file is named with one).
EMPTY = "empty file"
NOT_AN_EXPORT = "not an export"
MEDIA_IN_ARCHIVE = "media file in archive"
MEDIA = "media file"
DOCUMENT_IN_EXPORT = "document in an export path (to train on it, give it with --documents)"
ATTACHMENT = "file inside an export archive (attachments are not read)"
TELEGRAM_HTML = "Telegram HTML export page (not readable: export the chat as 'Machine-readable JSON')"
HTML_PAGE = "HTML page (HTML exports are not read: use the export's JSON)"
NOT_A_DOCUMENT_TYPE = f"not a document type ({', '.join(DOCUMENT_SUFFIXES)})"
NOT_A_DOCUMENT = "not a readable document (UTF-8 text, PDF or DOCX)"
SYMLINK_OUT = "symbolic link out of the folder given (not followed)"
SYMLINK_BROKEN = "symbolic link that loops or points nowhere"
# The folder zips are unpacked into, next to corpus.db (tempfile adds 8 random characters). A killed
# ingest leaves it; the next ingest removes it (and atomic writes' temporary files) before it starts.
SCRATCH_PREFIX = ".ingest-"
_SCRATCH = re.compile(re.escape(SCRATCH_PREFIX) + r"[a-z0-9_]{8}")
# Said when an export holds stored messages (same source, same native id) with other text: the corpus
# keeps the first import's text (twinlm.corpus.db), so a tampered export cannot rewrite it.
CHANGED_TEXT_NOTE = "messages whose text changed since the last import; kept the stored text"
_TELEGRAM_HTML_MARKS = ('class="page_header"', 'class="history"', "<title>Exported Data</title>")


@dataclass(slots=True)
class FileResult:
    name: str  # as shown to the user: a path, or "archive.zip/member"
    format: str | None = None
    report: ParseReport = field(default_factory=ParseReport)
    changes: Changes = field(default_factory=Changes)
    error: str | None = None


@dataclass(slots=True)
class IngestResult:
    import_id: int
    files: list[FileResult] = field(default_factory=list)
    not_exports: Counter[str] = field(default_factory=Counter)  # reason -> count, e.g. media files
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file as shown, reason), in walk order
    # The zone local-time exports (WhatsApp, Telegram's 2020 schema) were read in, when the user set none.
    assumed_timezone: str | None = None
    # Temporary files and folders a killed ingest left in the workspace, removed before this one started.
    removed_leftovers: list[str] = field(default_factory=list)

    def skip(self, name: str, reason: str) -> None:
        self.not_exports[reason] += 1
        self.skipped.append((name, reason))

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.error]

    def total(self) -> FileResult:
        total = FileResult(name="total")
        for f in self.files:
            total.report.merge(f.report)
            total.changes.add(f.changes)
        return total

    def summary(self) -> dict[str, object]:
        return {
            "import_id": self.import_id,
            "files": [
                {
                    "file": f.name,
                    "format": f.format,
                    "error": f.error,
                    "conversations": f.report.conversations,
                    "messages": f.report.messages,
                    "new_conversations": f.changes.new_conversations,
                    "new_messages": f.changes.new_messages,
                    "updated_messages": f.changes.updated_messages,
                    "skipped": dict(f.report.skipped),
                    "notes": dict(f.report.notes),
                }
                for f in self.files
            ],
            "not_exports": dict(self.not_exports),
            "skipped_files": [{"file": name, "reason": reason} for name, reason in self.skipped],
            "assumed_timezone": self.assumed_timezone,
            "removed_leftovers": self.removed_leftovers,
        }


@dataclass(slots=True)
class _Input:
    path: Path  # where the bytes are (a temporary file for zip members)
    name: str  # what the user sees
    explicit: bool  # named on the command line: an unknown format is an error, not a skip
    document: bool = False  # from a documents path: read as a document (or as the chat export it is)
    in_archive: bool = False  # a member of a zip given as an export


# (file name, messages read so far in it, bytes of it read so far, its size in bytes)
ProgressCallback = Callable[[str, int, int, int], None]


def ingest(
    paths: list[Path],
    corpus: Corpus,
    options: ParseOptions,
    *,
    documents: list[Path] | None = None,
    fmt: str | None = None,
    max_unpacked_bytes: int = 50 * 2**30,
    on_file: Callable[[str], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> IngestResult:
    """Import exports from `paths` (files, folders, zips) and documents from `documents` (files,
    folders) into `corpus`. `fmt` forces the format of every export; "documents" makes `paths`
    document paths. Returns what each file gave and what was skipped, by name."""
    documents = list(documents or [])
    if fmt == "documents":
        paths, documents, fmt = [], [*documents, *paths], None
    for path in [*paths, *documents]:
        if not path.exists():
            raise ExportError(path, "no such file or folder")
    # Ingest allocates millions of short-lived, acyclic objects; the cycle collector would walk them
    # over and over (~9% of ingest time).
    with collector_paused():
        return _ingest(paths, documents, corpus, options, fmt, max_unpacked_bytes, on_file, on_progress)


def _ingest(
    paths: list[Path],
    documents: list[Path],
    corpus: Corpus,
    options: ParseOptions,
    fmt: str | None,
    max_unpacked_bytes: int,
    on_file: Callable[[str], None] | None,
    on_progress: ProgressCallback | None,
) -> IngestResult:
    with corpus.importing([str(p) for p in [*paths, *documents]]) as import_id:
        # Holding the corpus's write lock, so no other ingest runs: what is there is a killed one's.
        leftovers = [p.name for p in remove_leftovers(corpus.path.parent, _SCRATCH)]
        with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=corpus.path.parent) as scratch:
            result = IngestResult(import_id=import_id, removed_leftovers=leftovers)
            inputs = _expand(paths, documents, Path(scratch), max_unpacked_bytes, result, corpus.path.parent)
            matcher, touched = ChatMatcher(corpus), {}
            for item in inputs:
                if on_file:
                    on_file(item.name)
                result.files.append(
                    _ingest_file(item, corpus, import_id, options, fmt, on_progress, result, matcher, touched)
                )
        _superseded(corpus.finish_import(import_id), touched)
        result.files = [f for f in result.files if f.format or f.error]
        if options.timezone is None and any(LOCAL_TIME_NOTE in f.report.notes for f in result.files):
            result.assumed_timezone = machine_timezone()
        corpus.record_summary(import_id, result.summary())
    return result


def _superseded(done: dict[int, Superseding], touched: dict[tuple[str, str], FileResult]) -> None:
    """Count what the newest export of each conversation superseded, on the file that held it."""
    for change in done.values():
        file_result = touched.get((change.source, change.native_id))
        if file_result is None:
            continue
        if change.merged_edits:  # inserted under the edited text's id, then merged into the earlier row
            file_result.changes.new_messages -= change.merged_edits
            file_result.changes.updated_messages += change.merged_edits
        if change.superseded:
            file_result.report.note(
                "messages superseded: no longer in this newer export (kept, not trained; "
                "list: twinlm superseded, undo: twinlm superseded --restore)",
                change.superseded,
            )
        if change.restored:
            file_result.report.note("superseded messages back in this export: trained again", change.restored)
        if change.doubtful:
            file_result.report.note(
                "messages missing from this export but still trained: too many to be deletions "
                "(a different chat taken for this one?)",
                change.doubtful,
            )
        if change.older_export:
            file_result.report.note("conversation older than one already imported: newer export kept")


def _ingest_file(
    item: _Input,
    corpus: Corpus,
    import_id: int,
    options: ParseOptions,
    fmt: str | None,
    on_progress: ProgressCallback | None,
    result: IngestResult,
    matcher: ChatMatcher | None = None,
    touched: dict[tuple[str, str], FileResult] | None = None,
) -> FileResult:
    file_result = FileResult(name=item.name)
    touched = {} if touched is None else touched
    try:
        if item.path.stat().st_size == 0:
            if item.explicit:
                raise ExportError(item.name, "empty file", "byte 0")
            result.skip(item.name, EMPTY)
            return file_result
        file_format = (None if item.document else fmt) or sources.detect(item.path)
        if item.document and file_format is None:
            if item.explicit:
                raise ExportError(item.name, NOT_A_DOCUMENT)
            result.skip(item.name, NOT_A_DOCUMENT)
            return file_result
        if not item.document and not fmt and file_format in (None, "documents"):
            reason = _not_an_export(item)
            if item.explicit:
                raise ExportError(item.name, _EXPLICIT.get(reason, reason))
            result.skip(item.name, reason)
            return file_result
        file_result.format = file_format
        size = item.path.stat().st_size
        untrack()
        done = 0
        with corpus.file_savepoint() as changes:
            parsed = sources.parse(item.path, file_format, options, file_result.report)
            if file_format == "whatsapp" and matcher is not None:
                parsed = matcher.align(item.name, parsed, file_result.report)  # a re-export of a known chat?
            for conversation in parsed:
                corpus.add(conversation, import_id)
                key = (conversation.source, conversation.id)
                earlier = touched.get(key)
                touched[key] = file_result
                if earlier is not None and earlier is not file_result and SUPERSEDING.get(key[0]) == "whole":
                    file_result.report.note(
                        f"conversation also in {earlier.name}: two exports of it in one ingest are both kept "
                        "(ingest the older export, then the newer one, for the newer to win)"
                    )
                if on_progress:
                    done = max(done, position() or 0)  # the last slice may come after the file closed
                    on_progress(item.name, file_result.report.messages, done, size)
        if on_progress:
            on_progress(item.name, file_result.report.messages, size, size)
        file_result.changes = changes
        if changes.kept_texts:
            shown = ", ".join(changes.kept_texts[:5]) + (", ..." if len(changes.kept_texts) > 5 else "")
            file_result.report.note(
                f"{CHANGED_TEXT_NOTE}: {shown}",
                len(changes.kept_texts),
            )
    except ExportError as e:
        # Parsers name the file they were given; show the user's name for it (zip members).
        file_result.error = str(ExportError(item.name, e.message, e.where))
        file_result.report = ParseReport()
    except OSError as e:
        file_result.error = f"{item.name}: cannot read ({e.strerror or e})"
        file_result.report = ParseReport()
    return file_result


_EXPLICIT = {
    DOCUMENT_IN_EXPORT: "a document, not a chat export: to train on it, give it with --documents "
    "(or list it under ingest.documents)",
    NOT_AN_EXPORT: "not a recognised export (ChatGPT, Discord, Telegram, WhatsApp, Messenger/Instagram, "
    "JSONL dataset); documents go with --documents",
    MEDIA: "a media file, not an export",
}


def _not_an_export(item: _Input) -> str:
    """Why a file in an export path that no export parser claimed is left out (ExportError when it
    looks like a WhatsApp chat: an unknown layout must not lose a chat silently)."""
    with open(item.path, "rb") as f:
        magic = f.read(16)
    if magic.startswith(MEDIA_MAGIC) or magic[4:8] == b"ftyp":
        return MEDIA
    head = read_head(item.path, 8192)
    if whatsapp.resembles(head, Path(item.name)):
        first = next((line.strip() for line in head.splitlines() if line.strip()), "")[:60]
        raise ExportError(
            item.name,
            f"looks like a WhatsApp chat, but no line matches a date-and-time layout twinlm reads "
            f"(first line: {first!r}); please report this layout",
        )
    start = head.lstrip()[:200].lower()
    if start.startswith(("<!doctype html", "<html")):
        return TELEGRAM_HTML if any(mark in head for mark in _TELEGRAM_HTML_MARKS) else HTML_PAGE
    if item.in_archive:
        return ATTACHMENT
    # The suffix only words the reason (the format was decided by content): a README or a PDF lying
    # next to the exports is a document to give with --documents; a stylesheet or a CSV is not.
    if Path(item.name).suffix.lower() in DOCUMENT_SUFFIXES and sources.FORMATS["documents"].looks_like(
        head, item.path
    ):
        return DOCUMENT_IN_EXPORT
    return NOT_AN_EXPORT


def machine_timezone() -> str:
    """This machine's time zone, by IANA name where the system says it (TZ, /etc/localtime)."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        return name
    try:
        target = os.path.realpath("/etc/localtime")
    except OSError:
        target = ""
    if "zoneinfo/" in target:
        return target.split("zoneinfo/", 1)[1]
    return datetime.now().astimezone().tzname() or "UTC"


def _expand(
    paths: list[Path],
    documents: list[Path],
    scratch: Path,
    max_unpacked: int,
    result: IngestResult,
    workspace: Path,
) -> Iterator[_Input]:
    """Every file to read, in a stable order: export paths first (folders walked, zips unpacked safely
    into `scratch`), then document paths (folders searched for DOCUMENT_SUFFIXES, zips not opened).

    Hidden files and the workspace's own files (twin.yaml, corpus.db, stage outputs) are passed over,
    and so are files under a documents path met while walking an export folder (they are read once,
    as documents).
    """
    own = {(workspace / name).resolve() for name in WORKSPACE_FILES + WORKSPACE_FOLDERS}
    document_roots = {p.resolve() for p in documents}
    for path in paths:
        for child, explicit in _walk(path, own, result):
            if document_roots and not explicit:
                resolved = child.resolve()
                if resolved in document_roots or document_roots.intersection(resolved.parents):
                    continue
            yield from _maybe_archive(_Input(child, str(child), explicit), scratch, max_unpacked, 0, result)
    for path in documents:
        for child, explicit in _walk(path, own, result):
            if explicit and _is_archive(child):
                error = f"{child}: a zip is not a document; give export archives without --documents"
                result.files.append(FileResult(str(child), error=error))
            elif explicit or child.suffix.lower() in DOCUMENT_SUFFIXES:
                yield _Input(child, str(child), explicit, document=True)
            else:
                result.skip(str(child), NOT_A_DOCUMENT_TYPE)


def _walk(path: Path, own: set[Path], result: IngestResult) -> Iterator[tuple[Path, bool]]:
    """(file, named by the user) for a file, or for each file under a folder, in sorted order.

    Symbolic links are not followed out of the folder (a link to /etc/passwd or to a private file
    elsewhere, in a folder someone shared, is skipped and named); a link to a file inside it is read
    once (not again when its target is walked too), linked folders are not entered (what they hold
    inside the folder is walked where it is), and a link that loops is skipped.
    """
    if not path.is_dir():
        yield path, True
        return
    root = path.resolve()
    files: list[Path] = []
    links: list[Path] = []
    for folder, dirs, names in os.walk(path):  # followlinks=False: a linked folder is not entered
        base = Path(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        links.extend(base / d for d in dirs if (base / d).is_symlink())
        for name in names:
            if not name.startswith("."):
                (links if (base / name).is_symlink() else files).append(base / name)
    read = {f.resolve() for f in files} if links else set()
    for link in links:  # links to folders or files: only inside the folder, each target once
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError):  # RuntimeError: a loop (Python < 3.13)
            result.skip(str(link), SYMLINK_BROKEN)
            continue
        if target != root and root not in target.parents:
            result.skip(str(link), SYMLINK_OUT)
        elif target.is_file() and target not in read:
            read.add(target)
            files.append(link)
    for child in sorted(files):
        if not child.is_file():  # a fifo or device would block or never end
            continue
        resolved = child.resolve()
        if resolved in own or any(parent in own for parent in resolved.parents):
            continue
        yield child, False


@dataclass(slots=True)
class _ZipBudget:
    """What one archive given by the user may unpack, the archives nested in it included: bytes counted as
    they are written (never taken from the headers alone), and entries."""

    name: str  # the archive given, as shown
    limit: int  # bytes it may unpack to in all
    why: str  # what sets the limit, for the error
    bytes_left: int
    entries_left: int = MAX_ZIP_ENTRIES

    @classmethod
    def of(cls, item: _Input, max_unpacked: int) -> _ZipBudget:
        # A small archive cannot take gigabytes: at most SUSPICIOUS_RATIO times its size (plus a floor for
        # tiny exports), and never more than ingest.max_unpacked_gb.
        by_ratio = SUSPICIOUS_RATIO * item.path.stat().st_size + ZIP_FLOOR
        if by_ratio < max_unpacked:
            why = f"{SUSPICIOUS_RATIO} times its size: a likely zip bomb"
        else:
            why = "ingest.max_unpacked_gb"
        limit = min(by_ratio, max_unpacked)
        return cls(item.name, limit, why, bytes_left=limit)

    def refuse(self) -> ExportError:
        return _ZipLimit(
            self.name,
            f"zip would unpack to more than {self._limit_mb()} ({self.why}); unpack it yourself if that is "
            "expected",
        )

    def _limit_mb(self) -> str:
        return f"{self.limit / 2**20:,.0f} MB" if self.limit < 2**30 else f"{self.limit / 2**30:.1f} GB"


class _ZipLimit(ExportError):
    """A zip limit reached inside a nested archive: reported once, on the archive the user gave."""


def _maybe_archive(
    item: _Input,
    scratch: Path,
    max_unpacked: int,
    depth: int,
    result: IngestResult,
    budget: _ZipBudget | None = None,
) -> Iterator[_Input]:
    if not _is_archive(item.path):
        yield item
        return
    if depth >= MAX_ZIP_DEPTH:
        error = f"{item.name}: zip nested too deeply; unpack it first"
        result.files.append(FileResult(item.name, error=error))
        return
    if budget is None:
        budget = _ZipBudget.of(item, max_unpacked)
    try:
        try:
            check_zip_directory(item.path, item.name, budget.entries_left)
        except ExportError as e:
            raise _ZipLimit(budget.name, e.message if not depth else f"{e.message} ({item.name})") from None
        with zipfile.ZipFile(item.path) as archive:
            members, encrypted = _safe_members(archive, item.name, budget)
            if encrypted:
                result.files.append(FileResult(item.name, error=_encrypted(item.name, encrypted)))
            target = scratch / f"{depth}-{len(list(scratch.iterdir()))}" / _archive_stem(item.name)
            for info in members:
                if info.file_size == 0:  # nothing to unpack (100,000 of them would take seconds)
                    result.skip(f"{item.name}/{info.filename}", EMPTY)
                    continue
                with _unpacked(archive, info, target, budget) as member_path:
                    if member_path is None:
                        result.skip(f"{item.name}/{info.filename}", MEDIA_IN_ARCHIVE)
                        continue
                    member = _Input(member_path, f"{item.name}/{info.filename}", False, in_archive=True)
                    yield from _maybe_archive(member, scratch, max_unpacked, depth + 1, result, budget)
    except _ZipLimit as e:
        if depth:
            raise  # the archive given names the error (its budget was spent)
        result.files.append(FileResult(item.name, error=str(ExportError(item.name, e.message, e.where))))
    except ExportError as e:
        result.files.append(FileResult(item.name, error=str(e)))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as e:
        result.files.append(FileResult(item.name, error=f"{item.name}: damaged or unsupported zip ({e})"))


def _encrypted(name: str, members: list[str]) -> str:
    more = f" and {len(members) - 3:,} more" if len(members) > 3 else ""
    some = ", ".join(repr(m) for m in members[:3]) + more
    return (
        f"{name}: encrypted (password-protected) zip: {some} not read; unpack it with its password and "
        "ingest the folder"
    )


def _is_archive(path: Path) -> bool:
    """A zip that is a container of exports (a .docx is a zip too, but it is a document)."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return False
    try:
        check_zip_directory(path, path)
        with zipfile.ZipFile(path) as archive:
            return "word/document.xml" not in archive.namelist()
    except (zipfile.BadZipFile, OSError, ExportError):
        return True  # let the archive reader report the damage with the file's name


def _safe_members(
    archive: zipfile.ZipFile, name: str, budget: _ZipBudget
) -> tuple[list[zipfile.ZipInfo], list[str]]:
    """(members to unpack, encrypted members' names), after refusing path traversal and zip bombs by what
    the directory declares (before any write: zipfile reads no more than a member's declared size; the
    bytes are counted again as they are written)."""
    members, encrypted, total = [], [], 0
    infos = archive.infolist()
    budget.entries_left -= len(infos)
    if budget.entries_left < 0:
        raise _ZipLimit(budget.name, f"zips inside it hold more than {MAX_ZIP_ENTRIES:,} entries in all")
    for info in infos:
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if info.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise ExportError(name, f"unsafe path {info.filename!r} in zip; refusing to unpack it")
        if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if info.flag_bits & 0x1:  # zipfile would raise RuntimeError (a password is needed) on open
            encrypted.append(info.filename)
            continue
        total += info.file_size
        if total > budget.bytes_left:
            raise budget.refuse()
        ratio = info.file_size // max(info.compress_size, 1)
        if info.file_size > ZIP_FLOOR and ratio > SUSPICIOUS_RATIO:
            raise _ZipLimit(name, f"{info.filename!r} compresses {ratio}x: refusing a likely zip bomb")
        members.append(info)
    return sorted(members, key=lambda i: i.filename), encrypted


def _archive_stem(name: str) -> str:
    # The folder a member is unpacked into carries the archive's name: WhatsApp's `_chat.txt`
    # takes its chat name from it ("WhatsApp Chat - Alice.zip").
    stem = PurePosixPath(name.replace("\\", "/")).name
    return stem[:-4] if stem.lower().endswith(".zip") else stem


@contextmanager
def _unpacked(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: _ZipBudget
) -> Iterator[Path | None]:
    """Unpack one member to a temporary file (deleted after use); None for media files. The bytes written
    are counted against `budget` and the member's own compression ratio as they come."""
    with archive.open(info) as src:
        head = src.read(16)
        if head.startswith(MEDIA_MAGIC) or head[4:8] == b"ftyp":
            yield None
            return
        out = target.joinpath(*PurePosixPath(info.filename).parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        most = SUSPICIOUS_RATIO * max(info.compress_size, 1)
        written = 0
        try:
            with open(out, "wb") as dst:
                chunk = head
                while chunk:
                    written += len(chunk)
                    budget.bytes_left -= len(chunk)
                    if budget.bytes_left < 0:
                        raise budget.refuse()
                    if written > ZIP_FLOOR and written > most:
                        raise _ZipLimit(
                            budget.name,
                            f"{info.filename!r} unpacks to more than {SUSPICIOUS_RATIO}x its compressed "
                            "size: refusing a likely zip bomb",
                        )
                    dst.write(chunk)
                    chunk = src.read(1 << 20)  # zipfile stops at the declared size and checks the CRC
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    try:
        yield out
    finally:
        out.unlink(missing_ok=True)
