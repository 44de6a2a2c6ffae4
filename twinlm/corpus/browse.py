"""Finding conversations and messages to curate: selectors, a paginated listing and full-text search.

The corpus has no secondary index on messages on purpose (each costs ingest speed, and the build scans the
whole table anyway). Curating a big corpus needs two, made on first use (`prepare`) rather than by every
ingest: `curate_messages_by_conversation`, an index on the expression `conversation + 0` so that only the
queries here (which spell it that way) use it and no plan of the build or the ingest changes; and
`message_search`, an FTS5 index of each message's text as trained (the user's edit, else the export's),
brought up to date before each search from the highest message id it holds (new imports only append).
A correlated subquery spells the conversation `c.id + 0` too: compared with the column `c.id`, the
expression would take the column's integer affinity and SQLite would scan instead of using the index.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from twinlm.config import TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.corpus.queries import account_names, owners
from twinlm.errors import TwinError
from twinlm.identities import Identities

_BY_CONVERSATION = (
    "CREATE INDEX IF NOT EXISTS curate_messages_by_conversation ON messages (conversation + 0, ts)"
)
# Tiny: only the rows the user excluded or edited (an ingest adds none), for the listing's counts.
_CHOICES = (
    "CREATE INDEX IF NOT EXISTS curate_user_choices ON messages (conversation + 0) "
    "WHERE excluded OR user_text IS NOT NULL"
)
_SEARCH = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS message_search "
    "USING fts5(body, tokenize='unicode61 remove_diacritics 2')"
)
_INDEXED_TO = "search_indexed_to"  # meta: (highest message id, message count) the search index holds
_WORD = re.compile(r"\w+")


def prepare(corpus: Corpus) -> None:
    """Make the curation index and the search table where missing (once per corpus; a few seconds for a
    million messages), and register the case-folding function the filters use."""
    corpus.db.create_function("twinlm_fold", 1, _fold, deterministic=True)
    if getattr(corpus, "_curate_ready", False):
        return
    have = {
        row[0]
        for row in corpus.db.execute(
            "SELECT name FROM sqlite_master WHERE name IN "
            "('curate_messages_by_conversation', 'curate_user_choices', 'message_search')"
        )
    }
    if len(have) < 3:
        with corpus.writing(counted=False) as db:  # indexes: the build reads nothing new
            db.execute(_BY_CONVERSATION)
            db.execute(_CHOICES)
            db.execute(_SEARCH)
    corpus._curate_ready = True  # type: ignore[attr-defined]


def _fold(value: str | None) -> str:
    return (value or "").casefold()


def update_search(corpus: Corpus) -> None:
    """Index the messages imported since the last search (all of them the first time)."""
    prepare(corpus)
    db = corpus.db
    row = db.execute("SELECT value FROM meta WHERE key = ?", (_INDEXED_TO,)).fetchone()
    done, counted = (int(x) for x in row[0].split(",")) if row else (0, 0)
    top = int(db.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])
    total = int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    if (top, total) == (done, counted):
        return
    with corpus.writing(counted=False) as w:
        grown = w.execute("SELECT count(*) FROM messages WHERE id > ?", (done,)).fetchone()[0]
        if counted + grown != total:  # rows were deleted (chats joined): their ids may be reused
            w.execute("DELETE FROM message_search")
            done = 0
        w.execute(
            "INSERT INTO message_search (rowid, body) "
            "SELECT id, coalesce(user_text, text) FROM messages WHERE id > ?",
            (done,),
        )
        w.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_INDEXED_TO, f"{top},{total}"))


def reindex(db: Any, message_ids: list[int]) -> None:
    """Re-index messages whose text as trained changed (an edit, its undo), in the caller's transaction."""
    if (
        not message_ids
        or not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'message_search'").fetchone()
    ):
        return
    row = db.execute("SELECT value FROM meta WHERE key = ?", (_INDEXED_TO,)).fetchone()
    done = int(row[0].split(",")[0]) if row else 0
    message_ids = [i for i in message_ids if i <= done]  # the others are indexed when first searched
    for start in range(0, len(message_ids), 500):
        chunk = message_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        db.execute(f"DELETE FROM message_search WHERE rowid IN ({marks})", chunk)
        db.execute(
            "INSERT INTO message_search (rowid, body) "
            f"SELECT id, coalesce(user_text, text) FROM messages WHERE id IN ({marks})",
            chunk,
        )


