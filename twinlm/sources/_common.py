"""Helpers shared by the parsers: stable ids, text repair, fast Message building, JSON with located errors."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import ijson

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport, Role

HEAD_BYTES = 64 * 1024

# The file a parser is streaming from, so progress displays can show how far it has read.
_current_input: ContextVar[BinaryIO | None] = ContextVar("twinlm_current_input", default=None)


def track(f: BinaryIO) -> BinaryIO:
    """Mark `f` as the file being read: `position()` follows it. Returns `f`."""
    _current_input.set(f)
    return f


def position() -> int | None:
    """Bytes read so far from the tracked file, or None when nothing is tracked (or it is closed)."""
    f = _current_input.get()
    try:
        return None if f is None or f.closed else f.tell()
    except (OSError, ValueError):
        return None


def untrack() -> None:
    _current_input.set(None)


def read_head(path: Path, n: int = HEAD_BYTES) -> str:
    """The first `n` bytes as text (BOM stripped, undecodable bytes replaced) for format sniffing."""
    with open(path, "rb") as f:
        raw = f.read(n)
    return raw.decode("utf-8", errors="replace").lstrip("\ufeff")


def stable_id(*parts: object) -> str:
    """A short id that is the same for the same parts in every run and every re-export."""
    h = hashlib.blake2b(digest_size=10)
    for part in parts:
        h.update(str(part).encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


def fix_mojibake(text: str) -> str:
    """Repair UTF-8 that was written out as latin-1 code points (Facebook/Instagram exports).

    "Ã©" -> "é", "ð\x9f\x98\x82" -> "😂". Text that is not mojibake is returned unchanged.
    """
    if text.isascii():
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def clip(text: str, options: ParseOptions, report: ParseReport) -> str:
    """Cut a message at `options.max_message_chars`, counting it, so one pasted log can't dominate."""
    if len(text) > options.max_message_chars:
        report.note("message cut to max_message_chars")
        return text[: options.max_message_chars]
    return text


def placeholder(kind: str) -> str:
    """The text that stands for media in a message: "[photo]", "[voice message]", "[sticker]"."""
    return f"[{kind}]"


def media_message(
    options: ParseOptions, report: ParseReport, what: str, kind: Kind = Kind.MEDIA
) -> str | None:
    """Placeholder text for a media-only message, or None (counted) when config drops media."""
    if options.media == "drop":
        report.skip(f"media dropped ({what})")
        return None
    return placeholder(what)


def in_slices(
    template: Conversation, messages: Iterable[Message], options: ParseOptions, report: ParseReport
) -> Iterator[Conversation]:
    """Yield `template` with its messages replaced by consecutive slices of `messages`.

    Keeps memory flat for chats with millions of messages. Always yields at least one slice so
    that an empty conversation is still recorded.
    """
    from dataclasses import replace

    batch: list[Message] = []
    yielded = False
    report.conversations += 1
    for message in messages:
        batch.append(message)
        if len(batch) >= options.batch_size:
            report.messages += len(batch)
            yield replace(template, messages=tuple(batch))
            yielded = True
            batch = []
    if batch or not yielded:
        report.messages += len(batch)
        yield replace(template, messages=tuple(batch))


# The fields `new_message` sets, in order. If Message's fields change, it falls back to Message itself
# (correct, only slower) and tests/sources/test_common.py fails until this tuple is updated.
_MESSAGE_FIELDS = (
    "id",
    "author_id",
    "author_name",
    "timestamp",
    "text",
    "kind",
    "role",
    "reply_to",
    "forwarded_from",
    "edited",
)


def _message_builder() -> Callable[..., Message]:
    if tuple(getattr(Message, "__dataclass_fields__", ())) != _MESSAGE_FIELDS:
        return Message
    new = object.__new__
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 = (getattr(Message, n).__set__ for n in _MESSAGE_FIELDS)

    def new_message(
        id: str,
        author_id: str,
        author_name: str,
        timestamp: datetime | None,
        text: str,
        kind: Kind,
        role: Role,
        reply_to: str | None,
        forwarded_from: str | None,
        edited: bool,
        /,
    ) -> Message:
        """`Message(...)` with all ten fields given in order, at ~60% of the cost.

        The frozen dataclass's __init__ sets each field through object.__setattr__; this sets the slots
        directly: ~600 ns a message instead of ~970 (CPython 3.11), which is ~8% of the time a Telegram,
        Discord or ChatGPT export takes to parse, since building Messages is most of their hot loop.
        Same object: equal, same hash, same repr. Used only while Message's fields are _MESSAGE_FIELDS.
        """
        m = new(Message)
        s0(m, id)
        s1(m, author_id)
        s2(m, author_name)
        s3(m, timestamp)
        s4(m, text)
        s5(m, kind)
        s6(m, role)
        s7(m, reply_to)
        s8(m, forwarded_from)
        s9(m, edited)
        return m

    return new_message


new_message: Callable[..., Message] = _message_builder()


_WS = re.compile(r"[ \t]+")


# Bytes ijson reads at a time. It builds the prefix string of every open level for each event of a buffer
# before handing any over, so one buffer of "[0,[0,[0,..." costs the square of its depth: 1.2 MB of it took
# 5 s and 1.1 GB with ijson's default 64 KiB (the parser's depth check only runs between buffers). 8 KiB
# bounds a buffer at ~2,700 levels (~20 MB), at no measurable cost in throughput.
IJSON_BUF = 8192


