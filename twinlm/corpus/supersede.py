"""The newest export of a conversation wins: what it no longer holds is superseded (kept, never trained).

Run once at the end of an import (`Corpus.finish_import`), over the conversations of `SUPERSEDING`
sources that the import read and that existed before it. For each, the import's export is either:

- the newest (its last message is at least as new as the last one of the newest export read so
  far): messages of the conversation that it does not hold, within what it covers (the whole
  conversation, or for "span" sources the time between its first and last message), are marked
  `superseded_by_import`; superseded messages that it holds again are restored. A platform-edited
  message that it holds under a new id (its text is part of the id where exports have none) takes
  over the row of its earlier text in the same minute, so the user's exclusion or edit stays on it.
- older (read after a newer one): it changes nothing that is trained; messages it brought that the
  newest export does not hold are superseded at once.

Messages the import holds are listed in the temp table `held` (filled by `Corpus.add`); one UPDATE
each over the messages table, whatever the number of conversations.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass

_MINUTE = 60_000
_NO_TIME = 2**62


@dataclass(slots=True)
class Superseding:
    """What `finish_import` did to one conversation."""

    source: str
    native_id: str
    superseded: int = 0  # messages its newest export no longer holds: kept, not trained
    restored: int = 0  # superseded messages that this export holds again
    merged_edits: int = 0  # platform-edited messages that took over the row of their earlier text
    older_export: bool = False  # this export's newest message is older than an earlier export's
    doubtful: int = 0  # missing from a chat's export, too many to be deletions: left as they were


_IN_SPAN = """EXISTS (SELECT 1 FROM spans AS s WHERE s.conversation = messages.conversation
    AND s.older = {older} AND ((messages.ts IS NULL AND s.whole)
         OR (messages.ts <= s.hi AND (s.whole OR messages.ts >= s.lo))))"""
_HELD = """EXISTS (SELECT 1 FROM held AS h
    WHERE h.conversation = messages.conversation AND h.native_id = messages.native_id)"""


def supersede(
    db: sqlite3.Connection,
    import_id: int,
    spans: dict[int, list],
    policy: dict[str, str],
    *,
    held: bool,
) -> dict[int, Superseding]:
    """`spans`: conversation row id -> [first ms, last ms, existed before this import] of what it read."""
    if not spans:
        return {}
    results: dict[int, Superseding] = {}
    rows: list[tuple[int, int, int, int, int]] = []  # conversation, lo, hi, whole, older
    record: list[tuple[int | None, int | None, int]] = []
    ids = list(spans)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for cid, source, native_id, elo, ehi in db.execute(
            "SELECT id, source, native_id, export_lo, export_hi FROM conversations "
            f"WHERE id IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            lo, hi, existed = spans[cid]
            whole = int(policy[source] == "whole")
            if not existed:
                record.append((lo, hi, cid))
                continue
            if hi is None and not whole:
                continue  # no message with a time: nothing to compare with
            if hi is not None and ehi is not None and hi < ehi:
                results[cid] = Superseding(source, native_id, older_export=True)
                rows.append((cid, *_inside(elo, ehi, whole), whole, 1))
                continue
            results[cid] = Superseding(source, native_id)
            rows.append((cid, *_inside(lo, hi, whole), whole, 0))
            record.append((lo, hi, cid))
    db.executemany("UPDATE conversations SET export_lo = ?, export_hi = ? WHERE id = ?", record)
    if not rows or not held:
        return {cid: r for cid, r in results.items() if r.older_export}
    db.execute(
        "CREATE TEMP TABLE IF NOT EXISTS spans (conversation INTEGER PRIMARY KEY, lo INTEGER, hi INTEGER,"
        " whole INTEGER, older INTEGER)"
    )
    db.execute("DELETE FROM spans")
    db.executemany("INSERT INTO spans VALUES (?, ?, ?, ?, ?)", rows)
    _merge_edits(db, import_id, results)
    for (cid,) in db.execute(
        "UPDATE messages SET superseded_by_import = NULL WHERE superseded_by_import IS NOT NULL "
        f"AND conversation IN (SELECT conversation FROM spans WHERE NOT older) AND {_HELD} "
        "RETURNING conversation"
    ).fetchall():
        results[cid].restored += 1
    for (cid,) in db.execute(
        "UPDATE messages SET superseded_by_import = ? WHERE superseded_by_import IS NULL "
        f"AND conversation IN (SELECT conversation FROM spans WHERE NOT older) AND NOT {_HELD} "
        f"AND {_IN_SPAN.format(older=0)} RETURNING conversation",
        (import_id,),
    ).fetchall():
        results[cid].superseded += 1
    _undo_doubtful(db, import_id, results, {cid for cid, _, _, whole, _ in rows if not whole})
    # An older export read late: what it brought that the newest export lacks is not trained either.
    for (cid,) in db.execute(
        "UPDATE messages SET superseded_by_import = ? "
        "WHERE superseded_by_import IS NULL AND first_import = ? "
        f"AND conversation IN (SELECT conversation FROM spans WHERE older) AND {_IN_SPAN.format(older=1)} "
        "RETURNING conversation",
        (import_id, import_id),
    ).fetchall():
        results[cid].superseded += 1
    db.execute("DELETE FROM spans")
    db.execute("DELETE FROM held")
    return {
        c: r
        for c, r in results.items()
        if r.superseded + r.restored + r.merged_edits + r.doubtful or r.older_export
    }


_DOUBT_MIN = 20  # messages: fewer missing from a chat's export are plausible deletions, whatever the ratio


def _undo_doubtful(
    db: sqlite3.Connection, import_id: int, results: dict[int, Superseding], spans: set[int]
) -> None:
    """A chat export (WhatsApp, Messenger) lacking more than a quarter as many messages as it holds is not
    a chat with deletions but a mismatch (a re-export keyed wrongly): supersede nothing of it."""
    candidates = [cid for cid in spans if results[cid].superseded > _DOUBT_MIN]
    if not candidates:
        return
    held = dict(
        db.execute(
            "SELECT conversation, count(*) FROM held "
            f"WHERE conversation IN ({','.join('?' * len(candidates))}) GROUP BY conversation",
            candidates,
        ).fetchall()
    )
    for cid in candidates:
        result = results[cid]
        if result.superseded * 4 > held.get(cid, 0):
            db.execute(
                "UPDATE messages SET superseded_by_import = NULL "
                "WHERE conversation = ? AND superseded_by_import = ?",
                (cid, import_id),
            )
            result.doubtful, result.superseded = result.superseded, 0


def _inside(lo: int | None, hi: int | None, whole: int) -> tuple[int, int]:
    """The times an export covers for sure. A span's first and last minute are left out: a WhatsApp
    export that starts mid-chat (its 40,000-message limit) may start mid-minute, and its times are
    whole minutes; so a message there that it lacks may just be before its start."""
    lo = -_NO_TIME if lo is None or whole else (lo // _MINUTE + 1) * _MINUTE
    hi = _NO_TIME if hi is None else (hi if whole else hi // _MINUTE * _MINUTE - 1)
    return lo, hi


_RAW = "native_id, author_id, author_name, ts, kind, role, text, reply_to, forwarded_from"


def _merge_edits(db: sqlite3.Connection, import_id: int, results: dict[int, Superseding]) -> None:
    """A message edited on the platform since the last export, new here under another id, takes over the
    row of its earlier text (same conversation and minute, not held by this export): one row, the user's
    exclusion and edit kept, the platform's new text in it."""
    edited = db.execute(
        "SELECT id, conversation, ts, author_id FROM messages "
        "WHERE first_import = ? AND edited AND ts IS NOT NULL "
        "AND conversation IN (SELECT conversation FROM spans WHERE NOT older) ORDER BY id",
        (import_id,),
    ).fetchall()
    if not edited:
        return
    conversations = sorted({row[1] for row in edited})
    candidates: dict[tuple[int, int], list[tuple[int, str]]] = defaultdict(list)
    for row_id, cid, ts, author in db.execute(
        "SELECT id, conversation, ts, author_id FROM messages WHERE superseded_by_import IS NULL "
        "AND first_import != ? AND ts IS NOT NULL "
        f"AND conversation IN ({','.join('?' * len(conversations))}) "
        f"AND NOT {_HELD} ORDER BY id",
        (import_id, *conversations),
    ):
        candidates[(cid, ts // _MINUTE)].append((row_id, author))
    for new_id, cid, ts, author in edited:
        pool = candidates.get((cid, ts // _MINUTE))
        if not pool:
            continue
        pick = next((c for c in pool if c[1] == author), pool[0])  # the same author if the name held
        pool.remove(pick)
        raw = db.execute(f"SELECT {_RAW} FROM messages WHERE id = ?", (new_id,)).fetchone()
        db.execute("DELETE FROM messages WHERE id = ?", (new_id,))
        db.execute(
            f"UPDATE messages SET ({_RAW}, edited) = ({','.join('?' * 9)}, 1) WHERE id = ?", (*raw, pick[0])
        )
        results[cid].merged_edits += 1