def fts_query(text: str) -> str:
    """A user's words as an FTS5 query that matches messages holding all of them: each word is quoted, so
    FTS5's own syntax (AND, NEAR, column:, *) in what the user typed is just text."""
    words = _WORD.findall(text)
    if not words:
        raise TwinError(f"search {text!r}: no word to search for (letters or digits)")
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def day_ms(value: str, *, option: str) -> int:
    """A date (YYYY-MM-DD, UTC) as milliseconds since the epoch."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise TwinError(f"{option} {value!r}: expected a date as YYYY-MM-DD") from None
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Selector:
    """What the user asked for; every given part must hold (AND). Recorded in the change log as given."""

    ids: tuple[str, ...] = ()  # conversation row ids, or source:native_id
    source: str | None = None
    chat: str | None = None  # part of the chat's name, any case
    person: str | None = None  # someone who speaks (an alias of twin.yaml or any name they used)
    since: str | None = None  # YYYY-MM-DD, inclusive
    until: str | None = None  # YYYY-MM-DD, inclusive
    search: str | None = None  # words the message text holds
    excluded: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if k == "ids" else v) for k, v in asdict(self).items() if v not in (None, ())}

    @property
    def bulk(self) -> bool:
        """Anything but one conversation named by its id: the user confirms before it changes."""
        return len(self.ids) != 1 or any(
            v is not None for v in (self.source, self.chat, self.person, self.since, self.until, self.search)
        )

    @property
    def empty(self) -> bool:
        return not self.to_json() or set(self.to_json()) == {"excluded"}


def conversation_row(corpus: Corpus, ident: str) -> int:
    """The row id of a conversation given as its number (`twinlm conversations`) or source:native_id."""
    return _row(corpus, "conversations", ident, f"no conversation {ident!r}", "`twinlm conversations`")


def message_row(corpus: Corpus, ident: str) -> int:
    """The row id of a message given as its number (`twinlm show`) or source:native_id."""
    return _row(corpus, "messages", ident, f"no message {ident!r}", "`twinlm show CONVERSATION`")


def _row(corpus: Corpus, table: str, ident: str, missing: str, lister: str) -> int:
    """The row id in `table` ("conversations" or "messages") of `ident`, the row's number or its
    source:native_id; else one error line: `missing`, and the command that lists the ids (`lister`)."""
    row = None
    if ident.isdigit():
        row = corpus.db.execute(f"SELECT id FROM {table} WHERE id = ?", (int(ident),)).fetchone()
    if row is None and ":" in ident:
        source, native = ident.split(":", 1)
        row = corpus.db.execute(
            f"SELECT id FROM {table} WHERE source = ? AND native_id = ?", (source, native)
        ).fetchone()
    if row is None:
        raise TwinError(f"{missing} in the corpus; {lister} lists their ids")
    return int(row[0])


def accounts_of(corpus: Corpus, config: TwinConfig, person: str) -> list[tuple[str, str]]:
    """The accounts (source, author id) of someone, by any alias of twin.yaml or any name they used."""
    names = account_names(corpus)
    identities = Identities(config, owners(corpus), names)
    meant = {s.casefold() for s in identities.targets(person)}
    found = [
        (source, author_id)
        for (source, author_id), used in names.items()
        if identities.speaker(source, author_id, used[0]).casefold() in meant
    ]
    if not found:
        raise TwinError(f"--person {person!r}: nobody of that name speaks in the corpus; see `twinlm people`")
    return sorted(found)


def _where(
    corpus: Corpus, sel: Selector, accounts: list[tuple[str, str]], *, messages: bool
) -> tuple[str, list[Any]]:
    """The WHERE clause (over conversations c, and messages m when `messages`) for a selector."""
    clauses: list[str] = []
    params: list[Any] = []
    if sel.ids:
        rows = [conversation_row(corpus, ident) for ident in sel.ids]
        clauses.append(f"c.id IN ({','.join('?' * len(rows))})")
        params.extend(rows)
    if sel.source is not None:
        clauses.append("c.source = ?")
        params.append(sel.source)
    if sel.chat is not None:
        clauses.append("instr(twinlm_fold(c.title), ?) > 0")
        params.append(_fold(sel.chat))
    if sel.excluded is not None:
        clauses.append("c.excluded = ?")
        params.append(int(sel.excluded))
    who = " OR ".join("(m.source = ? AND m.author_id = ?)" for _ in accounts)
    lo = day_ms(sel.since, option="--since") if sel.since else None
    hi = day_ms(sel.until, option="--until") + 86_400_000 if sel.until else None
    if lo is not None and hi is not None and hi <= lo:
        raise TwinError(f"--since {sel.since} is after --until {sel.until}")
    times = []
    if lo is not None:
        times.append(("m.ts >= ?", lo))
    if hi is not None:
        times.append(("m.ts < ?", hi))
    match = fts_query(sel.search) if sel.search else None
    if messages:
        if accounts:
            clauses.append(f"({who})")
            params.extend(x for account in accounts for x in account)
        for clause, value in times:
            clauses.append(clause)
            params.append(value)
        if match:
            clauses.append("m.id IN (SELECT rowid FROM message_search WHERE message_search MATCH ?)")
            params.append(match)
    else:
        inner = "SELECT 1 FROM messages AS m WHERE m.conversation + 0 = c.id + 0"
        if accounts:
            clauses.append(f"EXISTS ({inner} AND ({who}))")
            params.extend(x for account in accounts for x in account)
        if times:
            clauses.append(f"EXISTS ({inner} AND {' AND '.join(t for t, _ in times)})")
            params.extend(v for _, v in times)
        if match:
            clauses.append(
                "c.id IN (SELECT m.conversation FROM message_search AS s "
                "JOIN messages AS m ON m.id = s.rowid WHERE message_search MATCH ?)"
            )
            params.append(match)
    return (" AND ".join(clauses) or "1"), params


def _ready(corpus: Corpus, sel: Selector, config: TwinConfig) -> list[tuple[str, str]]:
    prepare(corpus)
    if sel.search:
        update_search(corpus)
    return accounts_of(corpus, config, sel.person) if sel.person else []


def select_conversations(corpus: Corpus, sel: Selector, config: TwinConfig) -> list[int]:
    accounts = _ready(corpus, sel, config)
    where, params = _where(corpus, sel, accounts, messages=False)
    return [r[0] for r in corpus.db.execute(f"SELECT c.id FROM conversations AS c WHERE {where}", params)]


def select_messages(corpus: Corpus, sel: Selector, config: TwinConfig) -> list[int]:
    accounts = _ready(corpus, sel, config)
    where, params = _where(corpus, sel, accounts, messages=True)
    return [
        r[0]
        for r in corpus.db.execute(
            f"SELECT m.id FROM messages AS m JOIN conversations AS c ON c.id = m.conversation WHERE {where}",
            params,
        )
    ]


def count_messages(corpus: Corpus, conversation_ids: list[int]) -> int:
    prepare(corpus)
    total = 0
    for start in range(0, len(conversation_ids), 500):
        chunk = conversation_ids[start : start + 500]
        total += corpus.db.execute(
            f"SELECT count(*) FROM messages WHERE conversation + 0 IN ({','.join('?' * len(chunk))})", chunk
        ).fetchone()[0]
    return int(total)


@dataclass(frozen=True, slots=True)
class Listed:
    id: int
    source: str
    native_id: str
    kind: str
    title: str
    excluded: bool
    note: str | None
    messages: int
    excluded_messages: int
    edited_messages: int
    first_ms: int | None
    last_ms: int | None

    @property
    def key(self) -> str:
        return f"{self.source}:{self.native_id}"

    def to_json(self, last_build: dict[str, dict[str, int]]) -> dict[str, Any]:
        """The row as `twinlm conversations --json` and the review page's API give it (times in ms since
        the epoch), with what the last build made of it (`last_build`: by source:native_id)."""
        return {
            "id": self.id,
            "key": self.key,
            "source": self.source,
            "kind": self.kind,
            "title": self.title,
            "excluded": self.excluded,
            "note": self.note,
            "messages": self.messages,
            "excluded_messages": self.excluded_messages,
            "edited_messages": self.edited_messages,
            "first": self.first_ms,
            "last": self.last_ms,
            "last_build": last_build.get(self.key),
        }


def list_conversations(
    corpus: Corpus, sel: Selector, config: TwinConfig, *, offset: int = 0, limit: int = 50
) -> tuple[int, list[Listed]]:
    """(how many conversations match, one page of them), by source, name and id."""
    accounts = _ready(corpus, sel, config)
    where, params = _where(corpus, sel, accounts, messages=False)
    total = corpus.db.execute(f"SELECT count(*) FROM conversations AS c WHERE {where}", params).fetchone()[0]
    rows = corpus.db.execute(
        f"""SELECT c.id, c.source, c.native_id, c.kind, c.title, c.excluded, c.user_note,
                   (SELECT count(*) FROM messages AS m WHERE m.conversation + 0 = c.id + 0),
                   (SELECT count(*) FROM messages AS m WHERE m.conversation + 0 = c.id + 0
                        AND (m.excluded OR m.user_text IS NOT NULL) AND m.excluded),
                   (SELECT count(*) FROM messages AS m WHERE m.conversation + 0 = c.id + 0
                        AND (m.excluded OR m.user_text IS NOT NULL) AND m.user_text IS NOT NULL),
                   (SELECT min(ts) FROM messages AS m WHERE m.conversation + 0 = c.id + 0),
                   (SELECT max(ts) FROM messages AS m WHERE m.conversation + 0 = c.id + 0)
            FROM conversations AS c WHERE {where}
            ORDER BY c.source, twinlm_fold(c.title), c.id LIMIT ? OFFSET ?""",
        [*params, limit, offset],
    ).fetchall()
    return int(total), [
        Listed(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7], r[8], r[9], r[10], r[11]) for r in rows
    ]
