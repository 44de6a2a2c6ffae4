"""Documents: `.txt`, `.md`, `.pdf` and `.docx` files, one record per file (the catch-all format).

Ingest reads documents only from the paths the user gives as documents (`--documents`,
`ingest.documents`), never from inside an export folder or zip (see twinlm/ingest.py).

Each file becomes one `Conversation` of kind "document" holding ONE `Message` of `Kind.DOCUMENT` with
the whole text; chunking happens at build time. Decisions:

- Detection is by content: PDF by its `%PDF-` magic, DOCX as a zip holding `word/document.xml`, text
  when the first 64 KiB are strict UTF-8, free of NUL bytes, mostly printable, not blank and not
  JSON. A file that starts with `{` or `[` is left alone when it reads as JSON (a JSON export nobody
  claimed is an unknown format, not a document); Markdown that merely starts with a bracket
  (`[![badge](...)]`, `[TOC]`) is still a document. An empty file is not claimed (an unrecognised
  export); parsed as a document on request it is skipped as "empty document".
- id: `stable_id` of the normalised text, so the same text ingested twice, from any folder or under
  any name, adds nothing. The message id is `<id>:0`.
- Author: always "document" (id and name). Metadata authors are mostly tool defaults ("python-docx",
  "Microsoft Office User") and would pollute the speaker list; a PDF/DOCX metadata author, when
  present, is kept in `participants` instead.
- Timestamp: the PDF/DOCX creation date when present and readable (a PDF date without a UTC offset
  is read in `options.timezone`), else the file's mtime, in UTC. python-docx's template default
  (author "python-docx", created 2013-12-23 23:15 UTC) counts as absent.
- Text: line endings normalised to "\\n", a UTF-8 BOM stripped, otherwise raw. PDF pages are joined
  with a blank line; DOCX body paragraphs and tables in document order (a table row is its cells
  joined by a tab; headers, footers, footnotes and text boxes are not read). Texts longer than
  50,000,000 characters are cut there (noted), instead of `clip()`'s per-message cap.
- `platform_detail` is "pdf", "docx", or, for text, "markdown" when the file name ends in a Markdown
  suffix, else "text" (the name only labels the record; it never decides the format).
"""

from __future__ import annotations

import codecs
import json
import logging
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport, Role
from twinlm.sources._common import HEAD_BYTES, check_zip_directory, in_slices, stable_id

SOURCE = "documents"
AUTHOR = "document"
MAX_DOCUMENT_CHARS = 50_000_000
# python-docx reads every part of the package into memory (styles, headers, comments, images) and builds
# a tree of word/document.xml at ~20 bytes of memory per byte of XML (32 MB of paragraphs: 645 MB, 80 s).
# So word/document.xml (a 1,000-page book's is ~10 MB) and every other part are capped, and a part that
# inflates more than _DOCX_RATIO times (text XML deflates 4-20x) is a zip bomb.
MAX_DOCX_XML_BYTES = 64 << 20
MAX_DOCX_PART_BYTES = 64 << 20
_DOCX_RATIO, _DOCX_FLOOR = 100, 1 << 20  # ratio checked for parts over the floor
MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd", ".mkdn"}
_CHUNK = 1 << 20
_ZIP_MAGIC = b"PK\x03\x04"
_DOCX_TEMPLATE_DATE = datetime(2013, 12, 23, 23, 15, tzinfo=UTC)


# --------------------------------------------------------------------------------------- detection


def looks_like(head: str, path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            raw = f.read(HEAD_BYTES)
    except OSError:
        return False
    if raw.startswith(b"%PDF-"):
        return True
    if raw.startswith(_ZIP_MAGIC) and _is_docx(path):
        return True
    return _is_text(raw, complete=len(raw) < HEAD_BYTES)


def _is_docx(path: Path) -> bool:
    try:
        check_zip_directory(path, path)  # millions of entries: refused before zipfile reads them all
        with zipfile.ZipFile(path) as z:
            return "word/document.xml" in z.namelist()
    except Exception:  # any damaged zip is simply not a DOCX
        return False


def _check_parts(path: Path, parts: list[tuple[str, int, int]]) -> None:
    """Refuse a DOCX whose parts (as declared: zipfile reads no more) would inflate to gigabytes."""
    total = sum(size for _, size, _ in parts)
    if total > _DOCX_RATIO * path.stat().st_size + _DOCX_FLOOR:
        raise ExportError(
            path, f"DOCX would inflate to {total:,} bytes, over {_DOCX_RATIO}x its size: a zip bomb"
        )
    for name, size, packed in parts:
        if size > MAX_DOCX_PART_BYTES:
            raise ExportError(path, f"DOCX part too large ({size:,} bytes inflated)", name)
        if size > _DOCX_FLOOR and size > _DOCX_RATIO * max(packed, 1):
            raise ExportError(path, f"DOCX part inflates {size // max(packed, 1):,}x: a zip bomb", name)


def _is_text(raw: bytes, complete: bool) -> bool:
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=complete)
    except UnicodeDecodeError:
        return False
    text = text.removeprefix("\ufeff")
    if not text.strip() or "\x00" in text:  # an empty file is no recognisable export
        return False
    printable = sum(1 for c in text if c.isprintable() or c in "\n\r\t\f\v")
    if printable < 0.95 * len(text):
        return False
    return not _reads_as_json(text)


