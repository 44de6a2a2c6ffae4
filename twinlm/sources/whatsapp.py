"""WhatsApp "Export chat" text files (Android and iOS layouts, many locales).

One line per message: a local date and time, then `Name: text` (or a system notice with no name).
A line that does not start with a timestamp continues the previous message. Two passes over the
file, both streaming: the first decides day-first vs month-first for the whole file (and checks
that there is a timestamp line at all), the second builds the messages.

Decisions worth knowing:
- Dates: day-first vs month-first is decided per file: a first field > 12 means day-first, a
  second field > 12 month-first (the first such line decides). Otherwise `whatsapp_date_order`
  when not "auto", else the order with fewer backward steps from one message to the next, else
  month-first for unpadded US-style dates ("12/9/20"), else day-first. The decision is a report
  note. Year-first dates (`2019-12-24`) are always y-m-d.
- Times are local with no zone: converted with `options.timezone` (None = this machine's zone).
  A backward jump inside a DST fall-back hour takes the second (fold=1) reading.
- Encoding: UTF-8 (BOM or not). A line that is not valid UTF-8 is read as cp1252 (latin-1 for the
  few bytes cp1252 leaves undefined) and counted as a note; nothing is dropped.
- Ids (`whatsapp_keys`): what survives a re-export from another phone, time zone or file name. The
  conversation id is a key of the chat's first messages (the file's chat name, "WhatsApp Chat with
  Alice.txt" -> "Alice", iOS `_chat.txt` -> its folder, is only the title); message ids are
  stable_id(chat key, UTC minute, text without edit and media markers, occurrence), no author name.
- Media: placeholders "[media]", "[photo]", "[video]", "[audio]", "[voice message]", "[sticker]",
  "[GIF]", "[file]", "[contact]"; a caption stays as text with the placeholder on its own last line.
- iOS marks generated text with U+200E at the start of the message text: such text is a system
  notice unless it is media, a location or a poll.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import BinaryIO
from zoneinfo import ZoneInfo

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport
from twinlm.sources._common import bounded_lines, clip, in_slices, media_message, track
from twinlm.sources.whatsapp_keys import ANCHOR, MINUTE_MS, MessageKeys, chat_key, key_text, ms

FORMAT = "whatsapp"
# Noted once per file read in this machine's zone for want of `options.timezone` (Telegram's 2020
# schema notes it too); ingest then says once which zone that was.
LOCAL_TIME_NOTE = "local times read in this machine's time zone"

_SP = r"[ \u00a0\u202f]"
# Date, time, optional meridian; iOS puts it in brackets, Android follows it with " - ". Locales seen in
# real exports: a right-to-left mark before each date separator and an Arabic comma (Arabic); "à"
# (French) or "klo" (Finnish) between date and time; a meridian before the time, with or without a
# space (Korean 오전/오후, Chinese 上午/下午, Japanese 午前/午後), after it (a.m., p. m., vorm., ص/م).
# Korean exports may also end the header with ", " instead of " - " (`2024. 3. 13. 오후 2:05, 김민수 : …`);
# that ending is accepted only after a prefix meridian, where no other layout puts a comma. Old iOS
# exports end it with ": " (`21/8/19, 11:28:51 PM: Name: text`).
_HEADER = re.compile(
    rf"""[\ufeff\u200e\u200f\u202a-\u202e]*
    (?P<br>\[)?
    (?P<a>\d{{4}}|\d{{1,2}})[\u200e\u200f]?(?P<sep>[./-]){_SP}?
    (?P<b>\d{{1,2}})[\u200e\u200f]?(?P=sep){_SP}?(?P<c>\d{{4}}|\d{{1,2}})\.?
    [,\u060c]?{_SP}+(?:(?:à|klo){_SP}+)?
    (?:(?P<pre>오전|오후|上午|下午|午前|午後){_SP}?)?
    (?P<H>\d{{1,2}})[:.](?P<M>\d{{2}})(?:[:.](?P<S>\d{{2}}))?\.?
    (?:{_SP}*(?P<ampm>[AaPp]\.?{_SP}?[Mm]\.?|vorm\.|nachm\.|\u0635|\u0645))?
    (?(br)\]{_SP}|(?:{_SP}?[-–]{_SP}|:{_SP}|(?(pre),{_SP}|(?!))))
    """,
    re.VERBOSE,
)
_AMPM = {
    "am": 0, "vorm": 0, "pm": 12, "nachm": 12, "\u0635": 0, "\u0645": 12,
    "오전": 0, "오후": 12, "上午": 0, "下午": 12, "午前": 0, "午後": 12,
}  # fmt: skip
_BIDI = str.maketrans(dict.fromkeys("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))
_QUOTE = re.compile('["\u201c\u201d\u201e\u00ab\u00bb]')

_EDITED = re.compile(
    r"[ \u00a0\u202f\u200e]*<(?:This message was edited|Diese Nachricht wurde bearbeitet|Se editó este "
    r"mensaje\.?|Ce message a été modifié|Mensagem editada|Questo messaggio è stato modificato|"
    r"Dit bericht is bewerkt)>\s*$"
)
# Notices that WhatsApp writes with a "Name: " part too; one anchored match, the group names the reason.
_NOTICE = re.compile(
    r"(?P<deleted>(?:This message was deleted|You deleted this message|Diese Nachricht wurde gelöscht|"
    r"Du hast diese Nachricht gelöscht|Se eliminó este mensaje|Eliminaste este mensaje|Ce message a été "
    r"supprimé|Vous avez supprimé ce message|Essa mensagem foi apagada|Você apagou esta mensagem|Questo "
    r"messaggio è stato eliminato|Hai eliminato questo messaggio)\.?$)"
    r"|(?P<missed>(?:Missed (?:group )?(?:voice|video) call|Verpasster (?:Gruppen)?(?:Sprach|Video)anruf|"
    r"Llamada de (?:voz|video|vídeo) perdida|Appel (?:vocal|vidéo) manqué)\b)"
    r"|(?P<system>(?:Messages|Nachrichten|Los mensajes|Les messages|As mensagens|I messaggi|Berichten)\b"
    r"[^\n]{0,200}?(?:end-to-end|Ende-zu-Ende|extremo a extremo|bout en bout|ponta a ponta)"
    r"|Your security code with [^\n]{1,100}? changed|[^\n]{1,100}?'s security code changed"
    r"|Security code changed|Waiting for this message)",
    re.IGNORECASE,
)
_REASON = {"deleted": "deleted message", "missed": "missed call", "system": "system line"}
_KEEP_GENERATED = re.compile(r"(?:Location|Standort|Ubicación|POLL|UMFRAGE|ENCUESTA):", re.IGNORECASE)

_MEDIA_OMITTED = {
    "<media omitted>", "<medien ausgelassen>", "<multimedia omitido>", "<médias omis>",
    "<mídia oculta>", "<media omessi>", "<media weggelaten>", "<archivo omitido>",
}  # fmt: skip
_IOS_OMITTED_WORDS = {
    "image": "photo", "video": "video", "audio": "audio", "sticker": "sticker", "gif": "GIF",
    "document": "file", "contact card": "contact", "bild": "photo", "dokument": "file",
    "kontaktkarte": "contact", "imagen": "photo", "documento": "file", "tarjeta de contacto": "contact",
}  # fmt: skip
_IOS_OMITTED = re.compile(
    r"(?:(?P<fname>.*?)[ \u200e]*)?(?P<what>image|video|audio|sticker|GIF|document|Contact card|Bild|"
    r"Dokument|Kontaktkarte|imagen|documento|Tarjeta de contacto) (?:omitted|weggelassen|omitid[oa])$",
    re.IGNORECASE,
)
_ATTACHED = re.compile(
    r"(?:<(?:attached|Anhang|adjunto|pièce jointe|anexo|allegato): (?P<ios>[^<>]+)>"
    r"|(?P<android>\S[^<>]*?\.\w{1,5}) \((?:file attached|Datei angehängt|archivo adjunto|fichier joint|"
    r"arquivo anexado|file allegato)\))$",
    re.IGNORECASE,
)
_PLACEHOLDER_ENDS = (">", ")", "omitted", "weggelassen", "omitido", "omitida")
_PREFIX_KIND = {
    "IMG": "photo", "PHOTO": "photo", "VID": "video", "VIDEO": "video", "PTT": "voice message",
    "AUD": "audio", "AUDIO": "audio", "STK": "sticker", "STICKER": "sticker", "GIF": "GIF", "DOC": "file",
}  # fmt: skip
_EXT_KIND = {
    "jpg": "photo", "jpeg": "photo", "png": "photo", "heic": "photo", "webp": "sticker", "gif": "GIF",
    "mp4": "video", "mov": "video", "3gp": "video", "opus": "voice message", "ogg": "audio",
    "m4a": "audio", "mp3": "audio", "aac": "audio", "wav": "audio", "vcf": "contact",
}  # fmt: skip
_FNAME_TAG = re.compile(r"(?:^|-)(IMG|VID|PTT|AUD|STK|DOC|PHOTO|VIDEO|AUDIO|STICKER|GIF)-")

_CHAT_NAME = re.compile(
    r"(?:WhatsApp[ -]Chat (?:with|mit|met|-|–)|Chat de WhatsApp con|Conversa do WhatsApp com|"
    r"Discussion WhatsApp avec|Chat WhatsApp con)\s+(?P<name>.+?)(?:\s\(\d+\))?$",
    re.IGNORECASE,
)
_IOS_STEMS = {"_chat", "chat"}


# -- detection ----------------------------------------------------------------------------------


def looks_like(head: str, path: Path) -> bool:
    """The first non-empty line is a WhatsApp timestamp line and some early line has "Name: text"
    (or opens with a WhatsApp notice); or most of the first ten lines are WhatsApp lines."""
    lines = [s for line in head.split("\n")[:200] if (s := line.strip().lstrip("\ufeff\u200e"))]
    if not lines:
        return False
    matches = [_HEADER.match(line) for line in lines]
    authored = sum(1 for m in matches if m and ": " in m.string[m.end() :])
    first = matches[0]
    if first is not None:
        body = first.string[first.end() :].lstrip("\u200e")
        return authored > 0 or bool(_NOTICE.match(body))
    return sum(1 for m in matches[:10] if m) >= 5 and authored >= 3


# A date (any separators, CJK year/month marks included), a time within a few characters, then a
# header ending and "Name: " soon after: the shape of a chat line in a layout `_HEADER` may not know.
_CHAT_LIKE = re.compile(
    r"[\ufeff\u200e\u200f\[]*\d{1,4}\s*[./\-年년]\s*\d{1,2}\s*[./\-月월]\s*\d{1,4}\D{0,12}?"
    r"\d{1,2}[:.]\d{2}(?:[:.]\d{2})?[^\d\n:]{0,12}?(?:\]|\s[-–]|,|:)\s+[^\n:]{1,60}?\s?:\s"
)


def resembles(head: str, path: Path) -> bool:
    """Whether a file that `looks_like` refused still reads as a WhatsApp chat: a chat export's name
    ("WhatsApp Chat with …", iOS `_chat.txt`), or most early lines shaped like "date time - Name: text".

    Ingest turns such a file into an error (an unknown layout to report) instead of a document."""
    name = path.name.lower()
    if name == "_chat.txt" or (name.endswith(".txt") and _CHAT_NAME.match(path.stem.strip())):
        return True
    lines = [s for line in head.split("\n")[:40] if (s := line.strip())][:20]
    hits = sum(1 for line in lines if _CHAT_LIKE.match(line))
    return hits >= 2 and hits * 2 >= len(lines)


# -- reading ------------------------------------------------------------------------------------


# WhatsApp caps a message at 65,536 characters (at most 256 KB a line in UTF-8): a longer line is no chat,
# and file iteration would read a 1 GB one whole.
MAX_LINE_BYTES = 4 << 20
_LONG_LINE = "a WhatsApp chat (its lines are messages of at most 65,536 characters)"


def _lines(path: Path, f: BinaryIO, report: ParseReport | None) -> Iterator[str]:
    """Decoded lines without line ends; UTF-8, falling back to cp1252/latin-1 per line (noted)."""
    first = True
    try:
        for raw in bounded_lines(path, f, MAX_LINE_BYTES, _LONG_LINE):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                try:
                    line = raw.decode("cp1252")
                except UnicodeDecodeError:
                    line = raw.decode("latin-1")
                if report is not None:
                    report.note("line not utf-8, read as cp1252")
            if first:
                line = line.lstrip("\ufeff")
                first = False
            yield line.rstrip("\r\n")
    except OSError as e:
        raise ExportError(path, f"cannot read ({e.strerror or e})") from None


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as e:
        raise ExportError(path, f"cannot open ({e.strerror or e})") from None


def _day_first(path: Path, options: ParseOptions, report: ParseReport) -> bool:
    """First pass: decide the date order for the whole file; fail when no line is a WhatsApp line."""
    forced = options.whatsapp_date_order
    seen = has_day_month = unpadded_us = False
    prev = {True: -1, False: -1}
    back = {True: 0, False: 0}
    with _open(path) as f:
        for line in _lines(path, f, None):
            m = _HEADER.match(line)
            if m is None or len(m["a"]) == 4:
                seen = seen or m is not None
                continue
            seen = has_day_month = True
            if forced != "auto":
                break
            a, b, c = int(m["a"]), int(m["b"]), int(m["c"]) % 100  # "19" and "2019" alike
            if min(a, b) > 12 or max(a, b) > 31 or min(a, b) < 1:
                continue  # no date in either order: leave it to the second pass to count
            if a > 12 or b > 12:
                report.note(f"date order {'day' if a > 12 else 'month'}-first (a date field > 12)")
                return a > 12
            # en-US Android writes "12/9/20": no zero padding, slashes, a two-digit year. Day-first
            # locales pad ("09/12/2020", "09.12.20"): a tie-breaker when nothing else decides.
            unpadded_us = unpadded_us or (
                m["sep"] == "/" and len(m["c"]) == 2 and (len(m["a"]) == 1 or len(m["b"]) == 1)
            )
            for order in (True, False):
                key = c * 10000 + (b * 100 + a if order else a * 100 + b)
                back[order] += key < prev[order]
                prev[order] = key
    if not seen:
        raise ExportError(path, "not a WhatsApp chat export: no line starts with a date and time", "line 1")
    if not has_day_month:
        report.note("date order year-first")
        return True
    if forced != "auto":
        report.note(f"date order {forced.replace('_', '-')} (options)")
        return forced == "day_first"
    if back[True] != back[False]:
        order = back[True] < back[False]
        report.note(f"date order {'day' if order else 'month'}-first (dates in order)")
        return order
    if unpadded_us:
        report.note("date order month-first (unpadded US-style dates)")
        return False
    report.note("date order day-first (ambiguous dates, default)")
    return True


def _zone(path: Path, name: str | None) -> tzinfo | None:
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError for odd keys, OSError
        raise ExportError(path, f"unknown timezone {name!r} (ingest timezone option)") from None


def _chat_name(path: Path) -> str:
    stem = path.stem
    if stem.lower() in _IOS_STEMS and path.parent.name:
        stem = path.parent.name
        if stem.lower().endswith(".zip"):
            stem = stem[:-4]
    m = _CHAT_NAME.match(stem.strip())
    return (m["name"] if m else stem).strip() or stem


# -- building messages --------------------------------------------------------------------------


class _Clock:
    """Local header fields -> (naive local time, UTC), with a one-entry cache and DST fold repair."""

    def __init__(self, day_first: bool, zone: tzinfo | None) -> None:
        self.day_first = day_first
        self.zone = zone
        self.last_key: tuple[str | None, ...] = ()
        self.last: tuple[datetime, datetime] | None = None
        self.last_utc: datetime | None = None
        self.offsets: dict[int, timedelta | None] = {}

    def convert(self, m: re.Match[str]) -> tuple[datetime, datetime] | None:
        key = m.group("a", "b", "c", "H", "M", "S", "ampm", "pre")
        if key == self.last_key:
            return self.last
        self.last_key, self.last = key, self._convert(m)
        if self.last is not None:
            self.last_utc = self.last[1]
        return self.last

    def _convert(self, m: re.Match[str]) -> tuple[datetime, datetime] | None:
        a, b, c = m["a"], int(m["b"]), m["c"]
        if len(a) == 4:
            year, month, day = int(a), b, int(c)
        else:
            if len(c) not in (2, 4):
                return None
            year = int(c) + (2000 if len(c) == 2 else 0)
            month, day = (b, int(a)) if self.day_first else (int(a), b)
        hour = int(m["H"])
        meridian = m["pre"] or m["ampm"]
        if meridian:
            if hour > 12:
                return None
            hour = hour % 12 + _AMPM[re.sub(r"[\s.\u00a0\u202f]", "", meridian).lower()]
        try:
            naive = datetime(year, month, day, hour, int(m["M"]), int(m["S"] or 0))
            off = self._hour_offset(naive)
            if off is not None:
                return naive, (naive - off).replace(tzinfo=UTC)
            utc = self._utc(naive, 0)
            if self.last_utc is not None and utc < self.last_utc:
                utc = self._utc(naive, 1)  # the second reading of a DST fall-back hour
        except (ValueError, OverflowError, OSError):
            return None
        return naive, utc

    def _utc(self, naive: datetime, fold: int) -> datetime:
        if self.zone is None:
            return naive.replace(fold=fold).astimezone(UTC)
        return naive.replace(tzinfo=self.zone, fold=fold).astimezone(UTC)

    def _hour_offset(self, naive: datetime) -> timedelta | None:
        """The UTC offset of this local hour when it is the same all through it, else None (DST)."""
        key = naive.toordinal() * 24 + naive.hour
        if key in self.offsets:
            return self.offsets[key]
        if len(self.offsets) > 100_000:
            self.offsets.clear()
        start = naive.replace(minute=0, second=0)
        end = start + timedelta(minutes=59, seconds=59)
        offsets = {t - self._utc(t, fold).replace(tzinfo=None) for t in (start, end) for fold in (0, 1)}
        off = offsets.pop() if len(offsets) == 1 else None
        self.offsets[key] = off
        return off


def _media_kind(fname: str) -> str:
    tag = _FNAME_TAG.search(fname.upper())
    if tag:
        return _PREFIX_KIND[tag.group(1)]
    return _EXT_KIND.get(fname.rsplit(".", 1)[-1].lower(), "file")


def _classify(text: str) -> tuple[str | None, str | None]:
    """(skip reason, None) for notices; (None, media what) for placeholders; (None, None) for text.

    `text` is the first line with WhatsApp's U+200E marker removed.
    """
    if len(text) <= 400:
        notice = _NOTICE.match(text)
        if notice:
            return _REASON[notice.lastgroup or "system"], None
    if text == "null" or (text[:1] == "<" and text.lower() in _MEDIA_OMITTED):
        return None, "media"
    if not text.endswith(_PLACEHOLDER_ENDS):
        return None, None
    m = _IOS_OMITTED.match(text)
    if m and (not m["fname"] or ("." in m["fname"] and _IOS_OMITTED_WORDS[m["what"].lower()] == "file")):
        return None, _IOS_OMITTED_WORDS[m["what"].lower()]
    m = _ATTACHED.match(text)
    if m:
        return None, _media_kind(m["ios"] or m["android"])
    return None, None


def _message(
    m: re.Match[str],
    rest: list[str],
    clock: _Clock,
    options: ParseOptions,
    report: ParseReport,
) -> Message | None:
    body = m.string[m.end() :]
    i = body.find(": ")
    if i < 0 and body.endswith(":") and not body.startswith("\u200e"):
        i = len(body) - 1
    # An odd number of quotes before ": " means the colon is inside a quoted group subject.
    if i <= 0 or (_QUOTE.search(body, 0, i) and len(_QUOTE.findall(body, 0, i)) % 2):
        report.skip(_classify(body.lstrip("\u200e"))[0] or "system line")
        return None
    when = clock.convert(m)
    if when is None:
        report.skip("malformed timestamp")
        return None
    author_raw = body[:i]
    author = author_raw.translate(_BIDI).strip()
    if not author:
        report.skip("system line")
        return None
    if author != author_raw.strip():
        report.note("bidi marks removed from author name")
    raw = body[i + 2 :]
    while rest and not rest[-1].strip():  # blank lines at the end of the file or before a notice
        rest.pop()
    if rest:
        raw = "\n".join([raw, *rest])
    text, edited = raw, False
    if "<" in text:
        e = _EDITED.search(text)
        if e:
            text, edited = text[: e.start()], True
    generated = text.startswith("\u200e")
    core = text.lstrip("\u200e")
    first, _, caption = core.partition("\n")
    skip, what = _classify(first.strip())
    if skip:
        report.skip(skip)
        return None
    kind = Kind.TEXT
    if what is not None:
        sticker = what == "sticker"
        shown = media_message(options, report, what, Kind.STICKER if sticker else Kind.MEDIA)
        caption = caption.strip("\n")
        if caption:
            text = caption if shown is None else f"{caption}\n{shown}"
        elif shown is None:
            return None
        else:
            text, kind = shown, Kind.STICKER if sticker else Kind.MEDIA
        if what == "media" and first.strip() == "null":
            report.note("view-once media shown as [media]")
    elif generated:
        if not _KEEP_GENERATED.match(core):
            report.skip("system line")
            return None
        text = core.replace("\n\u200e", "\n")
    if not text.strip():
        report.skip("empty message")
        return None
    return Message(
        id="",  # set by `parse` once the chat key is known
        author_id=author,
        author_name=author,
        timestamp=when[1],
        text=clip(text, options, report),
        kind=kind,
        edited=edited,
    )


def _messages(path: Path, clock: _Clock, options: ParseOptions, report: ParseReport) -> Iterator[Message]:
    cap = options.max_message_chars + 1
    head: re.Match[str] | None = None
    rest: list[str] = []
    size = 0
    with track(_open(path)) as f:  # the second pass: the one progress displays follow
        for line in _lines(path, f, report):
            m = _HEADER.match(line)
            if m is None:
                if head is None:
                    if line.strip():
                        report.skip("line before first message")
                elif size < cap:
                    rest.append(line)
                    size += len(line) + 1
                continue
            if head is not None:
                msg = _message(head, rest, clock, options, report)
                if msg is not None:
                    yield msg
            # Only the continuation lines count towards the cap: the header and name are not text.
            head, rest, size = m, [], 0
        if head is not None:
            msg = _message(head, rest, clock, options, report)
            if msg is not None:
                yield msg


def _keyed(chat: str, messages: Iterator[Message]) -> tuple[str, Iterator[Message]]:
    """The chat key (from the first messages; the chat name when there are none) and the messages with
    their ids set."""
    first = list(itertools.islice(messages, ANCHOR))
    key = chat_key([(ms(m.timestamp) // MINUTE_MS, key_text(m.text)) for m in first if m.timestamp]) or chat
    keys = MessageKeys(key)

    def keyed() -> Iterator[Message]:
        for m in itertools.chain(first, messages):
            assert m.timestamp is not None  # every WhatsApp message has a time
            # The Message was built by `_message` a moment ago and is seen by no one else yet.
            object.__setattr__(m, "id", keys(ms(m.timestamp), m.text))
            yield m

    return key, keyed()


def parse(path: Path, options: ParseOptions, report: ParseReport) -> Iterator[Conversation]:
    """One conversation (in slices) per export file, messages in file order."""
    zone = _zone(path, options.timezone)
    day_first = _day_first(path, options, report)
    if zone is None:
        report.note(LOCAL_TIME_NOTE)
    chat = _chat_name(path)
    clock = _Clock(day_first, zone)
    key, messages = _keyed(chat, _messages(path, clock, options, report))
    template = Conversation(source=FORMAT, id=key, title=chat, kind="chat", messages=())
    yield from in_slices(template, messages, options, report)
