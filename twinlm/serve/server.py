"""`twinlm serve`: an OpenAI-compatible HTTP API (FastAPI) and a small web chat page, for one twin.

Endpoints: GET /v1/models (one model per persona, see twinlm.serve.serve_api for the ids), POST
/v1/chat/completions (with and without `stream`; OpenAI's SSE chunks, `[DONE]`, usage), GET /health (the
workers' state, no key needed), and the page at / (twinlm/serve/web/).

Order of checks on a request, as OpenAI's: the API key (401), the body size (413, before anything is
parsed: Content-Length, then the bytes as they arrive), JSON (400), the parameters (400), the model
(404), then the prompt (400 where the twin cannot render the messages). Only then is the request queued
(twinlm.serve.serve_pool); a full queue is 429. POST bodies must be `application/json`: a web page on
another site cannot then make a browser post to this server without a CORS preflight, which it refuses;
and on loopback the Host header must be a loopback name (no DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from twinlm.errors import TwinError
from twinlm.serve.backends import Backend, Sampling
from twinlm.serve.pages import PAGE_HEADERS, web_file
from twinlm.serve.serve_api import (
    ApiError,
    ChatRequest,
    Chunks,
    Limits,
    completion,
    completion_id,
    invalid,
    model_ids,
    parse_chat_request,
    parse_json,
    resolve_model,
    usage,
)
from twinlm.serve.serve_pool import Job, QueueFull, WorkerPool

if TYPE_CHECKING:
    from twinlm.config import ServeConfig
    from twinlm.serve.twin import Twin

log = logging.getLogger("twinlm.serve")

_PAGES = {  # file under web/ -> media type
    "index.html": "text/html; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
}


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


_LOCAL_NAMES = ("localhost", "::1")


def _is_local(name: str) -> bool:
    return name in _LOCAL_NAMES or name.startswith("127.")


class _LocalHostsOnly:
    """Where the server listens on loopback only, requests must name it by a loopback name: a web page
    elsewhere cannot then reach it through DNS rebinding (its Host header would be its own name)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
            if host and not _is_local(name):
                error = ApiError(
                    400,
                    f"Host {host!r} is not this server's name: it listens on loopback only; use "
                    "http://127.0.0.1:PORT or http://localhost:PORT",
                    code="invalid_host",
                )
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _EventStream(StreamingResponse):
    """A server-sent event stream that notices a client leaving at once: it listens for the disconnect
    beside the stream (whatever ASGI version the server speaks) and sets the job's cancel event, so the
    worker stops before its next token."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None], cancel: threading.Event) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = events
        self.cancel = cancel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        complete = False
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    nonlocal complete
                    start = {
                        "type": "http.response.start",
                        "status": self.status_code,
                        "headers": self.raw_headers,
                    }
                    await send(start)
                    async for chunk in self.events:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    complete = True
                    group.cancel_scope.cancel()

                async def listen() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(listen)
        finally:
            if not complete:  # the client left (or sending failed): free the worker
                self.cancel.set()
                with anyio.CancelScope(shield=True):
                    await self.events.aclose()


class _Service:
    """What the routes share: the twin, its model ids, the limits, the workers."""

    def __init__(
        self,
        twin: Twin,
        settings: ServeConfig,
        sampling: Sampling,
        backends: Sequence[Backend],
        api_key: str | None,
    ) -> None:
        self.twin = twin
        self.settings = settings
        self.sampling = sampling
        self.ids = model_ids(twin.personas)
        self.limits = Limits(settings.max_messages, settings.max_tokens, int(twin.backend.context_length))
        self.pool = WorkerPool(backends, settings.max_queued)
        self.api_key = api_key or None
        self.created = int(time.time())
        self.prompt_lock = threading.Lock()  # the tokenizer is shared; prompts are made one at a time
        # A request without max_tokens: the configured default, but at most half the context, so that a
        # long chat keeps its history (an explicit max_tokens may take more, up to the limit).
        self.default_max_tokens = max(
            1, min(sampling.max_tokens, settings.max_tokens, self.limits.context_length // 2)
        )

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if not header:
            raise ApiError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (the server's "
                "TWINLM_API_KEY).",
                code=None,
            )
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.max_request_bytes
        too_large = ApiError(
            413,
            f"Request body too large: this server accepts at most {limit} bytes.",
            code="request_too_large",
        )
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise ApiError(
                400,
                f"Content-Type must be application/json (got {media or 'none'}).",
                code="invalid_content_type",
            )
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise too_large
        return bytes(body)

    def model_object(self, model_id: str) -> dict[str, Any]:
        name = self.ids[model_id]
        return {
            "id": model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "twinlm",
            "name": name,  # the persona as written (twinlm's addition to OpenAI's model object)
        }

    def prompt(self, persona: str, chat: ChatRequest, max_tokens: int) -> list[int]:
        with self.prompt_lock:
            try:
                return list(self.twin.prompt_from_messages(persona, chat.messages, max_new_tokens=max_tokens))
            except TwinError as err:
                raise invalid(str(err), "messages") from None


def create_app(
    twin: Twin,
    settings: ServeConfig,
    *,
    sampling: Sampling | None = None,
    backends: Sequence[Backend] | None = None,
    api_key: str | None = None,
    workspace: Path | None = None,
) -> FastAPI:
    """The app serving `twin`. `sampling`: the defaults a request's parameters override (the config's
    chat.sampling); `backends`: one per worker (default: the twin's own, one worker); `api_key`: required
    as a Bearer token on /v1/ where given (the CLI takes it from TWINLM_API_KEY); `workspace`: where
    given, the same app serves that workspace's review page at /review (twinlm.serve.review: answered to
    this machine only, whatever the host the server listens on)."""
    service = _Service(twin, settings, sampling or Sampling(), backends or [twin.backend], api_key)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.pool.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.pool.stop)

    app = FastAPI(title="twinlm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = service
    if _is_local(settings.host):
        app.add_middleware(_LocalHostsOnly)
    if workspace is not None:
        from twinlm.serve.review import review_router

        app.include_router(review_router(workspace))
    pages = {name: web_file(name) for name in _PAGES}

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        headers = {
            # A body refused unread: close the connection, or the server would go on reading it to the end.
            413: {"Connection": "close"},
            429: {"Retry-After": "1"},  # OpenAI's clients retry a 429 after this many seconds
        }.get(error.status)
        return error_response(error, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = str(error.detail)
        return error_response(ApiError(error.status_code, message, code=None), dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(invalid(str(error.errors()[:1]), None))

    @app.exception_handler(Exception)
    async def _bug(_: Request, error: Exception) -> JSONResponse:
        log.error("request failed", exc_info=error)
        return error_response(
            ApiError(
                500, "The server had an error while processing your request.", type="server_error", code=None
            )
        )

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(pages["index.html"], media_type=_PAGES["index.html"], headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name == "index.html" or name not in pages:
            raise StarletteHTTPException(404)
        return Response(pages[name], media_type=_PAGES[name], headers=PAGE_HEADERS)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        # api_key: whether /v1 wants one (the page asks for it before its first call, not after a 401)
        return {"status": "ok", **service.pool.stats(), "api_key": service.api_key is not None}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        service.check_key(request)
        return {"object": "list", "data": [service.model_object(m) for m in service.ids]}

    @app.get("/v1/models/{model:path}")
    async def get_model(request: Request, model: str) -> dict[str, Any]:
        service.check_key(request)
        return service.model_object(resolve_model(model, service.ids))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        service.check_key(request)
        chat = parse_chat_request(parse_json(await service.read_body(request)), service.limits)
        model = resolve_model(chat.model, service.ids)
        max_tokens = chat.max_tokens or service.default_max_tokens
        prompt = await anyio.to_thread.run_sync(service.prompt, service.ids[model], chat, max_tokens)
        sampling = dataclasses.replace(service.sampling, max_tokens=max_tokens, **chat.sampling)
        try:
            job = service.pool.submit(prompt, sampling)
        except QueueFull:
            raise ApiError(
                429,
                "The server is busy: too many requests are waiting. Retry in a few seconds.",
                type="requests",
                code="rate_limit_exceeded",
            ) from None
        cid, created = completion_id(), int(time.time())
        if chat.stream:
            chunks = Chunks(cid, created, model, chat.include_usage)
            return _EventStream(_stream(job, chunks), job.cancel)
        return await _collect(job, request, cid, created, model)

    return app


async def _stream(job: Job, chunks: Chunks) -> AsyncGenerator[bytes, None]:
    """The SSE events of one job: the role first, content as it comes (the pieces the worker listed
    since the last look go out as one chunk: the same text, fewer events where the loop is behind), the
    finish reason, usage where asked, [DONE]."""
    try:
        yield chunks.role()
        while True:
            text: list[str] = []
            for kind, value in await job.take():
                if kind == "piece":
                    text.append(value)
                    continue
                if text:
                    yield chunks.content("".join(text))
                    text = []
                if kind == "done":
                    if value is None:  # cancelled before it started (the server is stopping)
                        return
                    used = usage(value.prompt_tokens, value.completion_tokens)
                    yield chunks.end(value.finish_reason, used)
                else:
                    yield Chunks.error(_generation_error(value))
                return
            if joined := "".join(text):
                yield chunks.content(joined)
    finally:
        job.cancel.set()  # a no-op after the end; stops the worker where the stream ended early


def _generation_error(error: BaseException) -> ApiError:
    if isinstance(error, TwinError):
        return ApiError(400, str(error), param="messages", code="invalid_value")
    return ApiError(
        500, "The server had an error while generating the reply.", type="server_error", code=None
    )


async def _collect(job: Job, request: Request, cid: str, created: int, model: str) -> Response:
    """A whole reply for a non-streaming request; a client that leaves while waiting cancels its job."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel.set()
        job.emit("left", None)

    watcher = asyncio.create_task(watch())
    try:
        text: list[str] = []
        while True:
            for kind, value in await job.take():
                if kind == "piece":
                    text.append(value)
                elif kind == "done" and value is not None:
                    used = usage(value.prompt_tokens, value.completion_tokens)
                    body = completion(cid, created, model, "".join(text), value.finish_reason, used)
                    return Response(orjson.dumps(body), media_type="application/json")
                elif kind == "error":
                    return error_response(_generation_error(value))
                else:  # the client left, or the server is stopping: nobody reads this
                    return Response(status_code=499)
    finally:
        watcher.cancel()
        job.cancel.set()
