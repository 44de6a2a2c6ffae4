"""Bring a corpus written by an older twinlm up to the current schema, in one transaction.

1 -> 2 (issue 9): the superseding columns, and new message ids for the sources without native ids, so
that the next export of a chat already in the corpus matches the rows (and the user's exclusions and
edits) instead of adding a second copy. WhatsApp ids no longer hold the local time and the author's
display name, Messenger ids no longer the sender's name: both are recomputed from the stored time and
text, in the order the rows were read. Conversation ids stay as they are: WhatsApp exports are matched
onto them by their first messages (twinlm/corpus/rematch.py).
"""

from __future__ import annotations

import sqlite3
from collections import Counter

from twinlm.sources import messenger
from twinlm.sources.whatsapp_keys import MessageKeys

_COLUMNS = {
    "conversations": ("export_lo INTEGER", "export_hi INTEGER"),
    "messages": ("superseded_by_import INTEGER REFERENCES imports(id)",),
}


def migrate(db: sqlite3.Connection, version: int, target: int) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        if version < 2:
            _to_2(db)
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(target),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _to_2(db: sqlite3.Connection) -> None:
    for table, columns in _COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column.split()[0] not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    updates: list[tuple[str, int]] = []
    keys: MessageKeys | None = None
    seen: Counter[tuple[int, str]] = Counter()
    current = None
    for row_id, source, conversation, ts, text in db.execute(
        "SELECT m.id, m.source, c.native_id, m.ts, m.text FROM messages AS m "
        "JOIN conversations AS c ON c.id = m.conversation "
        "WHERE m.source IN ('whatsapp', 'messenger') AND m.ts IS NOT NULL ORDER BY m.conversation, m.ts, m.id"
    ).fetchall():
        if (source, conversation) != current:
            current, keys, seen = (source, conversation), MessageKeys(conversation), Counter()
        if source == "whatsapp":
            assert keys is not None
            updates.append((keys(ts, text), row_id))
        else:
            occurrence = seen[(ts // 1000, text)]
            seen[(ts // 1000, text)] += 1
            updates.append((messenger.message_id(conversation, ts, text, occurrence), row_id))
    # Through a temporary prefix: a new id may equal another row's old one only by a hash collision,
    # but the UNIQUE constraint is checked row by row.
    db.executemany("UPDATE messages SET native_id = '~' || ? WHERE id = ?", updates)
    db.execute(
        "UPDATE messages SET native_id = substr(native_id, 2) "
        "WHERE source IN ('whatsapp', 'messenger') AND native_id LIKE '~%'"
    )
