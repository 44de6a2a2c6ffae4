"""Join two conversations of one source that are one chat (`twinlm join-chats`, `merge_conversations`).

Ingest keeps a WhatsApp export apart when it cannot tell for certain that it re-exports a chat already
in the corpus, and names the candidate in a note; the user confirms with a merge.
"""

from __future__ import annotations

import sqlite3

from twinlm.errors import TwinError
from twinlm.sources.whatsapp_keys import MessageKeys


def merge(db: sqlite3.Connection, source: str, from_id: str, into_id: str) -> tuple[int, int]:
    if from_id == into_id:
        raise TwinError(f"merge: {source}:{from_id} is the same conversation twice")
    rows = {}
    for native_id in (from_id, into_id):
        row = db.execute(
            "SELECT id FROM conversations WHERE source = ? AND native_id = ?", (source, native_id)
        ).fetchone()
        if row is None:
            raise TwinError(
                f"merge: no conversation {source}:{native_id} in the corpus (copy ids from the ingest note)"
            )
        rows[native_id] = int(row[0])
    source_row, target_row = rows[from_id], rows[into_id]
    moved = dropped = 0
    keys = MessageKeys(into_id) if source == "whatsapp" else None
    for row_id, native_id, ts, text, excluded, user_text in db.execute(
        "SELECT id, native_id, ts, text, excluded, user_text FROM messages WHERE conversation = ? "
        "ORDER BY ts IS NULL, ts, id",
        (source_row,),
    ).fetchall():
        new_id = keys(ts, text) if keys is not None and ts is not None else native_id
        existing = db.execute(
            "SELECT id, excluded, user_text FROM messages WHERE source = ? AND native_id = ? AND id != ?",
            (source, new_id, row_id),
        ).fetchone()
        if existing is not None:  # the same message, already in the target: keep one row
            db.execute(
                "UPDATE messages SET excluded = max(excluded, ?), user_text = coalesce(user_text, ?) "
                "WHERE id = ?",
                (excluded, user_text, existing[0]),
            )
            db.execute("DELETE FROM messages WHERE id = ?", (row_id,))
            dropped += 1
            continue
        db.execute(
            "UPDATE messages SET conversation = ?, native_id = ? WHERE id = ?", (target_row, new_id, row_id)
        )
        moved += 1
    db.execute("DELETE FROM conversations WHERE id = ?", (source_row,))
    return moved, dropped
