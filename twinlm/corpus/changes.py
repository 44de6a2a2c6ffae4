"""The user's curation of the corpus, recorded: exclusions, edits and notes, each one undoable and portable.

Every change goes through `apply`, which sets the user's own columns (`conversations.excluded`,
`conversations.user_note`, `messages.excluded`, `messages.user_text`) and, in the same transaction, logs
who/when/what in the `changes` table (its schema is in twinlm/corpus/db.py) with the previous value of
every row it touched, so `undo` can put them back. Rows are named by their stable key (source, native
id), never by row id: an import never touches these columns and re-imports match rows by that key, so
changes survive re-ingesting the same or a newer export, and the log exports to a small JSON file
(`export_changes`) that `import_changes` applies to another corpus (a new machine, a corpus rebuilt from
the exports) by the same keys.

SQLite allows one writer: while a build or an ingest holds the database, a change waits `db.BUSY_TIMEOUT_MS`
and then fails with one clear line, changing nothing (one transaction: the log and the rows together).
"""

from __future__ import annotations

import getpass
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from twinlm.corpus.browse import reindex
from twinlm.corpus.db import Corpus
from twinlm.errors import TwinError

CHANGES_FORMAT = 1  # "twinlm_changes" in an exported file

ACTIONS = ("exclude", "include", "edit", "drop", "keep", "restore", "note")
# What each target's user columns are; nothing else is ever written by a change.
COLUMNS = {"conversation": ("excluded", "user_note"), "message": ("excluded", "user_text")}
_TABLE = {"conversation": "conversations", "message": "messages"}


@dataclass(frozen=True, slots=True)
class Change:
    id: int
    uid: str
    at: str
    user: str
    action: str
    selector: dict[str, Any]
    items: list[list[Any]]  # [target, source, native_id, before {column: value}, after {column: value}]
    undone_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uid": self.uid,
            "at": self.at,
            "user": self.user,
            "action": self.action,
            "selector": self.selector,
            "items": len(self.items),
            "undone_at": self.undone_at,
        }


