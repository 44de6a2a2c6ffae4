"""Facebook Messenger and Instagram `message_N.json` (Download Your Information, JSON).

Shape::

    {"participants": [{"name"}], "messages": [{"sender_name", "timestamp_ms", "content", "type",
     "photos", "videos", "gifs", "audio_files", "files", "sticker", "share", "reactions",
     "is_unsent", "call_duration", "users", ...}, ...],
     "title", "is_still_participant", "thread_type", "thread_path", "magic_words", ...}

A long thread is split over message_1.json, message_2.json, ..., each NEWEST-first; the ingest
layer parses each file on its own, so every file of a thread must give the same conversation id:
the thread folder from `thread_path` ("inbox/alice_1234" -> "alice_1234"), or, for Instagram files
without `thread_path`, a hash of the sorted participant names and the title.

All text is UTF-8 that Facebook wrote out as latin-1 code points ("Ã©" for "é"): every string is
repaired with `fix_mojibake`. Message ids do not exist in these exports; they are derived from what
survives a re-export (`message_id`): the thread, the time in whole seconds (2018-era files give
`timestamp` in seconds, later ones `timestamp_ms`), the text with its media placeholders and which
occurrence of that (second, text) it is in the thread; never the sender's display name, which
changes when the sender renames their profile.

Each file is one part of one thread, which a later export holds whole: see SUPERSEDING in
twinlm/corpus/db.py (the span between a file's first and last message).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ijson

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport, utc_from_ms
from twinlm.sources._common import (
    clip,
    fix_mojibake,
    in_slices,
    json_events,
    media_message,
    open_json,
    placeholder,
    stable_id,
)

FORMAT = "messenger"

_PARTICIPANTS_KEY = re.compile(r'"participants"\s*:\s*\[')
_MARKERS = ('"sender_name"', '"timestamp_ms"', '"thread_path"', '"is_still_participant"', '"magic_words"')
_MAX_DEPTH_CHARS = 2_000  # an event prefix longer than this is absurd nesting, not an export

# Media keys in the order their placeholders are written.
_MEDIA_KEYS = (
    ("photos", "photo"),
    ("videos", "video"),
    ("gifs", "GIF"),
    ("audio_files", "voice message"),
    ("files", "file"),
)
_SERVICE_TYPES = {"Subscribe": "joined", "Unsubscribe": "left"}

# Texts that Facebook/Instagram generate (they are not typed by anyone). Only whole-text matches of
# known templates count, and the templates that name a person must start with this message's
# sender (full or first name, or "You", the exporting user), so a typed sentence is never taken
# for a notice.
_ATTACHMENT_NOTICE = re.compile(
    r"sent (?:an attachment|a photo|\d+ photos|a video|\d+ videos|a GIF|a gif|a sticker|a voice message"
    r"|an audio clip|a link|a file|a location|a live location|a post|a reel)\."
)
_REACTION = r"[Rr]eacted .{1,24} to (?:your|a|their|his|her) message\s*|[Ll]iked a message\s*"
_REACTION_NOTICE = re.compile(_REACTION, re.DOTALL)
_EVENT_NOTICE = re.compile(
    "|".join(
        (
            r"named the group .+\.",
            r"(?:changed|removed) the group (?:photo|name)\.",
            r"set the nickname for .+ to .+\.",
            r"set (?:your|his|her|their|the) (?:own )?nickname to .+\.",
            r"cleared (?:the|your|his|her|their) (?:own )?nickname(?: for .+)?\.",
            r"changed the (?:chat )?theme(?: to .+)?\.",
            r"(?:set|changed) the (?:emoji|quick reaction)(?: to .+)?\.",
            r"started (?:a video chat|an audio call|a video call|a call|sharing video)\.",
            r"joined the (?:video chat|call)\.",
            r"missed (?:a|your) (?:video )?(?:call|chat)(?: from .+)?\.",
            r"left the group\.",
            r"added .+ to the group\.",
            r"removed .+ from the group\.",
            r"created the group\.",
            r"(?:pinned|unpinned) a message\.",
            r"unsent a message\.",
            r"waved at .+",
        )
    ),
    re.DOTALL,
)
_STANDALONE_NOTICE = re.compile(
    r"You are now connected on Messenger\.|Say hi to your new Facebook friend, .+\.|"
    r"The (?:video chat|call) ended\.|(?:Audio|Video) call ended\.?",
    re.DOTALL,
)


def looks_like(head: str, path: Path) -> bool:
    """A JSON object with a `participants` array and Facebook's message/thread keys."""
    if not head.lstrip().startswith("{") or not _PARTICIPANTS_KEY.search(head):
        return False
    return any(marker in head for marker in _MARKERS)