def _reads_as_json(text: str) -> bool:
    """Whether `text` is JSON or JSON Lines, maybe cut at the end (but not Markdown like `[x]`)."""
    body = text.lstrip()
    if not body or body[0] not in "{[":
        return False
    try:
        json.loads(body)
    except RecursionError:
        return True
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one value then more: JSON Lines / concatenated JSON?
            return body[e.pos :].lstrip()[:1] in ("{", "[")
        return e.msg.startswith("Unterminated string") or e.pos >= len(body.rstrip())
    return True


# ------------------------------------------------------------------------------------------- parse


def parse(path: Path, options: ParseOptions, report: ParseReport) -> Iterator[Conversation]:
    try:
        with open(path, "rb") as f:
            magic = f.read(5)
        stat = path.stat()
    except OSError as e:
        raise ExportError(path, f"cannot read file ({e.strerror or e})") from None
    author: str | None = None
    created: datetime | None = None
    if magic == b"%PDF-":
        detail = "pdf"
        text, author, created = _read_pdf(path, options, report)
    elif magic.startswith(_ZIP_MAGIC):
        detail = "docx"
        text, author, created = _read_docx(path, report)
    else:
        detail = "markdown" if path.suffix.lower() in MARKDOWN_SUFFIXES else "text"
        text = _read_text(path, report)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        report.skip("empty document")
        return
    doc_id = stable_id(SOURCE, text)
    if created is None:
        try:
            created = datetime.fromtimestamp(stat.st_mtime, tz=UTC)
        except (OverflowError, OSError, ValueError):
            report.note("file time unreadable")
    message = Message(
        id=f"{doc_id}:0",
        author_id=AUTHOR,
        author_name=AUTHOR,
        timestamp=created,
        text=text,
        kind=Kind.DOCUMENT,
        role=Role.PARTICIPANT,
    )
    template = Conversation(
        source=SOURCE,
        id=doc_id,
        title=path.name,
        kind="document",
        messages=(),
        participants=(author,) if author else (),
        platform_detail=detail,
    )
    yield from in_slices(template, iter((message,)), options, report)


class _Capped:
    """Collects text pieces up to MAX_DOCUMENT_CHARS, noting a cut once."""

    def __init__(self, report: ParseReport) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.full = False
        self.report = report

    def add(self, piece: str) -> None:
        if self.full:
            return
        room = MAX_DOCUMENT_CHARS - self.size
        if len(piece) > room:
            piece = piece[:room]
            self.full = True
            self.report.note(f"document cut to {MAX_DOCUMENT_CHARS:,} characters")
        self.parts.append(piece)
        self.size += len(piece)


def _read_text(path: Path, report: ParseReport) -> str:
    """Strict UTF-8, streamed in chunks; invalid bytes are an error at their byte offset."""
    out = _Capped(report)
    pending = b""
    base = 0  # file offset of pending[0]
    try:
        with open(path, "rb") as f:
            while not out.full:
                chunk = f.read(_CHUNK)
                final = not chunk
                data = pending + chunk
                try:
                    decoded = data.decode("utf-8")
                    pending = b""
                except UnicodeDecodeError as e:
                    cut = e.reason == "unexpected end of data" and not final
                    if not cut:
                        raise ExportError(path, "not valid UTF-8 text", f"byte {base + e.start}") from None
                    decoded = data[: e.start].decode("utf-8")
                    pending = data[e.start :]
                if base == 0 and not out.parts:
                    decoded = decoded.removeprefix("\ufeff")
                base += len(data) - len(pending)
                out.add(decoded)
                if final:
                    break
    except OSError as e:
        raise ExportError(path, f"cannot read file ({e.strerror or e})") from None
    return "".join(out.parts)


def _local_to_utc(dt: datetime, options: ParseOptions) -> datetime:
    if dt.tzinfo is None:
        if options.timezone:
            return dt.replace(tzinfo=ZoneInfo(options.timezone)).astimezone(UTC)
        return dt.astimezone(UTC)  # naive = this machine's local time
    return dt.astimezone(UTC)


