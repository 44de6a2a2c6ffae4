"""`twinlm serve` on the tiny trained model's f32 GGUF through llama.cpp: the official openai client, the
README's curl examples and Python snippet run as written (the address swapped for the test server's),
50 concurrent streaming clients, the server's greedy reply equal to the backend's own (also through
transformers, on the merged folder), and the `twinlm serve` command itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from serving import serving, sse_events
from tools_required import require

from twinlm.config import ServeConfig
from twinlm.serve.backends import Sampling
from twinlm.serve.server import create_app
from twinlm.serve.twin import Twin, open_twin

README = Path(__file__).parents[2] / "README.md"
README_URL = "http://127.0.0.1:8000"
GREEDY = {"temperature": 0, "max_tokens": 12, "seed": 1}
HI = [{"role": "user", "content": "Did you eat dinner today?"}]


@pytest.fixture(scope="module")
def twins(served_workspace: Path) -> list[Twin]:
    require("llama_cpp")
    return [open_twin(served_workspace, backend="llama.cpp") for _ in range(2)]


@pytest.fixture(scope="module", params=["two copies", "one batched context"])
def server(request: pytest.FixtureRequest, twins: list[Twin], served_workspace: Path) -> Iterator[str]:
    """Two workers: each its own llama.cpp model object, or one context making both workers' replies
    in one batch (what `twinlm serve --workers 2` opens for a GGUF)."""
    if request.param == "two copies":
        backends = [t.backend for t in twins]
        app = create_app(twins[0], ServeConfig(workers=2), sampling=Sampling(), backends=backends)
        with serving(app) as url:
            yield url
        return
    twin = open_twin(served_workspace, backend="llama.cpp", slots=2)
    assert type(twin.backend).__name__ == "BatchedLlamaCpp"
    app = create_app(twin, ServeConfig(workers=2), sampling=Sampling(), backends=[twin.backend] * 2)
    with serving(app) as url:
        yield url
    twin.backend.close()


def test_openai_client_on_the_tiny_gguf(server: str, twins: list[Twin]) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    assert [(m.id, m.model_extra["name"]) for m in client.models.list().data] == [
        ("alex-rivera", "Alex Rivera"),
        ("sam", "Sam"),
    ]
    reply = client.chat.completions.create(model="sam", messages=HI, **GREEDY)
    streamed = list(
        client.chat.completions.create(
            model="sam", messages=HI, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == reply.choices[0].message.content
    assert streamed[-1].usage is not None and reply.usage is not None
    assert streamed[-1].usage.model_dump() == reply.usage.model_dump()
    assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens > 10

    # The same as the backend gives for the same prompt, called directly.
    twin = twins[0]
    prompt = twin.prompt_from_messages("Sam", HI, max_new_tokens=GREEDY["max_tokens"])
    with twin.backend.generate(prompt, Sampling(**GREEDY)) as generation:
        direct = "".join(generation)
    assert reply.choices[0].message.content == direct
    assert reply.choices[0].finish_reason == ("length" if generation.finish_reason == "length" else "stop")
    assert reply.usage.prompt_tokens == len(prompt)


def test_fifty_concurrent_streams_on_the_tiny_gguf(server: str) -> None:
    expected = httpx.post(
        f"{server}/v1/chat/completions", json={"model": "alex-rivera", "messages": HI, **GREEDY}, timeout=60
    ).json()["choices"][0]["message"]["content"]

    async def one(client: httpx.AsyncClient) -> tuple[str, list[str]]:
        body = {"model": "alex-rivera", "messages": HI, "stream": True, **GREEDY}
        async with client.stream("POST", f"{server}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            events = sse_events(iter([line async for line in response.aiter_lines()]))
        chunks = [json.loads(e) for e in events[:-1]]
        assert not any("error" in c for c in chunks)
        return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks), events

    async def main() -> list[tuple[str, list[str]]]:
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=60)) as client:
            return await asyncio.gather(*(one(client) for _ in range(50)))

    results = asyncio.run(main())
    assert [(text, events[-1]) for text, events in results] == [(expected, "[DONE]")] * 50
    health = httpx.get(f"{server}/health", timeout=30).json()
    assert (health["busy"], health["queued"]) == (0, 0)


def test_the_transformers_backend_serves_the_same_way(served_workspace: Path) -> None:
    """The merged folder through transformers: streamed and plain replies agree with the backend's own."""
    twin = open_twin(served_workspace, backend="transformers")
    assert twin.backend.name == "transformers"
    with serving(create_app(twin, ServeConfig(), sampling=Sampling())) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="alex-rivera", messages=HI, **GREEDY)
        stream = client.chat.completions.create(model="alex-rivera", messages=HI, stream=True, **GREEDY)
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    prompt = twin.prompt_from_messages("Alex Rivera", HI, max_new_tokens=GREEDY["max_tokens"])
    with twin.backend.generate(prompt, Sampling(**GREEDY)) as generation:
        direct = "".join(generation)
    assert reply.choices[0].message.content == streamed == direct