@dataclass(slots=True)
class _Pending:
    """One kept message before the thread id (which follows the messages in the file) is known."""

    timestamp_ms: int
    sender: str
    text: str  # unclipped; media placeholders included
    kind: Kind
    key: str  # the text for the message id: content and media, whatever options.media says


@dataclass(slots=True)
class _Thread:
    participants: list[str]
    title: str | None = None
    thread_path: str | None = None
    thread_type: str | None = None
    still_participant: bool | None = None


def parse(path: Path, options: ParseOptions, report: ParseReport) -> Iterator[Conversation]:
    try:
        thread, pending = _read(path, options, report)
    except UnicodeDecodeError as e:
        raise ExportError(path, "not UTF-8 text", f"byte {e.start}") from None
    except RecursionError:
        raise ExportError(path, "JSON nested too deeply") from None

    participants = _repaired_all(thread.participants, report)
    title = _repaired(thread.title, report) if thread.title else ""
    conversation_id = _conversation_id(thread, participants, title)
    group = thread.thread_type == "RegularGroup" or len(participants) > 2
    detail = "group chat" if group else "chat"
    if thread.still_participant is False:
        detail += " (no longer a participant)"
    template = Conversation(
        source=FORMAT,
        id=conversation_id,
        title=title or ", ".join(participants) or conversation_id,
        kind="chat",
        messages=(),
        participants=tuple(participants),
        platform_detail=detail,
    )
    # The file is newest-first; a stable sort on the time gives oldest-first and keeps the export's
    # order for equal times (reversed, since it was newest-first).
    pending.reverse()
    pending.sort(key=lambda p: p.timestamp_ms)
    yield from in_slices(template, _messages(conversation_id, pending, options, report), options, report)


def _read(path: Path, options: ParseOptions, report: ParseReport) -> tuple[_Thread, list[_Pending]]:
    """One pass over the file's events: thread fields, and each message converted as it completes.

    The messages must be buffered anyway to reverse their newest-first order (and the thread id,
    needed for message ids, comes after them). Facebook caps a message_N.json at about 10,000
    messages, so one file's messages, kept as small `_Pending` records, fit in memory.
    """
    thread = _Thread(participants=[])
    pending: list[_Pending] = []
    saw_messages = False
    builder: ijson.ObjectBuilder | None = None
    with open_json(path) as f:
        events = json_events(path, f)
        first = next(events, None)
        if first is None or first[1] != "start_map":
            raise ExportError(path, "not a Messenger/Instagram export: top level is not an object", "byte 0")
        index = 0
        for prefix, event, value in events:
            if len(prefix) > _MAX_DEPTH_CHARS:
                raise ExportError(path, "JSON nested too deeply", f"byte {f.tell()}")
            if builder is not None:
                if prefix == "messages.item" and event in ("end_map", "end_array"):
                    builder.event(event, value)
                    _convert(builder.value, pending, options, report)
                    builder = None
                    index += 1
                else:
                    builder.event(event, value)
            elif prefix == "messages.item":
                if event in ("start_map", "start_array"):
                    builder = ijson.ObjectBuilder()
                    builder.event(event, value)
                else:
                    report.skip("malformed message")
                    index += 1
            elif prefix == "messages" and event == "start_array":
                saw_messages = True
            elif prefix in ("participants.item.name", "participants.item") and event == "string":
                thread.participants.append(value)
            elif prefix in ("title", "thread_path", "thread_type") and event == "string":
                setattr(thread, prefix, value)
            elif prefix == "is_still_participant" and event == "boolean":
                thread.still_participant = value
    if not saw_messages:
        raise ExportError(path, "not a Messenger/Instagram export: no messages array")
    return thread, pending


def _convert(raw: Any, pending: list[_Pending], options: ParseOptions, report: ParseReport) -> None:
    try:
        item = _pending(raw, options, report)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, OSError):
        report.skip("malformed message")
        return
    if item is not None:
        pending.append(item)


