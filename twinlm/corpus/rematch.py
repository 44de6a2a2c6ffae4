"""Which chat already in the corpus a WhatsApp export re-exports, and in which time zone it was made.

WhatsApp exports carry no ids (see `twinlm.sources.whatsapp_keys`). The parser keys a chat on its first
messages, which is enough when the earlier export started at the same message and was made in the same
time zone. The rest is decided here, once per export file: its first `ANCHOR` messages are looked up
among the WhatsApp messages already in the corpus within 26 hours of them (one query on a partial
index), at one whole number of quarter hours apart (every time zone's distance from UTC):

- the parser's key is a chat already there: the same chat; a non-zero offset means the export was
  made in another time zone, and its messages are re-keyed and re-timed onto the earlier clock.
- another chat holds at least `SURE` of those messages at one offset (and no other chat as many): the
  same chat, exported from a later start (WhatsApp keeps only the newest 40,000 messages) or after
  it grew past a few messages; re-keyed onto it.
- an export of fewer than `SURE` messages, all in one chat that has no others near them: that chat.
- fewer alike than that: not certain. The export stays a chat of its own and a counted note names
  the file, the candidate chat and the command that merges them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from itertools import chain

from twinlm.corpus.db import Corpus
from twinlm.model import Conversation, ParseReport
from twinlm.sources.whatsapp_keys import ANCHOR, MINUTE_MS, MessageKeys, key_text, ms

SURE = 3  # first messages alike (texts, gaps, one offset) for a match without asking
_MAX_OFFSET = 26 * 60  # minutes: UTC-12 to UTC+14

Anchor = list[tuple[int, str]]  # (UTC minute, key text) of a chat's first messages


class ChatMatcher:
    """Maps each WhatsApp export of one import onto the chat it re-exports, if any."""

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus

    def align(self, name: str, slices: Iterator[Conversation], report: ParseReport) -> Iterator[Conversation]:
        """The parser's slices of one export, re-keyed and re-timed onto the chat already in the corpus
        that it re-exports (if any)."""
        first = next(slices, None)
        if first is None:
            return
        anchor = [
            (ms(m.timestamp) // MINUTE_MS, key_text(m.text)) for m in first.messages[:ANCHOR] if m.timestamp
        ]
        matched = self._match(name, first, anchor, report)
        if matched is None:
            yield first
            yield from slices
            return
        target, offset = matched
        if offset:
            report.note("export made in another time zone: re-timed onto the earlier export of the chat")
        elif target != first.id:
            report.note("export of a chat already in the corpus from another start: matched")
        keys = MessageKeys(target)
        current = offset
        for part in chain((first,), slices):
            held = _Held(self._rows(target, part, offset))
            messages = []
            for m in part.messages:
                if m.timestamp is None:  # never from the WhatsApp parser
                    messages.append(m)
                    continue
                if not current and target == part.id and m.id in held.ids:
                    messages.append(m)  # the row is there under the parser's own id: the common case
                    continue
                t = ms(m.timestamp)
                minute, text = t // MINUTE_MS, key_text(m.text)
                # The offset is the same for the whole export except where the two zones' daylight saving
                # rules differ (a few weeks a year): there it is an hour off, which the corpus shows.
                pairs = held.pairs()
                if (minute + current, text) not in pairs:
                    current = next((o for o in _near(offset) if (minute + o, text) in pairs), current)
                if not current and target == part.id:
                    messages.append(m)  # the parser's own id and time are this chat's already
                    continue
                keys.offset = current
                new_id = keys(t, m.text)
                messages.append(replace(m, id=new_id, timestamp=m.timestamp + timedelta(minutes=current)))
            changed = target != part.id or any(
                a is not b for a, b in zip(messages, part.messages, strict=True)
            )
            yield replace(part, id=target, messages=tuple(messages)) if changed else part

    def _rows(self, target: str, part: Conversation, offset: int) -> list[tuple[int, str, str]]:
        """(time, text, native id) of the target chat's messages around this slice's: one indexed query."""
        minutes = [ms(m.timestamp) // MINUTE_MS for m in part.messages if m.timestamp is not None]
        if not minutes:
            return []
        lo, hi = min(minutes) + offset - 120, max(minutes) + offset + 120
        row = self.corpus.db.execute(
            "SELECT id FROM conversations WHERE source = 'whatsapp' AND native_id = ?", (target,)
        ).fetchone()
        if row is None:
            return []
        return self.corpus.db.execute(
            "SELECT ts, text, native_id FROM messages INDEXED BY messages_whatsapp_ts "
            "WHERE source = 'whatsapp' AND ts BETWEEN ? AND ? AND conversation = ?",
            (lo * MINUTE_MS, (hi + 1) * MINUTE_MS - 1, row[0]),
        ).fetchall()

    def _match(
        self, name: str, first: Conversation, anchor: Anchor, report: ParseReport
    ) -> tuple[str, int] | None:
        """(chat already in the corpus, minutes to add to the export's times), or None: a chat of its own."""
        if not anchor:
            return None
        alike = _alike(self.corpus, anchor)  # native id -> (title, messages alike, offset)
        own = alike.get(first.id)
        if own is not None:  # the parser's own key: the same chat; only the clock may differ
            return first.id, own[2]
        ranked = sorted(
            ((n, -abs(o), o, cid, title, size) for cid, (title, n, o, size) in alike.items()), reverse=True
        )
        if ranked and (len(ranked) == 1 or ranked[1][0] < ranked[0][0]):
            n, _, offset, native_id, _, size = ranked[0]
            # Enough alike; or a chat too short for that whose every message is this export's, and no more.
            if n >= SURE or n == len(anchor) == size:
                return native_id, offset
        for n, _, _, native_id, title, _ in ranked:
            report.note(
                f"{name} may be the same chat as the WhatsApp chat {title!r} ({n} of its first "
                f"{len(anchor)} messages alike); kept apart. If it is the same chat, merge them: "
                f"twinlm join-chats whatsapp:{first.id} whatsapp:{native_id}"
            )
        return None


class _Held:
    """A chat's rows near one slice: their ids, and (minute, key text) pairs built on first need."""

    def __init__(self, rows: list[tuple[int, str, str]]) -> None:
        self.rows = rows
        self.ids = {native_id for _, _, native_id in rows}
        self._pairs: set[tuple[int, str]] | None = None

    def pairs(self) -> set[tuple[int, str]]:
        if self._pairs is None:
            self._pairs = {(ts // MINUTE_MS, key_text(text)) for ts, text, _ in self.rows}
        return self._pairs


def _near(offset: int) -> tuple[int, ...]:
    return (offset, offset - 60, offset + 60, offset - 30, offset + 30)


def _alike(corpus: Corpus, anchor: Anchor) -> dict[str, tuple[str, int, int, int]]:
    """Per WhatsApp chat that has messages near the anchor's: (title, anchor messages it holds at one
    offset, that offset in minutes, its messages near the anchor); the best offset by count, then by
    nearness. One indexed query."""
    minutes = [minute for minute, _ in anchor]
    lo, hi = min(minutes) - _MAX_OFFSET, max(minutes) + _MAX_OFFSET
    by_row: dict[int, set[tuple[int, str]]] = {}
    for conversation, ts, text in corpus.db.execute(
        # Named: without statistics the planner would take the (source, native id) index and read every
        # WhatsApp row. Twinlm's schema creates it on every open (twinlm/corpus/db.py).
        "SELECT conversation, ts, text FROM messages INDEXED BY messages_whatsapp_ts "
        "WHERE source = 'whatsapp' AND ts BETWEEN ? AND ? AND superseded_by_import IS NULL",
        (lo * MINUTE_MS, (hi + 1) * MINUTE_MS - 1),
    ):
        by_row.setdefault(conversation, set()).add((ts // MINUTE_MS, key_text(text)))
    near: dict[str, tuple[str, set[tuple[int, str]]]] = {}
    for row_id, pairs in by_row.items():
        native_id, title = corpus.db.execute(
            "SELECT native_id, title FROM conversations WHERE id = ?", (row_id,)
        ).fetchone()
        near[native_id] = (title, pairs)
    found: dict[str, tuple[str, int, int, int]] = {}
    for native_id, (title, rows) in near.items():
        offsets = {
            minute - a_minute
            for minute, text in rows
            for a_minute, a_text in anchor
            if text == a_text and (minute - a_minute) % 15 == 0 and abs(minute - a_minute) <= _MAX_OFFSET
        }
        best = max(
            ((sum((m + off, t) in rows for m, t in anchor), -abs(off), off) for off in offsets), default=None
        )
        if best is not None and best[0]:
            found[native_id] = (title, best[0], best[2], len(rows))
    return found
