"""The review page (`twinlm review`): go through the corpus in the browser and fix what the twin learns.

`review_router(workspace)` is a self-contained FastAPI router (the page at /review, its JSON API under
/review/api) that any app can include; `review_app` is the small app `twinlm review` serves on 127.0.0.1.
Every change goes through `twinlm.corpus.changes` (logged, undoable, the same as the command line), every
view through `twinlm.curate.view` (the build's own steps). The page gets one page of conversations and
one conversation at a time, never the whole corpus.

Only this machine's browser may use it: requests must name a loopback host (a web page elsewhere cannot
reach it through DNS rebinding), and writes must be `application/json` POSTs (a form on another site
cannot send one without a CORS preflight, which is refused). The page runs no inline script and puts
corpus text into the page only as text (textContent), never as markup.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from starlette.responses import Response

from twinlm.corpus import changes as log
from twinlm.corpus.browse import Selector, list_conversations
from twinlm.corpus.db import Corpus, corpus_error
from twinlm.corpus.queries import account_names, owners
from twinlm.curate.view import Viewer, last_build, part_json
from twinlm.errors import TwinError
from twinlm.identities import Identities
from twinlm.prepare.outputs import read_build_info
from twinlm.serve.pages import PAGE_HEADERS, web_file
from twinlm.workspace import open_workspace

_FILES = {
    "review.html": "text/html; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
    "review.css": "text/css; charset=utf-8",
}
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
MAX_PAGE = 200
SMALL_CORPUS = 20_000  # messages: without a build, the live count is computed over the whole corpus
LIVE_LIMIT = 20_000  # messages: a longer conversation changed since the build keeps its last build's count


def _local_only(request: Request) -> None:
    host = request.headers.get("host") or ""
    host = host[: host.find("]") + 1] if host.startswith("[") else host.split(":")[0]
    if host not in _LOCAL_HOSTS:
        raise HTTPException(403, "the review page only answers this machine (127.0.0.1)")
    if request.method == "POST" and not (request.headers.get("content-type") or "").startswith(
        "application/json"
    ):
        raise HTTPException(415, "POST application/json")


@dataclass
class _State:
    """What requests share: the workspace, identities per corpus state, the last build's numbers."""

    root: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    identities: tuple[Any, Identities] | None = None
    built: tuple[float, dict[str, dict[str, int]], float] | None = None  # mtime, per chat, tokens/char
    counted: dict[int, tuple[str, int, int]] = field(default_factory=dict)  # row -> stamp, samples, chars
    touched: dict[str, tuple[int, set[str]]] = field(default_factory=dict)  # change uid -> its chats

    def open(self) -> tuple[Any, Corpus]:
        ws = open_workspace(self.root)
        return ws, _user(lambda: Corpus(ws.corpus_path))  # damaged or busy: the page says so

    def viewer(self, ws: Any, corpus: Corpus) -> Viewer:
        # Who is who needs every account's names (a scan of all messages): once per corpus state.
        stamp = corpus.db.execute("SELECT max(id), (SELECT max(id) FROM imports) FROM messages").fetchone()
        with self.lock:
            if self.identities is None or self.identities[0] != stamp:
                self.identities = (stamp, Identities(ws.config, owners(corpus), account_names(corpus)))
            identities = self.identities[1]
        return Viewer(ws.config, corpus, identities)

    def last_build(self) -> tuple[float, dict[str, dict[str, int]], float] | None:
        data = self.root / "data"
        try:
            mtime = (data / "build.json").stat().st_mtime
        except OSError:
            return None
        with self.lock:
            if self.built is None or self.built[0] != mtime:
                try:
                    per, report = last_build(data), read_build_info(data)
                except TwinError:  # a damaged dataset: the page shows no build figures
                    return None
                tokens = sum((report.get("trained_tokens") or {}).values())
                chars = sum(entry["trained_chars"] for entry in per.values())
                self.built = (mtime, per, tokens / chars if chars else 0.25)
            return self.built


