"""The corpus: one SQLite file holding every imported conversation, raw, plus the user's edits.

Rows are keyed by (source, native id), so an import is an idempotent upsert: the same export twice
adds nothing and next month's export adds only what is new. The whole import runs in one
transaction (one savepoint per file), so a killed import leaves the database as it was. Cleaning
decisions are made later, at build time; only the user's own exclusions and edits live here.

The newest export of a conversation wins (`finish_import`): where a source always exports a
conversation whole (`SUPERSEDING`), the messages of an already-imported conversation that its newest
export no longer holds (an edited ChatGPT question's old branch, a message deleted for everyone) are
marked `superseded_by_import`: kept and listed, never trained, undone by `restore_superseded`.

The first import of a message wins its text: a later export holding the same message (same source, same
native id) with other text keeps the stored text, and the import counts and names such messages
(`Changes.kept_texts`). A crafted or tampered export cannot rewrite what the corpus holds; the user's own
edit (`user_text`) is the way to change a message's text.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path

import orjson

from twinlm.corpus.supersede import Superseding, supersede
from twinlm.errors import TwinError
from twinlm.model import Conversation, Kind, Message, Role

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 5000  # how long a change waits for a build or an ingest to release the corpus

# What one export of a conversation holds, per source, so that what it lacks was deleted or replaced:
# - "whole": every message, whatever the export's date (ChatGPT writes every conversation whole).
# - "span": every message between its first and its last (WhatsApp keeps only the newest 40,000, or
#   10,000 with media; Facebook's download can be limited to a date range; a thread split over
#   message_N.json files is gathered over the whole import).
# Sources absent here never supersede: an export of them may be filtered (Discord --after/--before and
# --filter, Telegram Desktop's date range and media-type choices) and JSONL and documents have no
# notion of a whole conversation.
SUPERSEDING = {"chatgpt": "whole", "whatsapp": "span", "messenger": "span"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS imports (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    paths TEXT NOT NULL,             -- JSON list of what was given to `twinlm ingest`
    summary TEXT                     -- JSON: per file format, counts, skips by reason
);
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,            -- format name: chatgpt, discord, telegram, ...
    native_id TEXT NOT NULL,
    kind TEXT NOT NULL,              -- chat | assistant | document | dataset
    title TEXT NOT NULL,
    platform_detail TEXT NOT NULL DEFAULT '',
    participants TEXT NOT NULL DEFAULT '[]',
    system_prompt TEXT,
    owner_id TEXT,                   -- author id of whoever made the export, when it says
    excluded INTEGER NOT NULL DEFAULT 0,   -- set by the user: leave out of every dataset
    user_note TEXT,                        -- the user's note, e.g. why it is excluded
    first_import INTEGER NOT NULL REFERENCES imports(id),
    export_lo INTEGER,               -- first and last message time (ms) of the newest export read,
    export_hi INTEGER,               -- for sources in SUPERSEDING
    UNIQUE (source, native_id)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation INTEGER NOT NULL REFERENCES conversations(id),
    source TEXT NOT NULL,
    native_id TEXT NOT NULL,
    author_id TEXT NOT NULL,
    author_name TEXT NOT NULL,
    ts INTEGER,                      -- milliseconds since the epoch, UTC; NULL when the export has none
    kind TEXT NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,              -- raw, as exported
    reply_to TEXT,
    forwarded_from TEXT,
    edited INTEGER NOT NULL DEFAULT 0,     -- edited on the platform
    excluded INTEGER NOT NULL DEFAULT 0,   -- set by the user: leave this message out
    user_text TEXT,                        -- set by the user: replaces `text` at build time
    first_import INTEGER NOT NULL REFERENCES imports(id),
    superseded_by_import INTEGER REFERENCES imports(id),  -- no longer in that (newer) export: not trained
    UNIQUE (source, native_id)
);
-- Every name an account has used (display names, Discord usernames): a message keeps only its latest
-- name when a re-export renames its author, and an alias may name the account by any of them.
CREATE TABLE IF NOT EXISTS author_names (
    source TEXT NOT NULL,
    author_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (source, author_id, name)
) WITHOUT ROWID;
-- The user's curation, logged (twinlm/corpus/changes.py): who/when/what, the rows by their stable key
-- (source, native id) with the values before and after, so a change is undoable and portable.
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,        -- the same on every machine the change is imported to
    at TEXT NOT NULL,                -- ISO time, UTC
    user TEXT NOT NULL,
    action TEXT NOT NULL,            -- exclude | include | edit | drop | keep | restore | note
    selector TEXT NOT NULL,          -- JSON: what the user asked for (ids, chat, person, dates, search)
    items TEXT NOT NULL,             -- JSON: [[target, source, native_id, before, after], ...]
    undone_at TEXT
);
-- No secondary index on purpose: each costs ~20% of ingest speed, and every reader (build, people,
-- stats) scans the whole table once anyway. One exception, partial, so only WhatsApp rows pay for it:
-- matching a WhatsApp export to the chat it re-exports looks up messages by time (corpus/rematch.py).
CREATE INDEX IF NOT EXISTS messages_whatsapp_ts ON messages (ts) WHERE source = 'whatsapp';
"""