def apply(
    corpus: Corpus,
    action: str,
    selector: dict[str, Any],
    target: str,
    row_ids: list[int],
    values: dict[str, Any],
    *,
    user: str | None = None,
) -> Change | None:
    """Set `values` (user columns of `target`) on the rows `row_ids`, and log it. Rows that already hold
    the values are left out of the change; None when no row changes (nothing is logged)."""
    columns = COLUMNS[target]
    if not set(values) <= set(columns):
        raise ValueError(f"{target}: only {columns} can be changed, not {sorted(values)}")
    table = _TABLE[target]
    names = list(values)
    with corpus.writing() as db:
        items = []
        for chunk in _chunks(row_ids):
            rows = db.execute(
                f"SELECT id, source, native_id, {', '.join(names)} FROM {table} "
                f"WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for row in rows:
                before = dict(zip(names, row[3:], strict=True))
                if before != values:
                    items.append((row[0], [target, row[1], row[2], before, dict(values)]))
        if not items:
            return None
        db.executemany(
            f"UPDATE {table} SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?",
            ([*values.values(), row_id] for row_id, _ in items),
        )
        if target == "message" and "user_text" in values:
            reindex(db, [row_id for row_id, _ in items])
        return _log(db, action, selector, [item for _, item in items], user=user)


def _log(
    db: sqlite3.Connection,
    action: str,
    selector: dict[str, Any],
    items: list[list[Any]],
    *,
    user: str | None = None,
    uid: str | None = None,
    at: str | None = None,
) -> Change:
    change = Change(
        id=0,
        uid=uid or uuid.uuid4().hex,
        at=at or _now(),
        user=user or _user(),
        action=action,
        selector=selector,
        items=items,
    )
    row_id = db.execute(
        "INSERT INTO changes (uid, at, user, action, selector, items) VALUES (?, ?, ?, ?, ?, ?)",
        (
            change.uid,
            change.at,
            change.user,
            action,
            orjson.dumps(selector).decode(),
            orjson.dumps(items).decode(),
        ),
    ).lastrowid
    assert row_id is not None
    return Change(row_id, change.uid, change.at, change.user, action, selector, items)


@dataclass(frozen=True, slots=True)
class Undone:
    change: Change
    restored: int  # rows put back to their previous value
    kept: int  # rows changed again since (by a later change): left as they are
    missing: int  # rows no longer in the corpus


def undo(corpus: Corpus, change_id: int | None = None) -> Undone:
    """Put back what one change (the latest not yet undone, or `change_id`) changed, and mark it undone.

    A row a later change touched again keeps its later value: undoing the older change must not
    silently revert the newer one (undo that one first)."""
    with corpus.writing() as db:
        if change_id is None:
            row = db.execute(
                "SELECT * FROM changes WHERE undone_at IS NULL ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if row is None:
                raise TwinError("nothing to undo: no change is recorded (see `twinlm changes list`)")
        else:
            row = db.execute("SELECT * FROM changes WHERE id = ?", (change_id,)).fetchone()
            if row is None:
                raise TwinError(f"undo: no change {change_id} (see `twinlm changes list`)")
            if row[7] is not None:
                raise TwinError(f"undo: change {change_id} was already undone at {row[7]}")
        change = _change(row)
        restored = kept = missing = 0
        retexted = []
        for target, source, native_id, before, after in change.items:
            table = _TABLE[target]
            names = list(before)
            current = db.execute(
                f"SELECT id, {', '.join(names)} FROM {table} WHERE source = ? AND native_id = ?",
                (source, native_id),
            ).fetchone()
            if current is None:
                missing += 1
                continue
            if dict(zip(names, current[1:], strict=True)) != after:
                kept += 1
                continue
            db.execute(
                f"UPDATE {table} SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?",
                (*before.values(), current[0]),
            )
            restored += 1
            if target == "message" and "user_text" in before:
                retexted.append(current[0])
        reindex(db, retexted)
        db.execute("UPDATE changes SET undone_at = ? WHERE id = ?", (_now(), change.id))
    return Undone(change, restored, kept, missing)


def log(corpus: Corpus, *, undone: bool = True) -> list[Change]:
    """Every recorded change, oldest first (without the undone ones when `undone` is False)."""
    where = "" if undone else "WHERE undone_at IS NULL"
    return [_change(row) for row in corpus.db.execute(f"SELECT * FROM changes {where} ORDER BY id")]


def export_changes(corpus: Corpus) -> dict[str, Any]:
    """The changes in force (not undone), oldest first, as a JSON-ready document."""
    return {
        "twinlm_changes": CHANGES_FORMAT,
        "changes": [
            {
                "uid": c.uid,
                "at": c.at,
                "user": c.user,
                "action": c.action,
                "selector": c.selector,
                "items": c.items,
            }
            for c in log(corpus, undone=False)
        ],
    }


@dataclass(frozen=True, slots=True)
class Imported:
    changes: int  # changes in the file
    new: int  # of them not yet in this corpus's log (now logged)
    applied: int  # rows set to the file's values
    missing: int  # rows the file names that this corpus does not hold (yet: ingest, then import again)


def import_changes(corpus: Corpus, document: Any, *, where: str = "the changes file") -> Imported:
    """Apply an exported change log: each row by its (source, native id) key gets the change's value.

    Importing the same file again changes nothing (a row the user changed since keeps its value); a
    change undone here is not re-applied. Rows the corpus does not hold yet are counted, so importing
    again after ingesting their export applies the change to them (and undo then covers them too).
    """
    changes = _parse(document, where)
    new = applied = missing = 0
    with corpus.writing() as db:
        retexted = []
        for raw in changes:
            known = db.execute(
                "SELECT id, undone_at, items FROM changes WHERE uid = ?", (raw["uid"],)
            ).fetchone()
            if known is not None and known[1] is not None:
                continue  # undone here: the user's later choice wins
            # Rows a first import of this change already set are left alone (the user may have changed
            # them since); only rows new to this corpus (ingested since) get the change now.
            stored = orjson.loads(known[2]) if known is not None else []
            done = {(item[0], item[1], item[2]) for item in stored}
            found = []
            for target, source, native_id, _, after in raw["items"]:
                if (target, source, native_id) in done:
                    continue
                table = _TABLE[target]
                row = db.execute(
                    f"SELECT id, {', '.join(after)} FROM {table} WHERE source = ? AND native_id = ?",
                    (source, native_id),
                ).fetchone()
                if row is None:
                    missing += 1
                    continue
                current = dict(zip(after, row[1:], strict=True))
                if current != after:
                    db.execute(
                        f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in after)} WHERE id = ?",
                        (*after.values(), row[0]),
                    )
                    applied += 1
                    if target == "message" and "user_text" in after:
                        retexted.append(row[0])
                # The previous value here (not the file's): undo on this machine restores this corpus.
                found.append([target, source, native_id, current, after])
            if known is None:
                who = {"user": raw["user"], "uid": raw["uid"], "at": raw["at"]}
                _log(db, raw["action"], raw["selector"], found, **who)
                new += 1
            elif found:
                db.execute(
                    "UPDATE changes SET items = ? WHERE id = ?",
                    (orjson.dumps(stored + found).decode(), known[0]),
                )
        reindex(db, retexted)
    return Imported(len(changes), new, applied, missing)


