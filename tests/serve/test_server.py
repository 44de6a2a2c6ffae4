"""`twinlm serve` against a fake backend (fast, deterministic): the OpenAI client, the SSE format, errors
as OpenAI sends them (and a property test throwing random JSON), 50 concurrent streams, fair queueing,
and clients that leave mid-stream or while queued freeing their worker at once.

The same server on the real tiny GGUF is tests/serve/test_server_llama.py; the page, test_web_page.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import serve_fakes as kit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import serving, sse_events, wait_until

from twinlm.config import ServeConfig
from twinlm.serve.backends import Sampling
from twinlm.serve.serve_api import model_ids, slug
from twinlm.serve.server import create_app

KEY = "test-key-123"


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer: Any) -> Any:
    return tiny_tokenizer


def _app(
    tokenizer: Any,
    *,
    workers: int = 1,
    reply: str | None = None,
    delay: float = 0.0,
    api_key: str | None = None,
    **limits: Any,
) -> tuple[Any, list[Any]]:
    backends = [kit.FakeBackend(tokenizer, reply or kit.FAKE_REPLY, delay=delay) for _ in range(workers)]
    twin = kit.make_fake_twin(backends[0])
    app = create_app(
        twin, ServeConfig(workers=workers, **limits), sampling=Sampling(), backends=backends, api_key=api_key
    )
    return app, backends


@pytest.fixture(scope="module")
def server(tokenizer: Any) -> Iterator[str]:
    app, _ = _app(tokenizer, max_request_bytes=4096, max_tokens=64, max_messages=8)
    with serving(app) as url:
        yield url


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "sam", "messages": [{"role": "user", "content": "are you free on sunday?"}], **extra}


# --- model ids -------------------------------------------------------------------------------------------


def test_model_ids_are_slugs_of_the_persona_names_unique_in_order() -> None:
    assert slug("Alex Rivera") == "alex-rivera"
    assert slug("José  O'Neil") == "jose-o-neil"
    assert slug("🙂") == "persona"
    assert model_ids(["Alex Rivera", "alex rivera", "ALEX-RIVERA", "Sam"]) == {
        "alex-rivera": "Alex Rivera",
        "alex-rivera-2": "alex rivera",
        "alex-rivera-3": "ALEX-RIVERA",
        "sam": "Sam",
    }


# --- the OpenAI client -----------------------------------------------------------------------------------


def test_openai_client_lists_models_completes_and_streams(server: str) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    models = client.models.list().data
    assert [(m.id, m.model_extra["name"]) for m in models] == [("alex-rivera", "Alex Rivera"), ("sam", "Sam")]
    assert client.models.retrieve("sam").id == "sam"

    reply = client.chat.completions.create(model="sam", messages=_chat()["messages"])
    assert reply.object == "chat.completion" and reply.model == "sam"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == kit.FAKE_REPLY
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    # The full name works as the model too.
    chunks = list(
        client.chat.completions.create(
            model="Alex Rivera",
            messages=_chat()["messages"],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == kit.FAKE_REPLY
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].model == "alex-rivera"

    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nobody", messages=_chat()["messages"])
    assert caught.value.code == "model_not_found"


def test_stream_is_openais_sse_format(server: str) -> None:
    with httpx.stream(
        "POST", f"{server}/v1/chat/completions", json=_chat(stream=True), timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    assert raw.endswith("data: [DONE]\n\n") and raw.startswith("data: {")
    events = sse_events(iter(raw.split("\n")))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == kit.FAKE_REPLY


def test_sampling_parameters_reach_the_backend(tokenizer: Any) -> None:
    app, backends = _app(tokenizer)
    seen: list[Sampling] = []
    real = backends[0].generate

    def generate(prompt_ids: list[int], sampling: Sampling, cancel: Any = None) -> Any:
        seen.append(sampling)
        return real(prompt_ids, sampling, cancel)

    backends[0].generate = generate
    with serving(app) as url:
        body = _chat(temperature=0, top_p=0.5, seed=7, stop=["evening"], max_tokens=30, min_p=0.1)
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).json()
    assert seen == [
        Sampling(
            temperature=0,
            top_p=0.5,
            min_p=0.1,
            repetition_penalty=1.1,
            max_tokens=30,
            seed=7,
            stop=("evening",),
        )
    ]
    assert reply["choices"][0]["message"]["content"] == "sure, sunday "  # the stop string is left out
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_max_tokens_ends_with_length(server: str) -> None:
    reply = httpx.post(f"{server}/v1/chat/completions", json=_chat(max_tokens=2), timeout=30).json()
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 2


def test_a_failing_generation_is_an_error_and_the_worker_goes_on(tokenizer: Any) -> None:
    app, backends = _app(tokenizer)
    real = backends[0].generate
    calls: list[int] = []

    def generate(prompt_ids: list[int], sampling: Sampling, cancel: Any = None) -> Any:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("the model broke")
        return real(prompt_ids, sampling, cancel)

    backends[0].generate = generate
    with serving(app) as url:
        plain = httpx.post(f"{url}/v1/chat/completions", json=_chat(), timeout=30)
        assert plain.status_code == 500
        assert plain.json()["error"]["type"] == "server_error"
        assert "the model broke" not in plain.text  # no internals to clients
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=_chat(stream=True), timeout=30) as r:
            events = sse_events(r.iter_lines())
        assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
        assert json.loads(events[-1])["error"]["type"] == "server_error"
        assert httpx.post(f"{url}/v1/chat/completions", json=_chat(), timeout=30).status_code == 200


# --- errors ----------------------------------------------------------------------------------------------

JSON = {"content-type": "application/json"}
_ERRORS = [
    ("malformed JSON", b'{"model": "sam", "messages": [', JSON, 400, None, None),
    ("not an object", b"[1, 2]", JSON, 400, None, "invalid_type"),
    ("unknown model", _chat(model="nobody"), None, 404, "model", "model_not_found"),
    ("no model", {"messages": _chat()["messages"]}, None, 400, "model", "missing_required_parameter"),
    (
        "bad role",
        _chat(messages=[{"role": "wizard", "content": "hi"}]),
        None,
        400,
        "messages[0].role",
        "invalid_value",
    ),
    (
        "tool role",
        _chat(messages=[{"role": "tool", "content": "x"}]),
        None,
        400,
        "messages[0].role",
        "invalid_value",
    ),
    ("no messages", _chat(messages=[]), None, 400, "messages", "invalid_value"),
    (
        "too many messages",
        _chat(messages=[{"role": "user", "content": "hi"}] * 9),
        None,
        400,
        "messages",
        "too_many_messages",
    ),
    (
        "content not text",
        _chat(messages=[{"role": "user", "content": 5}]),
        None,
        400,
        "messages[0].content",
        "invalid_type",
    ),
    ("max_tokens over the limit", _chat(max_tokens=65), None, 400, "max_tokens", "invalid_value"),
    ("max_tokens zero", _chat(max_tokens=0), None, 400, "max_tokens", "invalid_value"),
    ("temperature too high", _chat(temperature=3), None, 400, "temperature", "invalid_value"),
    ("stream not a boolean", _chat(stream="yes"), None, 400, "stream", "invalid_type"),
    ("n above 1", _chat(n=2), None, 400, "n", "unsupported_parameter"),
    ("unknown parameter", _chat(wat=1), None, 400, "wat", "unknown_parameter"),
    (
        "not JSON content",
        b"model=sam",
        {"content-type": "application/x-www-form-urlencoded"},
        400,
        None,
        "invalid_content_type",
    ),
    (
        "body over the limit",
        _chat(messages=[{"role": "user", "content": "x" * 5000}]),
        None,
        413,
        None,
        "request_too_large",
    ),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "param", "code"), [e[1:] for e in _ERRORS], ids=[e[0] for e in _ERRORS]
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    server: str, body: Any, headers: dict[str, str] | None, status: int, param: str | None, code: str | None
) -> None:
    if isinstance(body, bytes):
        response = httpx.post(f"{server}/v1/chat/completions", content=body, headers=headers, timeout=30)
    else:
        response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert (error["param"], error["code"]) == (param, code)
    assert httpx.post(f"{server}/v1/chat/completions", json=_chat(), timeout=30).status_code == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read(server: str) -> None:
    """No Content-Length (chunked), 200 MB: refused as the bytes pass the limit, not after the whole body
    (the server closes the connection; the client stops sending long before the end)."""
    sent: list[int] = []

    def body() -> Iterator[bytes]:
        for _ in range(200_000):
            sent.append(1)
            yield b"x" * 1024

    try:
        response = httpx.post(f"{server}/v1/chat/completions", content=body(), headers=JSON, timeout=30)
    except httpx.TransportError:  # the server answered and closed while the body was still being sent
        pass
    else:
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
    assert len(sent) < 200_000
    assert httpx.post(f"{server}/v1/chat/completions", json=_chat(), timeout=30).status_code == 200


def test_unknown_paths_and_methods_are_openai_errors(server: str) -> None:
    missing = httpx.get(f"{server}/v1/engines", timeout=30)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Invalid URL (GET /v1/engines)"
    wrong = httpx.get(f"{server}/v1/chat/completions", timeout=30)
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{server}/v1/models/nobody", timeout=30).status_code == 404


def test_api_key_is_required_where_set(tokenizer: Any) -> None:
    app, _ = _app(tokenizer, api_key=KEY)
    with serving(app) as url:
        for headers, code in (
            ({}, None),
            ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
            ({"Authorization": f"Basic {KEY}"}, "invalid_api_key"),
        ):
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
                response = httpx.request(method, f"{url}{path}", json=_chat(), headers=headers, timeout=30)
                assert response.status_code == 401, (headers, path)
                assert response.json()["error"]["code"] == code
        ok = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in ok.models.list().data] == ["alex-rivera", "sam"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()
        # The page and the health check need no key (the page asks for it).
        assert httpx.get(f"{url}/", timeout=30).status_code == 200
        assert httpx.get(f"{url}/health", timeout=30).json()["api_key"] is True


def test_on_loopback_only_loopback_host_names_are_served(server: str, tokenizer: Any) -> None:
    """A page on another site reaching 127.0.0.1 by DNS rebinding sends its own name as Host: refused."""
    port = server.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "192.168.1.5", f"[fe80::1]:{port}"):
        refused = httpx.get(f"{server}/v1/models", headers={"Host": host}, timeout=30)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_host", host
        assert httpx.get(f"{server}/", headers={"Host": host}, timeout=30).status_code == 400
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "127.0.0.2"):
        assert httpx.get(f"{server}/v1/models", headers={"Host": host}, timeout=30).status_code == 200, host
    # Listening beyond loopback, any name is served (an API key is the guard there).
    app, _ = _app(tokenizer, host="0.0.0.0")
    with serving(app) as url:
        assert httpx.get(f"{url}/v1/models", headers={"Host": "twin.lan:8000"}, timeout=30).status_code == 200


# --- random JSON -----------------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "", "USER"]) | _json,
        "content": st.text(max_size=40) | _json,
    },
    optional={"name": st.text(max_size=10) | _json},
)
_request = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["sam", "alex-rivera", "Sam", "Alex Rivera", "nobody"]) | _json,
        "messages": st.lists(_message, max_size=10) | _json,
    },
    optional={
        key: _json | st.integers(-5, 100) | st.floats(-3, 3)
        for key in (
            "stream",
            "max_tokens",
            "temperature",
            "top_p",
            "stop",
            "seed",
            "n",
            "stream_options",
            "max_completion_tokens",
            "min_p",
            "repetition_penalty",
            "user",
            "frequency_penalty",
        )
    },
)


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(_json, _request))
def test_random_json_gets_a_reply_or_an_openai_error_never_a_crash(client: httpx.Client, data: Any) -> None:
    response = client.post("/v1/chat/completions", content=json.dumps(data), headers=JSON)
    assert response.status_code in (200, 400, 404, 413), response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert sse_events(iter(response.text.split("\n")))[-1] == "[DONE]"
    else:
        assert response.json()["object"] == "chat.completion"
    assert client.get("/health").json()["status"] == "ok"


# --- load, fairness, clients that leave ------------------------------------------------------------------


async def _stream_reply(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> tuple[str, str | None, list[str]]:
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        lines = [line async for line in response.aiter_lines()]
    events = sse_events(iter(lines))
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    return text, chunks[-1]["choices"][0]["finish_reason"] if chunks else None, events


@pytest.mark.parametrize("workers", [1, 3])
def test_fifty_concurrent_streams_all_complete(tokenizer: Any, workers: int) -> None:
    app, backends = _app(tokenizer, workers=workers, delay=0.001, max_queued=64)
    with serving(app) as url:

        async def main() -> list[tuple[str, str | None, list[str]]]:
            limits = httpx.Limits(max_connections=60)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                return await asyncio.gather(
                    *(_stream_reply(client, url, _chat(stream=True)) for _ in range(50))
                )

        results = asyncio.run(main())
        health = httpx.get(f"{url}/health", timeout=30).json()
    assert [(text, reason, events[-1]) for text, reason, events in results] == [
        (kit.FAKE_REPLY, "stop", "[DONE]")
    ] * 50
    assert sum(len(b.prompts) for b in backends) == 50
    assert all(b.prompts for b in backends)  # every worker took part
    assert health == {
        "status": "ok",
        "workers": workers,
        "busy": 0,
        "queued": 0,
        "served": 50,
        "api_key": False,
    }


def test_requests_wait_in_line_first_come_first_served(tokenizer: Any) -> None:
    """One worker, requests queued while it is busy: generated in the order they arrived."""
    app, backends = _app(tokenizer, delay=0.01)
    order: list[str] = []
    real = backends[0].generate
    gate = threading.Event()

    def generate(prompt_ids: list[int], sampling: Sampling, cancel: Any = None) -> Any:
        gate.wait(30)
        order.append(str(sampling.seed))
        return real(prompt_ids, sampling, cancel)

    backends[0].generate = generate
    with serving(app) as url:

        async def main() -> None:
            async with httpx.AsyncClient(timeout=120) as client:
                tasks = []
                for i in range(6):
                    tasks.append(
                        asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=_chat(seed=i)))
                    )
                    await asyncio.to_thread(
                        wait_until, lambda n=i: _stats(url)["busy"] + _stats(url)["queued"] == n + 1, "queued"
                    )
                gate.set()
                replies = await asyncio.gather(*tasks)
                assert [r.status_code for r in replies] == [200] * 6

        asyncio.run(main())
    assert order == [str(i) for i in range(6)]


def _stats(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=30).json()


def test_a_full_queue_is_429_and_the_request_is_not_lost_later(tokenizer: Any) -> None:
    app, _ = _app(tokenizer, reply="word " * 2000, delay=0.25, max_queued=0)
    with (
        serving(app) as url,
        httpx.stream("POST", f"{url}/v1/chat/completions", json=_chat(stream=True), timeout=30) as first,
    ):
        lines = first.iter_lines()  # kept: a dropped line iterator closes the response (the client leaves)
        assert next(lines).startswith("data: ")
        wait_until(lambda: _stats(url)["busy"] == 1, "the first request runs")
        busy = httpx.post(f"{url}/v1/chat/completions", json=_chat(), timeout=30)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"] == {
            "message": busy.json()["error"]["message"],
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
        first.close()
        wait_until(lambda: _stats(url)["busy"] == 0, "the worker is freed")
        assert (
            httpx.post(f"{url}/v1/chat/completions", json=_chat(max_tokens=3), timeout=30).status_code == 200
        )


def test_clients_that_leave_free_their_worker_at_once(tokenizer: Any) -> None:
    """A 2,000-token reply at 4 tokens a second (500 s) on the only worker: a client leaving mid-stream,
    one leaving while queued and one leaving a non-streamed request leave nothing running; a new request
    then completes, and the queued one was never generated."""
    app, backends = _app(tokenizer, reply="word " * 2000, delay=0.25)
    with serving(app) as url:
        # Mid-stream, with a second request waiting behind it that leaves too.
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=_chat(stream=True), timeout=30
        ) as running:
            lines = running.iter_lines()
            assert next(lines).startswith("data: ")  # the role
            assert next(lines) == ""
            assert json.loads(next(lines)[6:])["choices"][0]["delta"]["content"]  # a token streamed
            with httpx.stream(
                "POST", f"{url}/v1/chat/completions", json=_chat(stream=True), timeout=30
            ) as queued:
                assert next(queued.iter_lines()).startswith("data: ")  # accepted, waiting
                assert _stats(url)["queued"] == 1
            running.close()
        wait_until(lambda: _stats(url)["busy"] == 0 and _stats(url)["queued"] == 0, "both leavers are gone")
        assert len(backends[0].prompts) == 1  # the queued one never started

        # A non-streamed request whose client gives up.
        async def leave() -> None:
            async with httpx.AsyncClient(timeout=120) as client:
                task = asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=_chat()))
                await asyncio.to_thread(wait_until, lambda: _stats(url)["busy"] == 1, "the request runs")
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

        asyncio.run(leave())
        wait_until(lambda: _stats(url)["busy"] == 0, "the non-streamed leaver is gone")
        reply = httpx.post(f"{url}/v1/chat/completions", json=_chat(max_tokens=3), timeout=30).json()
        assert reply["choices"][0]["finish_reason"] == "length"
        assert _stats(url) == {
            "status": "ok",
            "workers": 1,
            "busy": 0,
            "queued": 0,
            "served": 4,
            "api_key": False,
        }


# --- the review page in the same app (issue 13) ------------------------------------------------------------


def test_the_server_serves_the_workspaces_review_page_too(tokenizer: Any, tmp_path: Any) -> None:
    """`twinlm serve` passes its workspace: /review and its API answer from the chat server's own app
    (no second server), and the chat API still works beside it."""
    from twinlm.config import TwinConfig
    from twinlm.corpus.db import Corpus
    from twinlm.ingest import ingest
    from twinlm.model import ParseOptions
    from twinlm.workspace import init_workspace

    from testdata import EXAMPLES

    root = tmp_path / "twin"
    init_workspace(root, TwinConfig(name="alex", me=["Alex Rivera"]))
    with Corpus(root / "corpus.db") as corpus:
        assert not ingest([EXAMPLES], corpus, ParseOptions(timezone="UTC")).failed
    backend = kit.FakeBackend(tokenizer, kit.FAKE_REPLY)
    app = create_app(kit.make_fake_twin(backend), ServeConfig(), backends=[backend], workspace=root)
    with serving(app) as url:
        page = httpx.get(f"{url}/review")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        listed = httpx.get(f"{url}/review/api/conversations").json()
        assert listed  # the examples' conversations, as the review page lists them
        reply = httpx.post(f"{url}/v1/chat/completions", json=_chat())
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    without = create_app(kit.make_fake_twin(backend), ServeConfig(), backends=[backend])
    with serving(without) as url:
        assert httpx.get(f"{url}/review").status_code == 404