_UPSERT_CONVERSATION = """
INSERT INTO conversations (source, native_id, kind, title, platform_detail, participants,
                           system_prompt, owner_id, first_import)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (source, native_id) DO UPDATE SET
    kind = excluded.kind, title = excluded.title, platform_detail = excluded.platform_detail,
    participants = excluded.participants,
    system_prompt = coalesce(excluded.system_prompt, conversations.system_prompt),
    owner_id = coalesce(excluded.owner_id, conversations.owner_id)
WHERE (conversations.kind, conversations.title, conversations.platform_detail,
       conversations.participants, conversations.system_prompt, conversations.owner_id)
   IS NOT (excluded.kind, excluded.title, excluded.platform_detail, excluded.participants,
           coalesce(excluded.system_prompt, conversations.system_prompt),
           coalesce(excluded.owner_id, conversations.owner_id))
RETURNING id, first_import
"""

# A re-exported message whose author name, time, kind or reply changed updates those raw columns; its
# text is kept by the trigger below. The user's own columns (excluded, user_text) are never touched by an
# import.
_UPSERT_MESSAGE = """
INSERT INTO messages (conversation, source, native_id, author_id, author_name, ts, kind, role, text,
                      reply_to, forwarded_from, edited, first_import)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (source, native_id) DO UPDATE SET
    author_id = excluded.author_id, author_name = excluded.author_name, ts = excluded.ts,
    kind = excluded.kind, role = excluded.role, text = excluded.text, reply_to = excluded.reply_to,
    forwarded_from = excluded.forwarded_from, edited = excluded.edited
WHERE (messages.author_id, messages.author_name, messages.ts, messages.kind, messages.role,
       messages.text, messages.reply_to, messages.forwarded_from, messages.edited)
   IS NOT (excluded.author_id, excluded.author_name, excluded.ts, excluded.kind, excluded.role,
           excluded.text, excluded.reply_to, excluded.forwarded_from, excluded.edited)
"""

# The first import wins a message's text: while `Corpus.add` upserts, an update that would change the text
# of a stored message is undone (text and edited flag back), and `twinlm_kept_text` records the message.
# A temporary trigger (this connection only) fires only on real text changes: inserts and unchanged
# re-imports pay nothing. Other code that rewrites texts (merging a WhatsApp edit into its earlier row,
# joining chats) runs with the recording function off, so the trigger leaves it alone.
_KEEP_TEXT = """
CREATE TEMP TRIGGER IF NOT EXISTS keep_stored_text AFTER UPDATE OF text ON main.messages
WHEN OLD.text IS NOT NEW.text AND twinlm_kept_text(
    OLD.native_id,
    (OLD.author_id, OLD.author_name, OLD.ts, OLD.kind, OLD.role, OLD.reply_to, OLD.forwarded_from)
    IS NOT (NEW.author_id, NEW.author_name, NEW.ts, NEW.kind, NEW.role, NEW.reply_to, NEW.forwarded_from)
)
BEGIN
    UPDATE messages SET text = OLD.text, edited = OLD.edited WHERE id = OLD.id;
END
"""