def review_router(workspace: Path) -> APIRouter:
    """The review page and its API for the workspace at `workspace` (include it in any FastAPI app)."""
    state = _State(Path(workspace))
    router = APIRouter(dependencies=[Depends(_local_only)])

    @router.get("/review", include_in_schema=False)
    def page() -> Response:
        return _file("review.html")

    @router.get("/review/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in _FILES:
            raise HTTPException(404)
        return _file(name)

    @router.get("/review/api/sources")
    def sources() -> Any:
        _ws, corpus = state.open()
        with corpus:
            return [r[0] for r in corpus.db.execute("SELECT DISTINCT source FROM conversations ORDER BY 1")]

    @router.get("/review/api/conversations")
    def conversations(
        source: str | None = None,
        chat: str | None = None,
        person: str | None = None,
        search: str | None = None,
        excluded: bool | None = None,
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=MAX_PAGE),
    ) -> Any:
        sel = Selector(
            source=source or None,
            chat=chat or None,
            person=person or None,
            search=search or None,
            excluded=excluded,
        )
        ws, corpus = state.open()
        with corpus:
            total, rows = _user(
                lambda: list_conversations(corpus, sel, ws.config, offset=offset, limit=limit)
            )
        built = state.last_build()
        per = built[1] if built else {}
        return {
            "total": total,
            "offset": offset,
            "conversations": [r.to_json(per) for r in rows],
        }

    @router.get("/review/api/conversations/{row_id}")
    def conversation(
        row_id: int, offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=MAX_PAGE)
    ) -> Any:
        ws, corpus = state.open()
        with corpus:
            try:
                view = state.viewer(ws, corpus).conversation(row_id, offset, limit)
            except KeyError:
                raise HTTPException(404, f"no conversation {row_id}") from None
        body = view.to_json()
        body["offset"] = offset
        return body

    @router.get("/review/api/conversations/{row_id}/sessions/{index}")
    def session(row_id: int, index: int) -> Any:
        ws, corpus = state.open()
        with corpus:
            try:
                view = state.viewer(ws, corpus).conversation(row_id, index, 1)
            except KeyError:
                raise HTTPException(404, f"no conversation {row_id}") from None
        if not view.parts:
            raise HTTPException(404, f"conversation {row_id} has no session {index}")
        return part_json(view.parts[0])

    @router.post("/review/api/exclude")
    def exclude(body: dict[str, Any]) -> Any:
        """{"conversation": id, "session": index (optional), "include": false}"""
        include = bool(body.get("include", False))
        row_id = _int(body, "conversation")
        ws, corpus = state.open()
        with corpus:
            action = "include" if include else "exclude"
            if body.get("session") is None:
                if (
                    corpus.db.execute("SELECT 1 FROM conversations WHERE id = ?", (row_id,)).fetchone()
                    is None
                ):
                    raise HTTPException(404, f"no conversation {row_id}")
                change = _user(
                    lambda: log.apply(
                        corpus,
                        action,
                        {"target": "conversation", "ids": [str(row_id)], "via": "review"},
                        "conversation",
                        [row_id],
                        {"excluded": 0 if include else 1},
                    )
                )
            else:
                index = _int(body, "session")
                try:
                    view = state.viewer(ws, corpus).conversation(row_id, index, 1) if index >= 0 else None
                except KeyError:
                    raise HTTPException(404, f"no conversation {row_id}") from None
                if view is None or not view.parts:
                    raise HTTPException(404, f"conversation {row_id} has no session {index}")
                ids = [m.id for m in view.parts[0].messages]
                change = _user(
                    lambda: log.apply(
                        corpus,
                        action,
                        {"target": "message", "conversation": str(row_id), "session": index, "via": "review"},
                        "message",
                        ids,
                        {"excluded": 0 if include else 1},
                    )
                )
        return _changed(change)

    @router.post("/review/api/edit")
    def edit(body: dict[str, Any]) -> Any:
        """{"message": id, "text": "..."} or {"message": id, "drop"|"keep"|"restore": true}"""
        row_id = _int(body, "message")
        if "text" in body:
            text = body["text"]
            if not isinstance(text, str) or not text.strip():
                raise HTTPException(400, "the new text is empty: drop the message instead")
            action, values = "edit", {"user_text": text}
        elif body.get("drop"):
            action, values = "drop", {"excluded": 1}
        elif body.get("keep"):
            action, values = "keep", {"excluded": 0}
        elif body.get("restore"):
            action, values = "restore", {"user_text": None}
        else:
            raise HTTPException(400, "give text, drop, keep or restore")
        _ws, corpus = state.open()
        with corpus:
            if corpus.db.execute("SELECT 1 FROM messages WHERE id = ?", (row_id,)).fetchone() is None:
                raise HTTPException(404, f"no message {row_id}")
            change = _user(
                lambda: log.apply(
                    corpus,
                    action,
                    {"target": "message", "ids": [str(row_id)], "via": "review"},
                    "message",
                    [row_id],
                    values,
                )
            )
        return _changed(change)

    @router.post("/review/api/undo")
    def undo(body: dict[str, Any]) -> Any:
        _ws, corpus = state.open()
        with corpus:
            which = None if body.get("change") is None else _int(body, "change")
            done = _user(lambda: log.undo(corpus, which))
        return {"undone": done.change.to_json(), "restored": done.restored, "kept": done.kept}

    @router.get("/review/api/totals")
    def totals() -> Any:
        """The samples and trained tokens the next build would make (an estimate, labelled as such)."""
        ws, corpus = state.open()
        with corpus:
            return _totals(state, ws, corpus)

    return router


