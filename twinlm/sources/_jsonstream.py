"""Streaming a big JSON document object by object: orjson for the bulk, located errors for the rest.

A `Stream` is a byte buffer over the file with a cursor. The caller walks the few structural levels it cares
about itself (`keys`, `items`, `skip`, `value`) and streams a big array with `batches` (many small objects,
pretty-printed) or `objects` (big objects, any layout), holding one buffer and one batch of elements at a
time, so memory stays flat however big the file. Every error is an ExportError located by byte offset and
JSON path ("byte 123 (chats.list[0].messages[5])"), and says what happened in the same words for every
parser: "invalid JSON (...)", or "truncated JSON (the file ends early: ...)" (see `Stream.error`). Only JSON
is read: NaN, Infinity and -Infinity, which json's scanner would take, are invalid JSON here as for orjson.

Why hand-written instead of ijson: Telegram exports (its first user) reach gigabytes and ingest must run at
>100k messages/s on one core. ijson cannot hand out a chat's header and then stream that chat's messages
without building the chat, and its item building costs as much as a full parse. Pretty-printers put each
element of an array of objects on lines of its own, and a raw newline can only be whitespace in JSON, so
"\\n<indent>}" (the indentation of the element's first line) ends an element; Telegram Desktop, for one,
indents by one space per level. `batches` parses the elements in batches of ~64 KiB with one
`orjson.loads("[" + slice + "]")` per batch. Whatever does not fit that pattern (other indentation,
minified JSON, a value orjson rejects) falls back per element to json's C scanner (`raw_decode`), which
either parses it or raises the located error. A slice ends on a structural "}" and is only used when it
parses whole as a list, so a layout that fools the pattern costs speed, never correctness.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import orjson

from twinlm.errors import ExportError
from twinlm.model import ParseReport

_CHUNK = 1 << 20  # bytes read at a time
_BATCH = 1 << 16  # bytes of array elements parsed at once (small enough to stay in the CPU cache)
_ONE_LIMIT = 1 << 24  # an element longer than this is left to json's scanner
_WS = re.compile(rb"[ \t\r\n]*")
_KEY = re.compile(rb'"([^"\\\x00-\x1f]*)"[ \t\r\n]*:[ \t\r\n]*')
# Telegram Desktop writes control characters other than \n \r \t as "\x0B", which is not JSON: in an
# element that fails to parse, such escapes are read as "\u000B" (and noted).
_X_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\x([0-9A-Fa-f]{2})")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _NotJSON(Exception):
    """NaN, Infinity or -Infinity met by json's scanner (orjson refuses them itself)."""


def _refuse(name: str) -> Any:
    raise _NotJSON(name)


_DECODER = json.JSONDecoder(parse_constant=_refuse)
# Where such a constant is: strings are matched only to be passed over.
_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)', re.DOTALL)

# `objects`: what follows an object up to the next one's first key ("}" not included), the most bytes of
# an object guessed at, slices tried per object, objects left to json's scanner before guessing stops
# (each may read _GUESS_LIMIT bytes ahead), and "no guess" (None is a value).
_SEPARATOR = re.compile(rb'[ \t\r\n]{0,64},[ \t\r\n]{0,64}\{[ \t\r\n]{0,64}"[^"\\\x00-\x1f]{1,64}"')
_GUESS_LIMIT = 1 << 24
_GUESSES = 8
_MISSES = 16
_MISS = object()


def open_stream(path: Path) -> BinaryIO:
    """The file, past a UTF-8 byte-order mark. Not `_common.open_json`: that guards ijson against deep
    nesting, which this scanner does not need (json's scanner and orjson limit nesting themselves, and
    RecursionError becomes an ExportError here), so it would cost ~3% for nothing."""
    f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    if f.read(3) != b"\xef\xbb\xbf":
        f.seek(0)
    return f


