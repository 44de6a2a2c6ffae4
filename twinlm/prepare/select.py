"""Read the corpus for a build: conversations in a stable order, the user's exclusions and edits applied.

Conversations are read one at a time, each from its runs of rows by id range (no sort of the whole
corpus; see _RUNS): memory holds one conversation, or a streamed part of a very long one. Speakers are
resolved to people here (`me`, a canonical name from twin.yaml, or the display name), so every later
step sees one name per person.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import orjson

from twinlm.corpus.db import Corpus
from twinlm.identities import Resolver


class Line(NamedTuple):
    """One message as the build sees it: who (resolved), what (the user's edit if any), when, what kind.

    A named tuple, not a frozen dataclass: one is made per message, and a frozen dataclass's __init__
    (an object.__setattr__ per field) cost several times a tuple's (issue 18)."""

    speaker: str  # a person's canonical name; ME for the user
    author_name: str  # as the export showed it
    text: str
    kind: str  # text | media | sticker | document
    role: str  # user | assistant | system | tool | participant
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class Chat:
    key: str  # "source:native id": stable, used for ids and the train/eval split
    source: str
    kind: str  # chat | assistant | document | dataset
    title: str
    platform_detail: str
    participants: tuple[str, ...]
    system_prompt: str | None
    # A tuple; from `chats(..., stream_over=N)`, for a conversation of more than N messages already in
    # time order, a one-pass iterator read from the database as it is used (before the next chat).
    lines: tuple[Line, ...] | Iterable[Line]
    # Who speaks in `lines`, noted as each is read: whole once they are (a streamed chat's as it goes).
    speakers: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Reading:
    """How far a read of the corpus is, for a progress bar: the messages read so far of those the read
    takes (`total`, set when `chats` starts; `done` counts each row as it is read)."""

    total: int = 0
    done: int = 0


# Ingest writes a conversation's messages together, so in id order they lie in a few runs of rows (one
# per export that added to it). The build reads each conversation's runs by id range, in conversation
# order: SQLite never sorts the messages (which held every row, text included, in its sorter: ~1 us a
# message, and temporary files the size of the corpus). A corpus whose conversations interleave row by row
# (more runs than RUNS_PER_CONVERSATION each) is read with the one sorted query instead.
_RUNS = "SELECT conversation, id FROM messages ORDER BY id"  # the table's own order: no sort
RUNS_PER_CONVERSATION = 8
_CONVERSATIONS = """
SELECT c.id, c.source, c.native_id, c.kind, c.title, c.platform_detail, c.participants, c.system_prompt
FROM conversations AS c WHERE NOT c.excluded {where} ORDER BY c.source, c.native_id
"""
# A run's messages that the build reads: (first id, last id, conversation) bound.
_IN_RUN = "id BETWEEN ? AND ? AND conversation = ? AND NOT excluded AND superseded_by_import IS NULL"
_RUN_ROWS = f"""
SELECT author_id, author_name, coalesce(user_text, text), kind, role, ts FROM messages
WHERE {_IN_RUN} ORDER BY id
"""
_RUN_TIMES = f"SELECT ts FROM messages WHERE {_IN_RUN} AND ts IS NOT NULL ORDER BY id"
# The fallback: every message in conversation order, sorted by SQLite. Only the message's own columns
# per row: the conversation's are read once per conversation (_CONVERSATION).
_QUERY = """
SELECT m.conversation, m.author_id, m.author_name, coalesce(m.user_text, m.text), m.kind, m.role, m.ts
FROM messages AS m JOIN conversations AS c ON c.id = m.conversation
WHERE NOT c.excluded AND NOT m.excluded AND m.superseded_by_import IS NULL {where}
ORDER BY c.source, c.native_id, m.id
"""
_CONVERSATION = """
SELECT c.id, c.source, c.native_id, c.kind, c.title, c.platform_detail, c.participants, c.system_prompt
FROM conversations AS c WHERE c.id = ?
"""

# Conversations whose rows (in id order) are not in time order: a message older than one before it.
_UNORDERED = """
SELECT DISTINCT conversation FROM (
    SELECT m.conversation, m.ts, max(m.ts) OVER (
        PARTITION BY m.conversation ORDER BY m.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
    ) AS before
    FROM messages AS m JOIN conversations AS c ON c.id = m.conversation
    WHERE NOT c.excluded AND NOT m.excluded AND m.superseded_by_import IS NULL
) WHERE ts < before
"""

READ_CACHE_SIZE = -8192  # KiB (negative: a size, not pages), while the build reads the corpus

# The user's own choices in the corpus, counted in the build report, and the messages no longer in the
# newest export of their conversation (twinlm/corpus/supersede.py). The messages' three in one scan of
# the table instead of three (a third of a second a million messages).
_CONVERSATIONS_EXCLUDED = "SELECT count(*) FROM conversations WHERE excluded"
_MESSAGE_COUNTS = """
SELECT count(CASE WHEN excluded THEN 1 END), count(user_text), count(superseded_by_import),
    count(CASE WHEN NOT excluded AND superseded_by_import IS NULL THEN 1 END)
FROM messages
"""
# Of the messages a read would take, those in conversations it leaves out (excluded, or of a source not
# asked for): asked only when there are such conversations (a join costs half as much again as the scan).
_LEFT_OUT = """
SELECT count(*) FROM messages AS m JOIN conversations AS c ON c.id = m.conversation
WHERE NOT m.excluded AND m.superseded_by_import IS NULL AND NOT (NOT c.excluded {where})
"""


def _in_time_order(lines: list[Line]) -> list[Line]:
    """`lines` (in row order: the order each export's parser gave them, exports in ingest order) sorted
    by time. Equal times keep the row order, and a line without a time (a ChatGPT node without
    `create_time`) stays right after the line before it instead of moving to the end."""
    times = [line.timestamp_ms for line in lines]
    if None not in times and all(map(operator.le, times, itertools.islice(times, 1, None))):
        return lines  # the usual case: one export, already in time order (checked in C)
    keys: list[float] = []
    last = float("-inf")
    ordered = True
    for line in lines:
        ts = line.timestamp_ms
        if ts is not None:
            ordered = ordered and ts >= last
            last = ts
        keys.append(last)
    if ordered:  # the usual case: one export, already in time order
        return lines
    order = sorted(range(len(lines)), key=keys.__getitem__)  # stable: ties keep the row order
    return [lines[i] for i in order]


def chats(
    corpus: Corpus,
    resolve: Resolver,
    counts: Counter[str],
    sources: list[str] | None = None,
    *,
    stream_over: int | None = None,
    reading: Reading | None = None,
) -> Iterator[Chat]:
    """Every conversation with its messages in time order (see `_in_time_order` for ties and gaps).

    With `stream_over`, a conversation of more messages than that comes with its lines as an iterator
    when its rows are already in time order (one export: the usual case), so a chat of millions of
    messages is never held whole; read it before asking for the next chat. One out of order is sorted
    whole as always. `reading` follows the read: its total is set before the first chat comes."""
    where, params = "", ()
    if sources:
        where = f"AND c.source IN ({','.join('?' * len(sources))})"
        params = tuple(sources)
    excluded_conversations = int(corpus.db.execute(_CONVERSATIONS_EXCLUDED).fetchone()[0])
    counts["conversations excluded by you"] += excluded_conversations
    excluded, edited, superseded, kept = map(int, corpus.db.execute(_MESSAGE_COUNTS).fetchone())
    counts["messages excluded by you"] += excluded
    counts["messages edited by you"] += edited
    if superseded:
        counts["messages superseded by a newer export"] += superseded
    reading = reading if reading is not None else Reading()
    if excluded_conversations or sources:
        kept -= int(corpus.db.execute(_LEFT_OUT.format(where=where), params).fetchone()[0])
    reading.total, reading.done = kept, 0
    # SQLite's page cache (and, for a corpus read with the sorted query, its sorter) each take up to the
    # cache size: read with a small one, so that a build's memory does not grow with the corpus (a sort
    # spills to temporary files instead).
    (cache_size,) = corpus.db.execute("PRAGMA cache_size").fetchone()
    corpus.db.execute(f"PRAGMA cache_size = {READ_CACHE_SIZE}")
    try:
        yield from _chats(corpus, resolve, where, params, stream_over, reading)
    finally:
        corpus.db.execute(f"PRAGMA cache_size = {int(cache_size)}")


def _chats(
    corpus: Corpus,
    resolve: Resolver,
    where: str,
    params: tuple[str, ...],
    stream_over: int | None,
    reading: Reading,
) -> Iterator[Chat]:
    # One speaker per account (source, author id), whatever name each message shows: `resolve` sees
    # the account's first message, so give it one that knows every name (Identities.speaker).
    names: dict[str, dict[str, str]] = {}  # source -> author id -> speaker
    for conversation, rows, in_time_order in _conversations(corpus, where, params):
        _, source, native_id, kind, title, detail, participants, system_prompt = conversation
        speakers: set[str] = set()
        rest = _lines(rows, source, names.setdefault(source, {}), resolve, speakers, reading)
        lines: tuple[Line, ...] | Iterable[Line] = list(
            rest if stream_over is None else itertools.islice(rest, stream_over + 1)
        )
        if not lines:  # every message excluded or superseded
            continue
        if stream_over is not None and len(lines) > stream_over:
            lines = itertools.chain(lines, rest) if in_time_order() else [*lines, *rest]
        if isinstance(lines, list):
            lines = tuple(_in_time_order(lines))
        yield Chat(
            key=f"{source}:{native_id}",
            source=source,
            kind=kind,
            title=title,
            platform_detail=detail,
            participants=tuple(orjson.loads(participants)),
            system_prompt=system_prompt,
            lines=lines,
            speakers=speakers,
        )


# A message row as _lines reads it: author id, author name, text, kind, role, time.
_Row = tuple[str, str, str, str, str, int | None]


def _conversations(
    corpus: Corpus, where: str, params: tuple[str, ...]
) -> Iterator[tuple[tuple, Iterator[_Row], Callable[[], bool]]]:
    """(conversation row, its message rows in id order, whether those are in time order: asked only of
    a chat long enough to stream), conversations in (source, native id) order."""
    db = corpus.db
    runs = _runs(corpus)
    if runs is None:
        unordered: set[int] | None = None  # read once, at the first conversation long enough to stream

        def in_time_order(conversation: int) -> bool:
            nonlocal unordered
            if unordered is None:
                unordered = {row[0] for row in db.execute(_UNORDERED)}
            return conversation not in unordered

        rows = db.execute(_QUERY.format(where=where), params)
        for conversation, group in itertools.groupby(rows, key=operator.itemgetter(0)):
            yield (
                db.execute(_CONVERSATION, (conversation,)).fetchone(),
                map(operator.itemgetter(slice(1, None)), group),
                functools.partial(in_time_order, conversation),
            )
        return
    for conversation in db.execute(_CONVERSATIONS.format(where=where), params):
        ranges = runs.get(conversation[0], [])
        yield (
            conversation,
            itertools.chain.from_iterable(db.execute(_RUN_ROWS, (a, b, conversation[0])) for a, b in ranges),
            functools.partial(_runs_in_time_order, corpus, conversation[0], ranges),
        )


def _runs_in_time_order(corpus: Corpus, conversation: int, ranges: list[tuple[int, int]]) -> bool:
    """Whether the conversation's times never go back in id order (those without a time left out), read a
    block of times at a time: for a long chat, instead of _UNORDERED's sort of every message."""
    last = -(1 << 63)
    for first, final in ranges:
        cursor = corpus.db.execute(_RUN_TIMES, (first, final, conversation))
        while block := cursor.fetchmany(1 << 16):
            times = np.fromiter(itertools.chain.from_iterable(block), dtype=np.int64, count=len(block))
            if times[0] < last or bool((times[1:] < times[:-1]).any()):
                return False
            last = int(times[-1])
    return True


def _runs(corpus: Corpus) -> dict[int, list[tuple[int, int]]] | None:
    """Each conversation's runs of consecutive rows in id order, (first id, last id); None when there
    are more than RUNS_PER_CONVERSATION a conversation (interleaved rows: read sorted instead)."""
    (conversations,) = corpus.db.execute("SELECT count(*) FROM conversations").fetchone()
    most = RUNS_PER_CONVERSATION * conversations
    runs: dict[int, list[tuple[int, int]]] = {}
    rows = itertools.groupby(corpus.db.execute(_RUNS), key=operator.itemgetter(0))
    for found, (conversation, run) in enumerate(rows, start=1):
        first = next(run)[1]
        last = deque(run, maxlen=1)  # the run's last row, read through in C
        runs.setdefault(conversation, []).append((first, last[0][1] if last else first))
        if found > most:
            return None
    return runs


def _lines(
    rows: Iterable[tuple],
    source: str,
    names: dict[str, str],
    resolve: Resolver,
    speakers: set[str],
    reading: Reading,
) -> Iterator[Line]:
    """The conversation's rows as Lines (one a message: kept to a tuple and a dict lookup), each speaker
    noted in `speakers`, each row counted in `reading`."""
    new = tuple.__new__
    noted = speakers.add
    for author_id, author_name, text, kind, role, ts in rows:
        reading.done += 1
        speaker = names.get(author_id)
        if speaker is None:
            speaker = names[author_id] = resolve(source, author_id, author_name) or author_name
        noted(speaker)
        yield new(Line, (speaker, author_name, text, kind, role, ts))