def _parse(document: Any, where: str) -> list[dict[str, Any]]:
    """The changes of an exported file, checked: a hand-edited or foreign file is one clear error."""
    if not isinstance(document, dict) or document.get("twinlm_changes") != CHANGES_FORMAT:
        raise TwinError(f'{where}: not a twinlm changes file (expected {{"twinlm_changes": 1, ...}})')
    changes = document.get("changes")
    if not isinstance(changes, list):
        raise TwinError(f"{where}: 'changes' must be a list")
    for i, c in enumerate(changes):
        place = f"{where}: changes[{i}]"
        if not isinstance(c, dict) or not all(
            isinstance(c.get(k), str) for k in ("uid", "at", "user", "action")
        ):
            raise TwinError(f"{place}: needs the strings uid, at, user and action")
        if c["action"] not in ACTIONS:
            raise TwinError(f"{place}: unknown action {c['action']!r} (one of: {', '.join(ACTIONS)})")
        if not isinstance(c.get("selector", {}), dict) or not isinstance(c.get("items"), list):
            raise TwinError(f"{place}: needs a selector object and a list of items")
        c.setdefault("selector", {})
        for j, item in enumerate(c["items"]):
            ok = (
                isinstance(item, list)
                and len(item) == 5
                and item[0] in COLUMNS
                and isinstance(item[1], str)
                and isinstance(item[2], str)
                and isinstance(item[3], dict)
                and isinstance(item[4], dict)
                and item[4]
                and set(item[3]) | set(item[4]) <= set(COLUMNS[item[0]])
                and all(_valid(column, v) for column, v in item[4].items())
            )
            if not ok:
                raise TwinError(
                    f"{place}.items[{j}]: expected [target, source, native_id, before, after] with target "
                    "conversation or message and only that target's user columns"
                )
    return changes


def _valid(column: str, value: Any) -> bool:
    if column == "excluded":
        return value in (0, 1) and not isinstance(value, float)
    return value is None or isinstance(value, str)


def _change(row: tuple[Any, ...]) -> Change:
    row_id, uid, at, user, action, selector, items, undone_at = row
    return Change(row_id, uid, at, user, action, orjson.loads(selector), orjson.loads(items), undone_at)


def _chunks(ids: list[int], size: int = 500) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container): still a change, by someone
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