class Stream:
    """A byte buffer over a JSON file with a cursor: just enough JSON scanning to stream a big document.

    `where` arguments name the value at hand in error messages: its JSON path, as built by `key_path`.
    Notes (repaired escapes) go to `report`.
    """

    __slots__ = ("buf", "eof", "f", "offset", "path", "pos", "report")

    def __init__(self, path: Path, f: BinaryIO, report: ParseReport) -> None:
        self.path = path
        self.f = f
        self.report = report
        self.buf = b""
        self.pos = 0
        self.offset = f.tell()  # file offset of buf[0]
        self.eof = False

    def at(self, extra: int = 0, where: str = "") -> str:
        place = f"byte {self.offset + self.pos + extra}"
        return f"{place} ({where})" if where else place

    def more(self, want: int = _CHUNK) -> bool:
        """Read more bytes, dropping those before the cursor. False at the end of the file."""
        if self.eof:
            return False
        data = self.f.read(max(want, _CHUNK))
        if not data:
            self.eof = True
            return False
        if self.pos:
            self.offset += self.pos
            self.buf = self.buf[self.pos :] + data
            self.pos = 0
        else:
            self.buf += data
        return True

    def ensure(self, n: int) -> bool:
        """At least n bytes after the cursor, unless the file ends first."""
        while len(self.buf) - self.pos < n:
            if not self.more(n - (len(self.buf) - self.pos)):
                return False
        return True

    def skip_ws(self) -> bytes:
        """Move past whitespace; return (the end of) it: its last line is the indentation of what follows."""
        carry = b""
        while True:
            end = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            ws = carry + self.buf[self.pos : end]
            self.pos = end
            if end < len(self.buf) or not self.more():
                return ws
            carry = ws[-256:]  # a run of whitespace longer than the buffer is not kept whole

    def peek(self) -> int:
        """The next non-whitespace byte, or -1 at the end of the file."""
        self.skip_ws()
        return self.buf[self.pos] if self.pos < len(self.buf) else -1

    def value(self, where: str) -> Any:
        """Decode the JSON value at the cursor with json's C scanner, reading as much as it needs."""
        self.skip_ws()
        size = 4096
        while True:
            complete = not self.ensure(size + 1)  # the window reaches the end of the file
            chunk = self.buf[self.pos : self.pos + size]
            text = chunk.decode("utf-8", "surrogateescape")
            try:
                value, end = _DECODER.raw_decode(text)
            except json.JSONDecodeError as e:
                at_end = e.msg.startswith("Unterminated") or e.pos >= len(text.rstrip())
                if not complete and (at_end or e.pos >= len(text) - 64):
                    size *= 4  # the value goes on past the window
                    continue
                if at_end:
                    raise self.error(e.msg, True, len(chunk), where) from None
                raise self.error(e.msg, False, _nbytes(text, e.pos), where) from None
            except _NotJSON as e:  # the first constant outside a string: json read all before it
                at = next((m.start(1) for m in _CONSTANT.finditer(text) if m.group(1)), 0)
                raise self.error(f"{e} is not JSON", False, _nbytes(text, at), where) from None
            except RecursionError:
                raise ExportError(self.path, "JSON nested too deeply", self.at(0, where)) from None
            if end == len(text) and not complete:
                size *= 4  # a number at the window's edge may go on
                continue
            n = _nbytes(text, end)
            if not chunk.isascii():
                try:
                    chunk[:n].decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ExportError(self.path, "not valid UTF-8", self.at(e.start, where)) from None
            if not chunk.isascii() or "\\u" in text[:end]:
                try:
                    value = _scrub(value, self.report)
                except RecursionError:
                    raise ExportError(self.path, "JSON nested too deeply", self.at(0, where)) from None
            self.pos += n
            return value

    def skip(self, where: str, depth: int = 0) -> None:
        """Move past one value without holding big arrays or objects in memory."""
        c = self.peek()
        if c == 0x5B and depth < 2:  # "["
            self.pos += 1
            for i in self.items(where):
                self.skip(f"{where}[{i}]", depth + 1)
        elif c == 0x7B and depth < 2:  # "{"
            self.pos += 1
            for key in self.keys(where):
                self.skip(key_path(where, key), depth + 1)
        else:
            self.value(where)

    def keys(self, where: str) -> Iterator[str]:
        """Keys of the object whose "{" was just passed; the caller consumes each value."""
        c = self.peek()
        if c == 0x7D:  # "}"
            self.pos += 1
            return
        while True:
            if c != 0x22:  # '"'
                self.unexpected(c, "a key", where)
            self.ensure(512)
            m = _KEY.match(self.buf, self.pos)
            if m:
                try:
                    key = m.group(1).decode("utf-8")
                except UnicodeDecodeError:
                    raise ExportError(self.path, "not valid UTF-8", self.at(0, where)) from None
                self.pos = m.end()
            else:
                key = self.value(where)
                if self.peek() != 0x3A:  # ":"
                    self.unexpected(self.peek(), '":"', where)
                self.pos += 1
            yield key
            c = self.peek()
            if c == 0x2C:  # ","
                self.pos += 1
                c = self.peek()
            elif c == 0x7D:
                self.pos += 1
                return
            else:
                self.unexpected(c, '"," or "}"', where)

    def items(self, where: str) -> Iterator[int]:
        """Indexes of the array whose "[" was just passed; the caller consumes each element."""
        c = self.peek()
        if c == 0x5D:  # "]"
            self.pos += 1
            return
        i = 0
        while True:
            yield i
            i += 1
            c = self.peek()
            if c == 0x2C:
                self.pos += 1
            elif c == 0x5D:
                self.pos += 1
                return
            else:
                self.unexpected(c, '"," or "]"', where)

    def error(self, detail: str, truncated: bool = False, extra: int = 0, where: str = "") -> ExportError:
        """The error for JSON that breaks at the cursor (+ `extra` bytes), in the words of every parser:
        "invalid JSON (<detail>)", or "truncated JSON (the file ends early: <detail>)" when the file ends
        before the value does."""
        problem = "truncated JSON (the file ends early: " if truncated else "invalid JSON ("
        return ExportError(self.path, f"{problem}{detail})", self.at(extra, where))

    def unexpected(self, c: int, expected: str, where: str) -> NoReturn:
        """Raise the error for byte `c` (-1: the end of the file) at the cursor, where `expected` was due."""
        raise self.error(f"expected {expected}", c < 0, 0, where)

    def finish(self, what: str) -> None:
        """After the top-level value (an "object" or an "array", says `what`): only whitespace may follow."""
        if self.peek() >= 0:
            raise self.error(f"data after the end of the {what}")

    def line_indent(self) -> bytes | None:
        """The indentation of the line the cursor is on (that of the closing bracket of an array opening
        here, in any pretty-printed layout), or None when that line is no longer in the buffer."""
        k = self.buf.rfind(b"\n", 0, self.pos)
        if k < 0:
            return None
        line = self.buf[k + 1 : self.pos]
        return line[: len(line) - len(line.lstrip(b" \t"))]

    def batches(self, where: str, array_indent: bytes | None = None) -> Iterator[list[Any]]:
        """The elements of the array whose "[" is at the cursor (at path `where`), in lists of up to _BATCH
        bytes: objects on lines of their own are parsed in batches with orjson, anything else one by one.

        `array_indent`, the indentation of the array's own line, lets a batch stop at the array's end.
        """
        array_end = None if array_indent is None else b"\n" + array_indent + b"]"
        self.peek()  # loads the buffer of a fresh stream
        self.pos += 1
        ws = self.skip_ws()
        if self.peek() == 0x5D:
            self.pos += 1
            return
        index = 0
        slow_until = -1  # file offset up to which the elements go one by one
        unreliable: set[bytes] = set()  # closing lines that turned out not to end elements here
        while True:
            indent = _indent(ws) if self.pos < len(self.buf) and self.buf[self.pos] == 0x7B else None
            if indent is None or b"\n" + indent + b"}" in unreliable:
                yield [self.value(f"{where}[{index}]")]
                index += 1
            else:
                close = b"\n" + indent + b"}"
                batch = None
                if self.offset + self.pos >= slow_until:
                    if len(self.buf) - self.pos < _CHUNK // 2:
                        self.more()
                    stop = self._batch_end(close, array_end)
                    if stop > 0:
                        try:
                            batch = orjson.loads(b"[" + self.buf[self.pos : stop] + b"]")
                        except orjson.JSONDecodeError:
                            slow_until = self.offset + stop
                        else:
                            self.pos = stop
                            index += len(batch)
                            yield batch
                if batch is None:
                    value, reliable = self._one(close, f"{where}[{index}]")
                    if not reliable:
                        unreliable.add(close)
                    yield [value]
                    index += 1
            c = self.peek()
            if c == 0x2C:
                self.pos += 1
                ws = self.skip_ws()
            elif c == 0x5D:
                self.pos += 1
                return
            else:
                self.unexpected(c, '"," or "]"', f"{where}[{index}]")

    def _batch_end(self, close: bytes, array_end: bytes | None) -> int:
        """End of the last whole element within _BATCH bytes that is still in this array, or -1.

        The array ends at its closing line (indented like the line that opened it: nothing inside the
        elements is indented that little), or else after the first element not followed by ",".
        Searching for a pattern that ends in "]" is much faster than for one ending in a line break.
        """
        buf, pos = self.buf, self.pos
        limit = min(len(buf), pos + _BATCH)
        end = buf.find(array_end, pos, limit) if array_end else buf.find(close + b"\n", pos, limit)
        j = buf.rfind(close, pos, end + len(close)) if end >= 0 else buf.rfind(close + b",", pos, limit)
        return j + len(close) if j >= 0 else -1

    def _one(self, close: bytes, where: str) -> tuple[Any, bool]:
        """One element: up to its closing line with orjson, else with json's scanner.

        Also says whether `close` did end the element: if not, it is not searched for again in this array
        (a layout with one element per line would otherwise be searched to the end of every read).
        """
        j = self.buf.find(close, self.pos)
        while j < 0 and len(self.buf) - self.pos < _ONE_LIMIT:
            searched = len(self.buf) - self.pos
            if not self.more(searched):
                break
            j = self.buf.find(close, self.pos + max(0, searched - len(close)))
        if j >= 0:
            raw = self.buf[self.pos : j + len(close)]
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                if b"\\x" in raw:
                    try:
                        value = orjson.loads(_X_ESCAPE.sub(rb"\1\\u00\2", raw))
                    except orjson.JSONDecodeError:
                        pass
                    else:
                        self.report.note("invalid \\x escape read as \\u00")
                        self.pos = j + len(close)
                        return value, True
            else:
                self.pos = j + len(close)
                return value, True
        expected_end = self.offset + j + len(close) if j >= 0 else -1
        value = self.value(where)
        return value, self.offset + self.pos == expected_end

    def objects(self, where: str) -> Iterator[Any]:
        """The elements of the array whose "[" is at the cursor (at path `where`), one at a time: for arrays
        of big objects (a ChatGPT conversation, say) in any layout, minified included.

        orjson parses an object 2x faster than json's scanner (4x faster than ijson), but only given its
        exact bytes. In such arrays every object is followed by the same run of bytes up to the next one's
        first key (`}, {"title"` minified, `},\n  {\n    "title"` indented), learnt after the first
        object. It cannot occur inside a JSON string (its quotes would be escaped), so its first occurrence
        is the likely end of the object at the cursor. A slice is only used when it parses whole, which only
        the true end does. Where a nested object has the same first key (minified), slices twice as long are
        tried until orjson reads past the end and says where it stopped ("unexpected content after
        document"): the slice up to there is the object. Wrong guesses cost time, never a wrong result:
        whatever still fails (first and last elements, non-objects, bad JSON) goes to json's scanner
        (`value`), which reads any value and locates every error.
        """
        self.peek()  # loads the buffer of a fresh stream
        self.pos += 1
        if self.peek() == 0x5D:  # "]"
            self.pos += 1
            return
        separator: bytes | None = None
        index = misses = 0
        while True:
            value = _MISS
            if separator and self.peek() == 0x7B:  # "{"
                value = self._guess(separator)
                misses += value is _MISS
            if value is _MISS:
                value = self.value(f"{where}[{index}]")
                separator = None
                if isinstance(value, dict) and misses < _MISSES:  # the cursor is just past its "}"
                    self.ensure(512)
                    m = _SEPARATOR.match(self.buf, self.pos)
                    separator = b"}" + m.group() if m else None
            yield value
            index += 1
            c = self.peek()
            if c == 0x5D:
                self.pos += 1
                return
            if c != 0x2C:  # ","
                self.unexpected(c, '"," or "]"', f"{where}[{index}]")
            self.pos += 1

    def _guess(self, separator: bytes) -> Any:
        """The object at the cursor parsed by orjson, or _MISS. Offsets are relative to the cursor."""
        end = self._find(separator, 0)  # the slice is [0, end]: `end` is a candidate "}"
        shrunk = False
        for _ in range(_GUESSES):
            if end < 0:
                return _MISS
            try:
                value = orjson.loads(memoryview(self.buf)[self.pos : self.pos + end + 1])
            except orjson.JSONDecodeError as e:
                # Where orjson stopped, in bytes:
                head = self.buf[self.pos : self.pos + min(end + 1, 4 * e.pos)]
                stop = e.pos if head.isascii() else len(head.decode("utf-8", "replace")[: e.pos].encode())
                if stop > end:  # the slice ended inside the object: try one twice as long
                    end = self._find(separator, 2 * end + 1)
                elif shrunk:  # orjson stopped early twice: not the slice's fault
                    return _MISS
                else:  # it stopped after the object: the slice up to the last "}" before there
                    end = self.buf.rfind(b"}", self.pos, self.pos + stop) - self.pos
                    shrunk = True
                continue
            self.pos += end + 1
            return value
        return _MISS

    def _find(self, separator: bytes, start: int) -> int:
        """The first candidate end at or after `start`, reading on as needed; -1 if there is none."""
        while True:
            j = self.buf.find(separator, self.pos + start)
            if j >= 0:
                return j - self.pos
            searched = len(self.buf) - self.pos
            if searched >= _GUESS_LIMIT or not self.more(searched):
                return -1
            start = max(start, searched - len(separator) + 1)


def key_path(where: str, key: str) -> str:
    """The path of `key` in the object at path `where` ("" at the top level)."""
    return f"{where}.{key}" if where else key


def _indent(ws: bytes) -> bytes | None:
    """The indentation on the last line of a whitespace run, or None when it holds no newline."""
    k = ws.rfind(b"\n")
    if k < 0:
        return None
    tail = ws[k + 1 :]
    return tail if not tail.strip(b" \t") else None


def _nbytes(text: str, end: int) -> int:
    return end if text.isascii() else len(text[:end].encode("utf-8", "surrogateescape"))


def _scrub(value: Any, report: ParseReport) -> Any:
    """Replace lone surrogates (from "\\ud800"-style escapes) that could not be stored as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            report.note("invalid unicode escape replaced")
            return _SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, list):
        return [_scrub(v, report) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, report) for k, v in value.items()}
    return value