def json_events(path: Path, f: BinaryIO) -> Iterator[tuple[str, str, Any]]:
    """ijson's (prefix, event, value) stream, with errors turned into ExportError at a byte offset."""
    try:
        yield from ijson.parse(f, buf_size=IJSON_BUF, use_float=True)
    except ijson.JSONError as e:
        raise ExportError(path, f"invalid or truncated JSON ({_first_line(e)})", f"byte {f.tell()}") from None


def json_items(path: Path, f: BinaryIO, prefix: str) -> Iterator[Any]:
    """Stream the JSON values at `prefix` (ijson syntax, e.g. "messages.item"), located errors."""
    try:
        yield from ijson.items(f, prefix, buf_size=IJSON_BUF, use_float=True)
    except ijson.JSONError as e:
        raise ExportError(path, f"invalid or truncated JSON ({_first_line(e)})", f"byte {f.tell()}") from None


def _first_line(e: Exception) -> str:
    # yajl reports its messages as bytes; show them as text, first line only.
    raw = e.args[0] if e.args and isinstance(e.args[0], bytes) else str(e)
    text = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw).strip().splitlines()
    return _WS.sub(" ", text[0])[:120] if text else type(e).__name__


def open_json(path: Path) -> BinaryIO:
    """Open a JSON export for streaming, skipping a UTF-8 byte-order mark (Messenger writes one).

    Reads go through a guard against absurd nesting: ijson's time and memory grow with the square
    of the depth, so 200 KB of "[[[[..." would exhaust memory. No export (nor any message text)
    holds 1,024 opening brackets in a row; ijson handles that depth cheaply.
    """
    f = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    if f.read(3) != b"\xef\xbb\xbf":
        f.seek(0)
    return track(_NestingGuard(f, path))  # type: ignore[arg-type]


# Whitespace removed and "{" folded into "[", a run of openers is one substring search: ~0.7 ns per
# byte, 30x cheaper than a regex over the raw bytes.
_OPENERS_AS_BRACKET = bytes.maketrans(b"{", b"[")
_DEEP_RUN = b"[" * 1024


class _NestingGuard:
    """A binary reader that refuses runs of 1,024 opening brackets (checked per read and across reads)."""

    def __init__(self, f: BinaryIO, path: Path) -> None:
        self._f, self._path, self._tail = f, path, b""

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._check(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # what ijson calls
        n = self._f.readinto(buffer)
        self._check(bytes(memoryview(buffer)[:n]))
        return n

    def _check(self, data: bytes) -> None:
        squeezed = self._tail + data.translate(_OPENERS_AS_BRACKET, b" \t\r\n")
        if _DEEP_RUN in squeezed:
            raise ExportError(self._path, "JSON nested too deeply to be an export", f"byte {self._f.tell()}")
        self._tail = squeezed[-len(_DEEP_RUN) :]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)  # tell, seek, close, ...

    def __enter__(self) -> _NestingGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


# A zip's central directory is read whole when it is opened (zipfile keeps a ZipInfo per member, ~0.5 KB):
# its entry count and size come first, from the end record, so a small file of millions of empty entries
# is refused before it takes gigabytes. No export or document holds more.
MAX_ZIP_ENTRIES = 100_000
MAX_ZIP_DIRECTORY = 64 * 2**20


def zip_directory(path: Path) -> tuple[int, int] | None:
    """(entries, central directory bytes) from a zip's end record, or None when it has none."""
    import zipfile

    try:
        with open(path, "rb") as f:
            # The end record as zipfile itself finds it (zip64 included); private, hence the guard.
            end = zipfile._EndRecData(f)  # type: ignore[attr-defined]
    except (OSError, AttributeError, ValueError, IndexError, zipfile.BadZipFile):
        return None
    if not end:
        return None
    return int(end[zipfile._ECD_ENTRIES_TOTAL]), int(end[zipfile._ECD_SIZE])  # type: ignore[attr-defined]


def check_zip_directory(path: Path, name: object, entries_left: int = MAX_ZIP_ENTRIES) -> None:
    """Refuse (ExportError) a zip whose directory alone would take too much memory to read."""
    directory = zip_directory(path)
    if directory is None:
        return  # zipfile reports the damage
    entries, size = directory
    if entries > entries_left or size > MAX_ZIP_DIRECTORY:
        raise ExportError(
            name,
            f"zip holds {entries:,} entries ({size / 2**20:,.0f} MB of directory), over the "
            f"{MAX_ZIP_ENTRIES:,} an archive (with the zips inside it) may hold; unpack it yourself if that "
            "is expected",
        )


def bounded_lines(path: Path, f: BinaryIO, limit: int, what: str) -> Iterator[bytes]:
    """The lines of `f` (split at b"\\n", line ends removed), refusing one longer than `limit` bytes before
    it is read whole: file iteration would read a 1 GB line (a sparse or unpacked file) into memory.

    As fast as iterating the file: 64 KiB blocks split in C; only an unfinished line is held, in pieces.
    """
    pending: list[bytes] = []  # the start of a line that has not ended yet
    held = 0
    while block := f.read(1 << 16):
        if pending:
            end = block.find(b"\n")
            if end < 0:
                pending.append(block)
                held += len(block)
                if held > limit:
                    where = f"byte {f.tell() - held}"
                    raise ExportError(path, f"a line longer than {limit / 2**20:,.0f} MB: not {what}", where)
                continue
            pending.append(block[:end])
            yield b"".join(pending)
            block = block[end + 1 :]
        lines = block.split(b"\n")
        last = lines.pop()
        yield from lines
        pending, held = ([last], len(last)) if last else ([], 0)
    if pending:
        yield b"".join(pending)
