"""The fine-tuned model as a chat backend (issue 14, item 2): the official client streams the reply from the
fake Mistral API on loopback; the chat is sent as the messages training used."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_mistral import FakeMistral
from typer.testing import CliRunner

from twinlm.cli import app
from twinlm.config import BuildConfig, load_config
from twinlm.errors import TwinError
from twinlm.hosted.backend import conversation_messages, ignored, open_hosted_backend


@dataclass(frozen=True)
class Sampling:  # the fields of twinlm.serve.backends.Sampling
    temperature: float = 0.7
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.1
    max_tokens: int = 64
    seed: int | None = 7
    stop: tuple[str, ...] = ("\nSam:",)


def _trained(ws: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "--backend", "mistral-api", "-w", str(ws), "--name", "h", "--yes"]
    )
    assert result.exit_code == 0, result.stderr


def test_chat_streams_the_fine_tuned_models_reply(fake: FakeMistral, workspace: Path, key: str) -> None:
    _trained(workspace)
    backend = open_hosted_backend(workspace, load_config(workspace / "twin.yaml").hosted)
    assert backend.model == "ft:open-mistral-7b:x:abc123" and backend.name == "mistral-api"
    messages = [
        {"role": "system", "content": "You are Alex Rivera."},
        {"role": "user", "content": "Sam: dinner?"},
    ]
    generation = backend.generate_messages(messages, Sampling())
    pieces = list(generation)
    assert pieces == ["sure,", " see", " you", " at", " eight"]
    assert generation.text == fake.reply and generation.finish_reason == "stop"
    assert (generation.prompt_tokens, generation.completion_tokens) == (11, 5)
    (body,) = fake.chat_bodies
    assert body["model"] == "ft:open-mistral-7b:x:abc123" and body["stream"] is True
    assert body["messages"] == messages
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.7, 0.95, 64)
    assert body["random_seed"] == 7 and body["stop"] == ["\nSam:"]
    assert ignored(Sampling()) == ["min_p 0.05", "repetition_penalty 1.1"]


def test_a_cancelled_chat_stops(fake: FakeMistral, workspace: Path, key: str) -> None:
    _trained(workspace)
    backend = open_hosted_backend(workspace, load_config(workspace / "twin.yaml").hosted)
    cancel = threading.Event()
    generation = backend.generate_messages([{"role": "user", "content": "hi"}], Sampling(), cancel)
    pieces = []
    for piece in generation:
        pieces.append(piece)
        cancel.set()
    assert pieces == ["sure,"] and generation.finish_reason == "cancelled"


def test_token_ids_are_refused_in_one_line(fake: FakeMistral, workspace: Path, key: str) -> None:
    _trained(workspace)
    backend = open_hosted_backend(workspace, load_config(workspace / "twin.yaml").hosted)
    with pytest.raises(TwinError, match="takes the chat as messages, not token ids"):
        backend.generate([1, 2, 3], Sampling())


def test_no_model_yet_is_one_line(fake: FakeMistral, workspace: Path, key: str) -> None:
    fake.script = [("FAILED", [])]
    CliRunner().invoke(
        app, ["train", "--backend", "mistral-api", "-w", str(workspace), "--name", "f", "--yes"]
    )
    with pytest.raises(TwinError, match="has made no model yet"):
        open_hosted_backend(workspace, load_config(workspace / "twin.yaml").hosted, "f")


def test_conversation_messages_are_shaped_as_in_training() -> None:
    build = BuildConfig()
    turns = [
        ("Sam", "dinner tonight?"),
        ("Alex Rivera", "yes! where?"),
        ("Sam", "the usual"),
        ("Jo", "me too"),
    ]
    messages = conversation_messages(build, "Alex Rivera", turns, system="You are Alex Rivera.")
    assert messages == [
        {"role": "system", "content": "You are Alex Rivera."},
        {"role": "user", "content": "Sam: dinner tonight?"},
        {"role": "assistant", "content": "yes! where?"},
        {"role": "user", "content": "Sam: the usual\nJo: me too"},
    ]
    prompt = conversation_messages(build, "Alex Rivera", turns[:1])[0]["content"]
    assert prompt.startswith("You are Alex Rivera, chatting with Sam")  # the persona prompt of the build
    with pytest.raises(TwinError, match="must end with someone else's message"):
        conversation_messages(build, "Alex Rivera", turns[:2])


def test_twinlm_chat_with_the_hosted_model(fake: FakeMistral, workspace: Path, key: str) -> None:
    _trained(workspace)
    result = CliRunner().invoke(
        app, ["chat", "-w", str(workspace), "--backend", "mistral-api", "--once", "dinner?", "--seed", "3"]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == fake.reply
    assert "ft:open-mistral-7b:x:abc123 at the Mistral API (run h)" in result.stderr
    (body,) = fake.chat_bodies
    system, user = body["messages"]
    assert system["role"] == "system" and system["content"].startswith(
        "You are Alex Rivera, chatting with Sam"
    )
    assert user == {"role": "user", "content": "Sam: dinner?"}  # the persona's usual partner, as trained
    assert body["random_seed"] == 3 and body["stream"] is True


def test_twinlm_serve_with_the_hosted_model(fake: FakeMistral, workspace: Path, key: str) -> None:
    from fastapi.testclient import TestClient

    from twinlm.config import ServeConfig
    from twinlm.hosted.twin import open_hosted_twin
    from twinlm.serve.backends import Sampling as ServeSampling
    from twinlm.serve.server import create_app

    _trained(workspace)
    twin = open_hosted_twin(workspace, load_config(workspace / "twin.yaml"))
    app_ = create_app(
        twin, ServeConfig(workers=2), sampling=ServeSampling(), backends=[twin.backend, twin.worker()]
    )
    request = {
        "model": "alex-rivera",
        "messages": [
            {"role": "user", "content": "dinner?"},
            {"role": "assistant", "content": "sure"},
            {"role": "user", "content": "Jo: can I come?"},
        ],
    }
    with TestClient(app_, base_url="http://127.0.0.1") as client:
        models = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert models == ["alex-rivera"]
        plain = client.post("/v1/chat/completions", json=request)
        assert plain.status_code == 200, plain.text
        assert plain.json()["choices"][0]["message"]["content"] == fake.reply
        with client.stream("POST", "/v1/chat/completions", json=request | {"stream": True}) as streamed:
            data = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for d in data[:-1]) == fake.reply
    # Sent as training shaped the chat: who spoke is said as in the training files.
    assert len(fake.chat_bodies) == 2
    for body in fake.chat_bodies:
        assert body["model"] == "ft:open-mistral-7b:x:abc123"
        assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
        # (the client adds "prefix": false to assistant messages)
        assert [{k: m[k] for k in ("role", "content")} for m in body["messages"][1:]] == [
            {"role": "user", "content": "Sam: dinner?"},
            {"role": "assistant", "content": "sure"},
            {"role": "user", "content": "Jo: can I come?"},
        ]


def test_eval_reply_generation_works_with_the_hosted_twin(
    fake: FakeMistral, workspace: Path, key: str
) -> None:
    # eval's generated metrics (replies in context, style, probes) go through one Generate function made
    # by twin_generate; it takes the hosted twin as it is (perplexity does not: no token probabilities).
    from twinlm.evaluate.replies import twin_generate
    from twinlm.hosted.twin import open_hosted_twin

    _trained(workspace)
    twin = open_hosted_twin(workspace, load_config(workspace / "twin.yaml"))
    generate = twin_generate(twin, 16)
    assert generate("Alex Rivera", [("Sam", "movie friday?")], None) == fake.reply
    (body,) = fake.chat_bodies
    assert (body["temperature"], body["max_tokens"], body["random_seed"]) == (0.0, 16, 0)
    assert body["messages"][-1] == {"role": "user", "content": "Sam: movie friday?"}