def review_app(workspace: Path) -> FastAPI:
    """The app `twinlm review` serves: the review router alone."""
    app = FastAPI(title="twinlm review", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(review_router(workspace))
    return app


def _file(name: str) -> Response:
    return Response(web_file(name), media_type=_FILES[name], headers=PAGE_HEADERS)


def _int(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise HTTPException(400, f"{key}: a number is needed")
    return value


def _user(call: Any) -> Any:
    """A TwinError (nothing matches, a damaged corpus) or a busy corpus is the user's: 409, its one line."""
    try:
        return call()
    except TwinError as e:
        raise HTTPException(409, str(e)) from None
    except sqlite3.DatabaseError as e:  # another twinlm command holds the corpus (a build reading it)
        found = corpus_error(e)
        if found is None:
            raise
        raise HTTPException(409, str(found)) from None


def _changed(change: log.Change | None) -> Any:
    return {"change": change and change.to_json(), "changed": len(change.items) if change else 0}


def _totals(state: _State, ws: Any, corpus: Corpus) -> dict[str, Any]:
    """The last build's samples and trained tokens per conversation, with each conversation changed since
    recomputed through the build's steps (tokens estimated from characters at the last build's ratio).
    A conversation is recomputed only when its own state changed since it was last counted."""
    built = state.last_build()
    if built is None:
        messages = corpus.db.execute("SELECT max(id) FROM messages").fetchone()[0] or 0
        if messages > SMALL_CORPUS:
            return {"samples": None, "trained_tokens": None, "label": "run `twinlm build` for the counts"}
        ids = [r[0] for r in corpus.db.execute("SELECT id FROM conversations")]
        per: dict[str, dict[str, int]] = {}
        ratio, changed_keys = 0.25, set()
    else:
        mtime, per, ratio = built
        changed_keys = _changed_since(state, corpus, _iso(mtime))
        ids = [
            r[0]
            for r in corpus.db.execute("SELECT id, source, native_id FROM conversations")
            if f"{r[1]}:{r[2]}" in changed_keys
        ]
    samples = sum(v["samples"] for k, v in per.items() if k not in changed_keys)
    chars = sum(v["trained_chars"] for k, v in per.items() if k not in changed_keys)
    viewers: list[Viewer] = []  # made on first need

    def viewer() -> Viewer:
        if not viewers:
            viewers.append(state.viewer(ws, corpus))
        return viewers[0]

    settings = hashlib.sha256(ws.config.model_dump_json().encode()).hexdigest()
    for row_id in ids:
        stamp = _stamp(corpus, row_id, settings)
        cached = state.counted.get(row_id)
        if cached is None or cached[0] != stamp:
            counted = _count(corpus, row_id, per, viewer)
            state.counted[row_id] = cached = (stamp, *counted)
        samples += cached[1]
        chars += cached[2]
    label = (
        "estimate: the last build, with the conversations changed since recomputed (up to "
        f"{LIVE_LIMIT:,} messages each)"
        if built
        else "estimate: no build yet (tokens ≈ characters / 4)"
    )
    return {"samples": samples, "trained_tokens": round(chars * ratio), "label": label}


def _stamp(corpus: Corpus, row_id: int, settings: str) -> str:
    """What a conversation's count depends on: its exclusion, its messages, the user's choices in it
    (read through the curation indexes: cheap), and the settings."""
    head = corpus.db.execute(
        "SELECT excluded, (SELECT count(*) FROM messages WHERE conversation + 0 = ?), "
        "(SELECT max(id) FROM messages WHERE conversation + 0 = ?) FROM conversations WHERE id = ?",
        (row_id, row_id, row_id),
    ).fetchone()
    choices = hashlib.sha256()
    for mid, excluded, user_text in corpus.db.execute(
        "SELECT id, excluded, user_text FROM messages WHERE conversation + 0 = ? "
        "AND (excluded OR user_text IS NOT NULL)",
        (row_id,),
    ):
        choices.update(orjson.dumps([mid, excluded, user_text]))
    return f"{head}|{choices.hexdigest()}|{settings}"


def _count(corpus: Corpus, row_id: int, per: dict[str, dict[str, int]], viewer: Any) -> tuple[int, int]:
    """(samples, trained characters) the next build makes of one conversation."""
    source, native_id, kind, excluded = corpus.db.execute(
        "SELECT source, native_id, kind, excluded FROM conversations WHERE id = ?", (row_id,)
    ).fetchone()
    if excluded:
        return 0, 0
    size = corpus.db.execute(
        "SELECT count(*) FROM messages WHERE conversation + 0 = ?", (row_id,)
    ).fetchone()[0]
    # Too long to clean on every change, or a document (chunked by the build, not cut into sessions):
    # counted as at the last build.
    if size > LIVE_LIMIT or kind == "document":
        old = per.get(f"{source}:{native_id}", {"samples": 0, "trained_chars": 0})
        return old["samples"], old["trained_chars"]
    made = viewer().conversation(row_id).samples()
    return len(made), sum(s.trained_chars for s in made)


def _changed_since(state: _State, corpus: Corpus, since: str) -> set[str]:
    """Conversations (source:native id) that a change made or undone after `since` touched (the keys each
    change touched are looked up once)."""
    keys: set[str] = set()
    for change in log.log(corpus):
        if change.at < since and (change.undone_at is None or change.undone_at < since):
            continue
        touched = state.touched.get(change.uid)
        if touched is None or len(change.items) != touched[0]:
            found = set()
            for target, source, native_id, _, _ in change.items:
                if target == "conversation":
                    found.add(f"{source}:{native_id}")
                    continue
                row = corpus.db.execute(
                    "SELECT c.native_id FROM messages AS m JOIN conversations AS c ON c.id = m.conversation "
                    "WHERE m.source = ? AND m.native_id = ?",
                    (source, native_id),
                ).fetchone()
                if row:
                    found.add(f"{source}:{row[0]}")
            touched = state.touched[change.uid] = (len(change.items), found)
        keys |= touched[1]
    return keys


def _iso(mtime: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(mtime, UTC).isoformat(timespec="seconds")