_AUTHOR = attrgetter("author_id", "author_name")
_KIND_TEXT = {kind: kind.value for kind in Kind}
_ROLE_TEXT = {role: role.value for role in Role}


@dataclass(slots=True)
class Changes:
    """What an import changed: new rows and rows whose raw content was updated."""

    new_conversations: int = 0
    new_messages: int = 0
    updated_messages: int = 0
    # Native ids of stored messages the import held with other text: the stored text was kept.
    kept_texts: list[str] = field(default_factory=list)

    def add(self, other: Changes) -> None:
        self.new_conversations += other.new_conversations
        self.new_messages += other.new_messages
        self.updated_messages += other.updated_messages
        self.kept_texts.extend(other.kept_texts)


def note_write(db: sqlite3.Connection) -> None:
    """Count one write to what the build reads, inside the writer's transaction (meta 'writes'): some
    writes leave no other trace `data_version` could read (superseded messages restored, chats joined, a
    change imported again onto rows ingested since). Corpus.writing and importing call it."""
    db.execute(
        "INSERT INTO meta VALUES ('writes', '1') "
        "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
    )


def data_version(db: sqlite3.Connection) -> str:
    """Changes whenever what a build reads can have changed (an import, a change, an undo, any counted
    write), and not when a search index is made: `twinlm run` keeps a build while it stays. Cheap: four
    lookups. (The import, change and undo parts also cover writes made before the count existed.)"""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"meta", "imports", "changes"} <= tables:
        return ""
    found = db.execute(
        "SELECT (SELECT coalesce(max(id), 0) FROM imports), (SELECT coalesce(max(id), 0) FROM changes), "
        "(SELECT count(*) FROM changes WHERE undone_at IS NOT NULL), "
        "(SELECT coalesce(max(value), 0) FROM meta WHERE key = 'writes')"
    ).fetchone()
    return ".".join(map(str, found))


def damaged(path: Path, error: sqlite3.DatabaseError) -> TwinError:
    """The error for a corpus file SQLite cannot read. Raised for exactly sqlite3.DatabaseError (a damaged
    file or another format), not its subclasses: "database is locked" (OperationalError) says what it is."""
    return TwinError(
        f"{path}: damaged or not a twinlm corpus ({error}); restore it from a backup, or move it away and "
        "ingest your exports again"
    )


def busy(error: sqlite3.OperationalError, path: Path | None = None) -> TwinError | None:
    """What to say when SQLite finds the corpus locked by another process for longer than the busy timeout
    (an ingest or a change writing it, a build reading it); None for any other OperationalError."""
    if "locked" not in str(error) and "busy" not in str(error):
        return None
    return TwinError(
        f"{path or 'corpus.db'}: the corpus is in use by another twinlm command (an ingest or a change "
        f"writing it, or a build reading it) ({error}); nothing was changed: run this again when that has "
        "finished"
    )