def _pending(raw: Any, options: ParseOptions, report: ParseReport) -> _Pending | None:
    if not isinstance(raw, dict):
        report.skip("malformed message")
        return None
    sender_raw = raw.get("sender_name")
    ms = raw.get("timestamp_ms")
    if ms is None and _number(raw.get("timestamp")):
        ms = raw["timestamp"] * 1000  # 2018-era exports: seconds, no timestamp_ms
    if not isinstance(sender_raw, str) or not _number(ms):
        report.skip("malformed message")
        return None
    ms = int(ms)
    utc_from_ms(ms)  # raises (counted as malformed) for times no datetime can hold
    mtype = raw.get("type")
    mtype = mtype if isinstance(mtype, str) and mtype else "Generic"
    if raw.get("is_unsent") is True:
        report.skip("unsent message")
        return None
    if mtype == "Call" or "call_duration" in raw:
        report.skip("call")
        return None
    if mtype not in ("Generic", "Share"):
        what = _SERVICE_TYPES.get(mtype, mtype.lower()[:40])
        report.skip(f"service message ({what})")
        return None

    content_raw = raw.get("content")
    content_raw = content_raw if isinstance(content_raw, str) else ""
    sender = fix_mojibake(sender_raw)
    content = fix_mojibake(content_raw)
    if sender != sender_raw or content != content_raw:
        report.note("mojibake repaired")
    sender = sender or "(unknown)"

    media = [what for key, what in _MEDIA_KEYS if _non_empty(raw.get(key))]
    if _non_empty(raw.get("sticker")):
        media.append("sticker")
    share = raw.get("share")
    link = share.get("link") if isinstance(share, dict) else None
    link = fix_mojibake(link) if isinstance(link, str) and link.strip() else None

    notice = _notice(content, sender)
    if notice == "attachment":
        content = ""  # "Alice sent a photo." stands for the attachment itself
    elif notice is not None:
        report.skip(f"service message ({notice})")
        return None

    if content.strip():
        with_media = "\n".join([content, *(placeholder(m) for m in media)])
        text = with_media
        if media and options.media == "drop":
            report.note("media placeholder dropped from a text message")
            text = content
        return _Pending(ms, sender, text, Kind.TEXT, with_media)
    if link is not None:
        return _Pending(ms, sender, link, Kind.TEXT, link)
    if not media and isinstance(share, dict) and share:
        media.append("shared content")  # a live location or an expired post: no link, no text
    if media:
        if media_message(options, report, media[0]) is None:
            return None
        kind = Kind.STICKER if media == ["sticker"] else Kind.MEDIA
        text = "\n".join(placeholder(m) for m in media)
        return _Pending(ms, sender, text, kind, text)
    if notice == "attachment":
        report.skip("service message (attachment notice)")
    else:
        report.skip("empty message")
    return None


def _notice(content: str, sender: str) -> str | None:
    """ "attachment", "reaction" or "event" when `content` is a text Facebook generated, else None."""
    text = content.strip()
    if not text or len(text) > 300:
        return None
    if _REACTION_NOTICE.fullmatch(text):
        return "reaction"
    if _STANDALONE_NOTICE.fullmatch(text):
        return "event"
    first_name = sender.split(maxsplit=1)[0] if sender.strip() else ""
    for who in ("You", sender, first_name):  # notices name the sender by full or first name
        if not who or not text.startswith(who + " "):
            continue
        rest = text[len(who) + 1 :]
        if _ATTACHMENT_NOTICE.fullmatch(rest):
            return "attachment"
        if _REACTION_NOTICE.fullmatch(rest):
            return "reaction"
        if _EVENT_NOTICE.fullmatch(rest):
            return "event"
    return None


def _messages(
    conversation_id: str, pending: list[_Pending], options: ParseOptions, report: ParseReport
) -> Iterator[Message]:
    seen: Counter[tuple[int, str]] = Counter()
    for p in pending:
        key = (p.timestamp_ms // 1000, p.key)
        occurrence = seen[key]
        seen[key] += 1
        yield Message(
            id=message_id(conversation_id, p.timestamp_ms, p.key, occurrence),
            author_id=p.sender,
            author_name=p.sender,
            timestamp=utc_from_ms(p.timestamp_ms),
            text=clip(p.text, options, report),
            kind=p.kind,
        )


def message_id(conversation_id: str, timestamp_ms: int, text: str, occurrence: int) -> str:
    """The id of the `occurrence`-th message with this text in this second of the thread."""
    return stable_id(conversation_id, timestamp_ms // 1000, text, occurrence)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _conversation_id(thread: _Thread, participants: list[str], title: str) -> str:
    """The thread folder name from `thread_path`, without its mailbox ("inbox/", "archived_threads/",
    "message_requests/"... which change when a chat is archived), else a hash of who and what."""
    if thread.thread_path and thread.thread_path.strip("/ "):
        return fix_mojibake(thread.thread_path.strip("/ ").rsplit("/", 1)[-1])
    return "thread-" + stable_id("participants", *sorted(participants), "title", title)


def _non_empty(value: Any) -> bool:
    return bool(value) and isinstance(value, list | dict)


def _repaired(text: str, report: ParseReport) -> str:
    fixed = fix_mojibake(text)
    if fixed != text:
        report.note("mojibake repaired")
    return fixed


def _repaired_all(texts: list[str], report: ParseReport) -> list[str]:
    return [_repaired(t, report) for t in texts]