# --- the README, run as written ----------------------------------------------------------------------------


def _readme_blocks(language: str) -> list[str]:
    """The ```LANGUAGE blocks of the README's Serve section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Serve\n") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def test_readme_curl_examples_run_as_written(server: str) -> None:
    require("curl")
    blocks = [b for b in _readme_blocks("sh") if b.startswith("curl ")]
    assert len(blocks) == 3, blocks  # models, a reply, a streamed reply
    outputs = []
    for block in blocks:
        assert README_URL in block
        command = block.strip().replace(README_URL, server)
        done = subprocess.run(
            ["bash", "-c", command],  # as written; the output is checked below
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs.append(done.stdout)
    models, reply, stream = outputs
    assert [m["id"] for m in json.loads(models)["data"]] == ["alex-rivera", "sam"]
    assert json.loads(reply)["choices"][0]["message"]["role"] == "assistant"
    events = sse_events(iter(stream.split("\n")))
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] in ("stop", "length")


def test_readme_python_snippet_runs_as_written(server: str) -> None:
    (snippet,) = _readme_blocks("python")
    assert README_URL in snippet
    done = subprocess.run(
        [sys.executable, "-c", snippet.replace(README_URL, server)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


# --- the command -----------------------------------------------------------------------------------------


def test_twinlm_serve_command_serves_and_stops_on_ctrl_c(served_workspace: Path) -> None:
    require("llama_cpp")
    env = {**os.environ, "TWINLM_API_KEY": "k-123"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twinlm",
            "serve",
            "-w",
            str(served_workspace),
            "--port",
            "0",
            "--backend",
            "llama.cpp",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.fullmatch(r"Web chat: +(http://127\.0\.0\.1:\d+)/\n", first)
        assert match, (first, process.stderr.read() if process.poll() is not None else "")
        url = match[1]
        review = f"Review:     {url}/review (the data the twin learns from; this machine only)\n"
        assert process.stdout.readline() == review
        assert process.stdout.readline() == f"OpenAI API: {url}/v1 (API key required); Ctrl-C stops\n"
        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer k-123"}, timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["alex-rivera", "sam"]
        assert "<title>twinlm</title>" in httpx.get(f"{url}/", timeout=30).text
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130 and "Traceback" not in stderr, stderr  # 130: ended by Ctrl-C
        assert "Serving export/r/r-f32.gguf via llama.cpp" in stderr
        assert "Models: alex-rivera (Alex Rivera), sam (Sam)" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_twinlm_serve_refuses_a_taken_port_in_one_line(served_workspace: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "twinlm", "serve", "-w", str(served_workspace), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"error: cannot listen on 127.0.0.1:{port} (Address already in use): pick another --port or --host"
    )


def test_twinlm_serve_workers_on_a_gguf_share_one_batched_context(served_workspace: Path) -> None:
    """`twinlm serve --workers 2` on a GGUF (the CLI's batched path: one context for both workers):
    two replies at once, and Ctrl-C stops it cleanly."""
    require("llama_cpp")
    command = [sys.executable, "-m", "twinlm", "serve", "-w", str(served_workspace), "--port", "0"]
    process = subprocess.Popen(
        [*command, "--backend", "llama.cpp", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TWINLM_API_KEY"},
    )
    try:
        assert process.stdout is not None
        match = re.fullmatch(r"Web chat: +(http://127\.0\.0\.1:\d+)/\n", process.stdout.readline())
        assert match, process.stderr.read() if process.poll() is not None else ""
        url = match[1]
        assert httpx.get(f"{url}/health", timeout=30).json()["workers"] == 2

        async def both() -> list[dict[str, Any]]:
            body = {"model": "alex-rivera", "messages": HI, **GREEDY}
            async with httpx.AsyncClient(timeout=120) as client:
                answers = await asyncio.gather(
                    *(client.post(f"{url}/v1/chat/completions", json=body) for _ in range(2))
                )
            return [a.json() for a in answers]

        answers = asyncio.run(both())
        assert all(a["usage"]["completion_tokens"] >= 1 and a["choices"][0]["message"] for a in answers)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130 and "Traceback" not in stderr, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