class _CountingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@contextmanager
def _pypdf_quiet(report: ParseReport) -> Iterator[None]:
    """Keep pypdf's repair/encoding chatter off the console; count it as a note instead."""
    logger = logging.getLogger("pypdf")
    handler = _CountingHandler()
    saved = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = saved
        if handler.count:
            report.note("PDF damaged or partly unreadable (reader warnings)")


def _read_pdf(
    path: Path, options: ParseOptions, report: ParseReport
) -> tuple[str, str | None, datetime | None]:
    with _pypdf_quiet(report), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read_pdf_quietly(path, options, report)


def _read_pdf_quietly(
    path: Path, options: ParseOptions, report: ParseReport
) -> tuple[str, str | None, datetime | None]:
    from pypdf import PasswordType, PdfReader

    try:
        reader = PdfReader(path, strict=False)
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise ExportError(path, "encrypted PDF (needs a password); decrypt it first")
        pages = reader.pages
        n_pages = len(pages)
    except ExportError:
        raise
    except Exception as e:  # pypdf raises many types on damaged files
        raise ExportError(path, f"cannot read PDF ({_why(e)})") from None

    author: str | None = None
    created: datetime | None = None
    try:
        info = reader.metadata
        if info is not None:
            author = info.author.strip() if isinstance(info.author, str) and info.author.strip() else None
            if info.get("/CreationDate") is not None:
                raw_date = info.creation_date
                created = _local_to_utc(raw_date, options) if raw_date else None
    except Exception:
        report.note("unreadable PDF metadata (file time used)")
        created = None

    out = _Capped(report)
    for i in range(n_pages):
        if out.full:
            break
        try:
            page_text = pages[i].extract_text() or ""
        except Exception as e:
            raise ExportError(path, f"cannot extract PDF text ({_why(e)})", f"page {i + 1}") from None
        if i:
            out.add("\n\n")
        out.add(page_text)
    return "".join(out.parts), author, created


def _read_docx(path: Path, report: ParseReport) -> tuple[str, str | None, datetime | None]:
    import docx
    from docx.table import Table, _Cell
    from docx.text.paragraph import Paragraph

    try:
        check_zip_directory(path, path)
        with zipfile.ZipFile(path) as z:
            size = z.getinfo("word/document.xml").file_size
            parts = [(info.filename, info.file_size, info.compress_size) for info in z.infolist()]
    except ExportError:
        raise
    except KeyError:
        raise ExportError(path, "not a DOCX document (zip without word/document.xml)") from None
    except Exception as e:
        raise ExportError(path, f"cannot read DOCX ({_why(e)})") from None
    if size > MAX_DOCX_XML_BYTES:
        raise ExportError(path, f"DOCX body too large ({size:,} bytes inflated)", "word/document.xml")
    _check_parts(path, parts)
    try:
        document = docx.Document(str(path))
    except Exception as e:
        raise ExportError(path, f"cannot read DOCX ({_why(e)})") from None

    out = _Capped(report)
    lines: list[str] = []
    blocks = 0

    def block(text: str) -> None:
        nonlocal blocks
        out.add("\n" + text if blocks else text)
        blocks += 1

    def walk(items: Iterator[Paragraph | Table], depth: int) -> None:
        for item in items:
            if out.full:
                return
            if isinstance(item, Paragraph):
                block(item.text)
            elif depth < 20:  # nested tables, bounded
                for row in item.rows:
                    lines.clear()
                    for tc in row._tr.tc_lst:  # each <w:tc> once (row.cells repeats spans)
                        cell = _Cell(tc, item)
                        cell_text = "\n".join(p.text for p in cell.paragraphs)
                        lines.append(cell_text)
                    if any(t.strip() for t in lines):
                        block("\t".join(lines))
                    for tc in row._tr.tc_lst:
                        cell = _Cell(tc, item)
                        if cell.tables:
                            walk(iter(cell.tables), depth + 1)
            else:
                report.skip("docx table nested too deep")

    try:
        walk(document.iter_inner_content(), 0)
    except Exception as e:
        raise ExportError(path, f"cannot read DOCX body ({_why(e)})", "word/document.xml") from None

    author: str | None = None
    created: datetime | None = None
    try:
        props = document.core_properties
        author = props.author.strip() or None if isinstance(props.author, str) else None
        raw_date = props.created
        created = raw_date.astimezone(UTC) if raw_date else None
    except Exception:
        report.note("unreadable DOCX metadata (file time used)")
    if author == "python-docx" and created == _DOCX_TEMPLATE_DATE:
        author, created = None, None  # python-docx's template defaults, not real metadata
    return "".join(out.parts), author, created


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split())[:120]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