def corpus_error(error: BaseException, path: Path | None = None) -> TwinError | None:
    """What to tell the user of an SQLite error on the corpus: held by another process (`busy`), or a file
    SQLite cannot read (`damaged`: exactly sqlite3.DatabaseError, not its subclasses, which say what they
    are); None for anything else, which is a bug."""
    if isinstance(error, sqlite3.OperationalError):
        return busy(error, path)
    if type(error) is sqlite3.DatabaseError:
        return damaged(path or Path("corpus.db"), error)
    return None


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """The corpus file opened read-only, for readers that must not write (a Corpus would bring the schema
    up to date); a file SQLite cannot read is `damaged`."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        try:
            yield conn
        except sqlite3.DatabaseError as e:
            found = corpus_error(e, path)
            if found is None:
                raise
            raise found from None


class Corpus:
    """An open corpus database. Use as a context manager; writes go through `importing()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN/SAVEPOINT below), never implicit.
        self.db = sqlite3.connect(path, isolation_level=None)
        try:
            self._prepare()
        except sqlite3.DatabaseError as e:
            self.db.close()
            found = corpus_error(e, path)
            if found is None:
                raise
            raise found from None
        except BaseException:
            self.db.close()
            raise
        self._conversation_ids: dict[tuple[str, str], int] = {}
        self._message_writes = 0
        # Per conversation row of a SUPERSEDING source read in this import: [first ts, last ts, existed
        # before this import]. Ids of the messages read for those that existed go to the temp table `held`.
        self._spans: dict[int, list] = {}
        self._held_ready = False
        # Set while `add` upserts messages: (native id, whether other columns changed too) per message
        # whose stored text the import would have changed; None: not recording (the trigger does nothing).
        self._kept: list[tuple[str, bool]] | None = None
        self._kept_ids: list[str] = []  # of the file being read (file_savepoint)
        self.db.create_function("twinlm_kept_text", 2, self._keep_text)
        self.db.execute(_KEEP_TEXT)

    def _prepare(self) -> None:
        """Settings, the schema where it is missing, and the migration of an older corpus."""
        self.db.execute("PRAGMA page_size = 16384")  # only takes effect on a new file; fewer b-tree splits
        # A rollback journal, not WAL: an import is one big transaction of mostly new pages, which a
        # rollback journal writes once where WAL writes them twice (log, then checkpoint): ~8% faster
        # ingest. Both leave the file as it was when the process is killed mid-transaction.
        self.db.execute("PRAGMA journal_mode = DELETE")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA cache_size = -65536")  # 64 MiB page cache
        # Another program's database, or a newer twinlm's corpus, is refused before this one adds its own
        # schema to it (every corpus has had the meta table).
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise TwinError(
                f"{self.path}: not a twinlm corpus (an SQLite database of another program); move it away or "
                "point the workspace elsewhere"
            )
        if "meta" in tables:
            found = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if found is not None and int(found[0]) > SCHEMA_VERSION:
                raise TwinError(
                    f"{self.path}: made by a newer twinlm (corpus schema {found[0]}; this one reads up to "
                    f"{SCHEMA_VERSION}): upgrade twinlm"
                )
        self.db.executescript(SCHEMA)
        # Only a new corpus writes here: opening one never waits for a write lock (a build may be reading).
        if self.db.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone() is None:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        version = int(self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        if version < SCHEMA_VERSION:
            from twinlm.corpus.migrate import migrate  # only old corpora need it

            migrate(self.db, version, SCHEMA_VERSION)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Corpus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ writing

    @contextmanager
    def writing(self, counted: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (a change, an undo, restored or joined messages): it waits up to
        BUSY_TIMEOUT_MS for a corpus another process holds, then is one clear error, changing nothing.
        `counted`: it changes what the build reads (`note_write`); an index of the corpus does not."""
        db = self.db
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            found = busy(e, self.path)
            if found is None:
                raise
            raise found from None
        try:
            yield db
            if counted:
                note_write(db)
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            found = corpus_error(e, self.path)
            if found is None:
                raise
            raise found from None

    @contextmanager
    def importing(self, paths: list[str]) -> Iterator[int]:
        """One transaction for a whole import; yields the import id. Any exception rolls it all back."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            import_id = self.db.execute(
                "INSERT INTO imports (started_at, paths) VALUES (?, ?)",
                (_now(), orjson.dumps(paths).decode()),
            ).lastrowid
            assert import_id is not None
            self._spans.clear()
            self._conversation_ids.clear()  # each import learns which conversations existed before it
            yield import_id
            self.db.execute("UPDATE imports SET finished_at = ? WHERE id = ?", (_now(), import_id))
            note_write(self.db)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self._conversation_ids.clear()
            self._spans.clear()
            self._held_ready = False
            raise

    @contextmanager
    def file_savepoint(self) -> Iterator[Changes]:
        """Everything read from one file lands together or not at all (rolled back on error)."""
        self.db.execute("SAVEPOINT file")
        changes = Changes()
        max_conversation = self._max_id("conversations")
        max_message = self._max_id("messages")
        self._message_writes = 0
        self._kept_ids = []
        cache_before = dict(self._conversation_ids)
        spans_before = {row: list(span) for row, span in self._spans.items()}
        held_before = self._held_ready
        try:
            yield changes
        except BaseException:
            self.db.execute("ROLLBACK TO file")  # also rolls back the temp table `held`
            self.db.execute("RELEASE file")
            self._conversation_ids = cache_before
            self._spans = spans_before
            self._held_ready = held_before
            raise
        # New rows get ids above the old maximum; every other change counted by SQLite is an update.
        changes.new_conversations = self._count_above("conversations", max_conversation)
        changes.new_messages = self._count_above("messages", max_message)
        changes.updated_messages = self._message_writes - changes.new_messages
        changes.kept_texts = list(dict.fromkeys(self._kept_ids))  # once each, in the export's order
        self.db.execute("RELEASE file")

    def add(self, conversation: Conversation, import_id: int) -> None:
        """Upsert one conversation (or one slice of it) and its messages."""
        key = (conversation.source, conversation.id)
        row_id = self._conversation_ids.get(key)
        source = conversation.source
        if row_id is None or conversation.system_prompt is not None:
            row_id, first_import = self._upsert_conversation(conversation, import_id)
            self._conversation_ids[key] = row_id
            if source in SUPERSEDING and row_id not in self._spans:
                self._spans[row_id] = [None, None, first_import != import_id]
        messages = conversation.messages
        times = [None if m.timestamp is None else int(m.timestamp.timestamp() * 1000) for m in messages]
        span = self._spans.get(row_id)
        if span is not None:
            self._hold(row_id, span, messages, times)
        before = self.db.total_changes
        kept: list[tuple[str, bool]] = []
        self._kept = kept
        try:
            self._upsert_messages(row_id, source, messages, times, import_id)
        finally:
            self._kept = None
        self._kept_ids.extend(native_id for native_id, _ in kept)
        # Inserts plus real updates; unchanged re-imported rows are skipped by the upsert's WHERE. A kept
        # text counts twice (the upsert and the trigger's undo): once only if another column did change.
        self._message_writes += self.db.total_changes - before - sum(2 - other for _, other in kept)
        names = set(map(_AUTHOR, messages))  # a few distinct accounts per slice: cheap to keep every name
        names.update(conversation.author_names)
        self.db.executemany(
            "INSERT OR IGNORE INTO author_names VALUES (?, ?, ?)", ((source, a, n) for a, n in names)
        )

    def _keep_text(self, native_id: str, other_changed: int) -> bool:
        """The trigger's test: undo a text change (and record it) only while `add` upserts."""
        if self._kept is None:
            return False
        self._kept.append((native_id, bool(other_changed)))
        return True

    def _upsert_messages(
        self, row_id: int, source: str, messages: tuple[Message, ...], times: list[int | None], import_id: int
    ) -> None:
        # Bind exact str/int only: sqlite3 runs its adapter lookup for every value of a subclass
        # (StrEnum, bool), ~380 ns each, which cost ~1 s per million messages.
        self.db.executemany(
            _UPSERT_MESSAGE,
            (
                (
                    row_id,
                    source,
                    m.id,
                    m.author_id,
                    m.author_name,
                    ts,
                    _KIND_TEXT[m.kind],
                    _ROLE_TEXT[m.role],
                    m.text,
                    m.reply_to,
                    m.forwarded_from,
                    int(m.edited),
                    import_id,
                )
                for m, ts in zip(messages, times, strict=True)
            ),
        )

    def _hold(self, row_id: int, span: list, messages: tuple[Message, ...], times: list[int | None]) -> None:
        """Widen the conversation's time span; remember which messages it holds when it existed before."""
        known = [t for t in times if t is not None]
        if known:
            lo, hi = min(known), max(known)
            span[0] = lo if span[0] is None else min(span[0], lo)
            span[1] = hi if span[1] is None else max(span[1], hi)
        if not span[2]:
            return  # new in this import: nothing of it to supersede
        if not self._held_ready:
            self.db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS held (conversation INTEGER NOT NULL,"
                " native_id TEXT NOT NULL, PRIMARY KEY (conversation, native_id)) WITHOUT ROWID"
            )
            self.db.execute("DELETE FROM held")
            self._held_ready = True
        self.db.executemany("INSERT OR IGNORE INTO held VALUES (?, ?)", ((row_id, m.id) for m in messages))

    def _upsert_conversation(self, c: Conversation, import_id: int) -> tuple[int, int]:
        participants = orjson.dumps(list(c.participants)).decode()
        row = self.db.execute(
            _UPSERT_CONVERSATION,
            (
                c.source,
                c.id,
                c.kind,
                c.title,
                c.platform_detail,
                participants,
                c.system_prompt,
                c.owner_id,
                import_id,
            ),
        ).fetchone()
        if row is not None:
            return int(row[0]), int(row[1])
        # Unchanged existing conversation: the upsert's WHERE skipped it and returned nothing.
        existing, first_import = self.db.execute(
            "SELECT id, first_import FROM conversations WHERE source = ? AND native_id = ?", (c.source, c.id)
        ).fetchone()
        return int(existing), int(first_import)

    def finish_import(self, import_id: int) -> dict[int, Superseding]:
        """Apply "the newest export wins" to the conversations this import read; call once, at its end.

        Returns what changed per conversation row id (only those where something did).
        """
        spans, self._spans = self._spans, {}
        ready, self._held_ready = self._held_ready, False
        return supersede(self.db, import_id, spans, SUPERSEDING, held=ready)

    def restore_superseded(self, import_id: int | None = None, conversation: int | None = None) -> int:
        """Undo superseding (all of it, or one import's, or one conversation's): trained again."""
        where, params = ["superseded_by_import IS NOT NULL"], []
        if import_id is not None:
            where.append("superseded_by_import = ?")
            params.append(import_id)
        if conversation is not None:
            where.append("conversation = ?")
            params.append(conversation)
        with self.writing() as db:
            cursor = db.execute(
                f"UPDATE messages SET superseded_by_import = NULL WHERE {' AND '.join(where)}", params
            )
        return cursor.rowcount

    def merge_conversations(self, source: str, from_id: str, into_id: str) -> tuple[int, int]:
        """Move the messages of conversation `from_id` into `into_id` (same source) and drop `from_id`.

        For the chat an ingest note named as maybe the same. WhatsApp message ids carry the chat key, so
        moved messages are re-keyed onto `into_id`; one already there (the same minute and text) is a
        copy: the kept row takes the user's exclusion or edit from it if it has none. Returns (moved,
        copies dropped).
        """
        from twinlm.corpus.merge import merge  # rarely used; kept out of the upsert's file

        with self.writing() as db:
            counts = merge(db, source, from_id, into_id)
        self._conversation_ids.clear()
        return counts

    def _max_id(self, table: str) -> int:
        return int(self.db.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0])

    def _count_above(self, table: str, floor: int) -> int:
        return int(self.db.execute(f"SELECT count(*) FROM {table} WHERE id > ?", (floor,)).fetchone()[0])

    def record_summary(self, import_id: int, summary: object) -> None:
        self.db.execute(
            "UPDATE imports SET summary = ? WHERE id = ?", (orjson.dumps(summary).decode(), import_id)
        )

    # ------------------------------------------------------------------------------ reading

    def count(self, table: str) -> int:
        if table not in {"conversations", "messages", "imports"}:
            raise ValueError(table)
        return int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
