"""Teacher Q/A generation against a local fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from twinlm.prepare import teacher
from twinlm.prepare.teacher import (
    DEFAULT_PROMPT,
    TeacherConfig,
    TeacherError,
    generate_qa,
    is_heldout,
    parse_pairs,
)

PROMPT = "Write {questions} pairs.\n<<<{chunk}>>>"


class FakeTeacher:
    """A chat-completions endpoint: canned answers derived from the chunk, scripted failures."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[int, str, dict[str, str]]] = []  # next responses, before the canned ones
        self.delay = 0.0
        self.inflight = 0
        self.max_inflight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    scripted = fake.script.pop(0) if fake.script else None
                    fake.inflight += 1
                    fake.max_inflight = max(fake.max_inflight, fake.inflight)
                try:
                    time.sleep(fake.delay)
                    if scripted is None:
                        content = fake.answer(body["messages"][0]["content"])
                        payload = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                        scripted = (200, json.dumps(payload), {})
                    status, text, headers = scripted
                    data = text.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with fake.lock:
                        fake.inflight -= 1

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @staticmethod
    def answer(prompt: str) -> str:
        n = int(prompt.split("Write ", 1)[1].split(" ", 1)[0])
        chunk = prompt.split("<<<", 1)[1].rsplit(">>>", 1)[0]
        if "MALFORMED" in chunk:
            return "Sorry, I can't help with that."
        pairs = [
            {"question": f"What does {chunk!r} say, part {i}?", "answer": f"{chunk} ({i})"} for i in range(n)
        ]
        if "PARTIAL" in chunk:
            pairs[0] = {"question": "No answer here?"}
        if "DUPLICATE" in chunk:
            pairs = [{"question": "The same question?", "answer": chunk}]
        text = json.dumps(pairs)
        return f"Here you go:\n```json\n{text}\n```" if "FENCED" in chunk else text

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[FakeTeacher]:
    fake = FakeTeacher()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWINLM_TEACHER_API_KEY", raising=False)
    monkeypatch.setattr(teacher, "_BACKOFF_S", 0.001)


def _config(server: FakeTeacher, **overrides: Any) -> TeacherConfig:
    values: dict[str, Any] = {
        "enabled": True,
        "base_url": server.url,
        "model": "teacher-1",
        "prompt": PROMPT,
        "concurrency": 1,
        "heldout_fraction": 0.3,
    }
    return TeacherConfig(**(values | overrides))


def _chunks(n: int, doc: str = "documents:d1") -> list[tuple[str, str]]:
    return [(f"{doc}:{i}", f"Chunk number {i} talks about topic {i * 7}.") for i in range(n)]


def _cache_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------ generation


def test_disabled_teacher_sends_nothing(server: FakeTeacher, tmp_path: Path) -> None:
    result = generate_qa(_chunks(3), TeacherConfig(), tmp_path / "cache.jsonl")
    assert result.samples == [] and result.heldout == [] and result.requested == 0
    assert server.requests == []
    assert not (tmp_path / "cache.jsonl").exists()


def test_samples_heldout_and_request(server: FakeTeacher, tmp_path: Path) -> None:
    chunks = _chunks(10)
    seen: list[tuple[int, int]] = []
    result = generate_qa(
        chunks, _config(server), tmp_path / "cache.jsonl", progress=lambda d, t: seen.append((d, t))
    )
    assert result.requested == 10 and result.cached == 0
    assert len(server.requests) == 10
    assert seen[0] == (0, 10) and seen[-1] == (10, 10)
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert "authorization" not in {k.lower() for k in request["headers"]}
    body = request["body"]
    assert body["model"] == "teacher-1"
    assert body["temperature"] == 0.3 and body["max_tokens"] == 1024
    assert body["messages"] == [{"role": "user", "content": f"Write 3 pairs.\n<<<{chunks[0][1]}>>>"}]

    assert len(result.samples) + len(result.heldout) == 30
    assert 0 < len(result.heldout) < 30  # 0.3 of 30 questions: some held out, most trained
    heldout_questions = {h["question"] for h in result.heldout}
    for sample in result.samples:
        assert sample.kind == "document" and sample.source == "teacher"
        assert sample.conversation == "documents:d1"
        user, assistant = sample.turns
        assert (user.speaker, user.trained) == ("user", False)
        assert (assistant.speaker, assistant.trained) == ("assistant", True)
        assert user.text not in heldout_questions
        assert is_heldout(user.text, 0.3) is False
    first = result.samples[0]
    chunk_id, index = first.id.rsplit(":qa", 1)
    assert first.turns[1].text == f"{dict(chunks)[chunk_id]} ({index})"
    for entry in result.heldout:
        assert set(entry) == {"question", "answer", "chunk_id"}
        assert entry["chunk_id"] in dict(chunks)
        assert is_heldout(entry["question"], 0.3)
    ids = [s.id for s in result.samples]
    assert ids == sorted(ids, key=lambda i: (int(i.split(":")[2]), i))  # input order
    assert len(set(ids)) == len(ids)


def test_second_run_is_served_from_the_cache(server: FakeTeacher, tmp_path: Path) -> None:
    cache = tmp_path / "data" / "teacher_cache.jsonl"
    first = generate_qa(_chunks(6), _config(server), cache)
    assert len(server.requests) == 6 and len(_cache_lines(cache)) == 6
    second = generate_qa(_chunks(6), _config(server), cache)
    assert len(server.requests) == 6, "a cached chunk was asked again"
    assert (second.requested, second.cached) == (0, 6)
    assert second.samples == first.samples and second.heldout == first.heldout
    # Another model, or another prompt, asks again; the temperature does not.
    generate_qa(_chunks(6), _config(server, temperature=0.9), cache)
    assert len(server.requests) == 6
    generate_qa(_chunks(6), _config(server, model="teacher-2"), cache)
    assert len(server.requests) == 12
    generate_qa(_chunks(6), _config(server, questions_per_chunk=2), cache)
    assert len(server.requests) == 18


def test_resume_after_interruption_and_torn_line(server: FakeTeacher, tmp_path: Path) -> None:
    full = generate_qa(_chunks(8), _config(server), tmp_path / "reference.jsonl")
    server.requests.clear()
    cache = tmp_path / "cache.jsonl"

    def interrupt(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_qa(_chunks(8), _config(server), cache, progress=interrupt)
    assert len(server.requests) == 3
    assert len(_cache_lines(cache)) == 3
    # A kill in the middle of writing the third line.
    raw = cache.read_bytes()
    cache.write_bytes(raw[: len(raw) - 40])
    server.requests.clear()
    resumed = generate_qa(_chunks(8), _config(server), cache)
    assert len(server.requests) == 6  # the 5 never asked and the torn one
    assert (resumed.requested, resumed.cached) == (6, 2)
    lines = _cache_lines(cache)  # every line whole again: the torn tail was dropped, not glued onto
    assert len(lines) == 8
    assert resumed.samples == full.samples and resumed.heldout == full.heldout
    server.requests.clear()
    generate_qa(_chunks(8), _config(server), cache)
    assert server.requests == []


def test_concurrency_keeps_input_order(server: FakeTeacher, tmp_path: Path) -> None:
    server.delay = 0.05
    parallel = generate_qa(_chunks(12), _config(server, concurrency=4), tmp_path / "a.jsonl")
    assert server.max_inflight >= 2
    server.delay = 0.0
    serial = generate_qa(_chunks(12), _config(server, concurrency=1), tmp_path / "b.jsonl")
    assert parallel.samples == serial.samples and parallel.heldout == serial.heldout


def test_malformed_fenced_partial_and_duplicates(server: FakeTeacher, tmp_path: Path) -> None:
    chunks = [
        ("documents:d:0", "MALFORMED chunk"),
        ("documents:d:1", "FENCED chunk"),
        ("documents:d:2", "PARTIAL chunk"),
        ("documents:d:3", "DUPLICATE one"),
        ("documents:d:4", "DUPLICATE two"),
        ("documents:e:0", "FENCED chunk"),  # the same text again: asked once
    ]
    cache = tmp_path / "cache.jsonl"
    result = generate_qa(chunks, _config(server, heldout_fraction=0.0), cache)
    assert len(server.requests) == 5
    assert result.malformed == 1 and result.skipped_pairs == 1
    by_chunk: dict[str, list[str]] = {}
    for sample in result.samples:
        by_chunk.setdefault(sample.id.rsplit(":qa", 1)[0], []).append(sample.turns[0].text)
    assert "documents:d:0" not in by_chunk
    assert len(by_chunk["documents:d:1"]) == 3  # parsed from inside the ``` fence and the prose
    assert len(by_chunk["documents:d:2"]) == 2  # the pair without an answer was skipped
    assert by_chunk["documents:d:3"] == ["The same question?"]
    assert "documents:d:4" not in by_chunk and result.duplicate_pairs == 4  # d:4 and e:0's three
    assert result.heldout == []
    # The malformed answer is cached too: rebuilding neither asks again nor changes the dataset.
    again = generate_qa(chunks, _config(server, heldout_fraction=0.0), cache)
    assert len(server.requests) == 5
    assert again.malformed == 1 and again.samples == result.samples


def test_braces_in_a_chunk_are_not_placeholders(server: FakeTeacher, tmp_path: Path) -> None:
    chunks = [("documents:x:0", 'Use {questions} and {chunk} literally; JSON {"a": 1}.')]
    generate_qa(chunks, _config(server), tmp_path / "c.jsonl")
    assert server.requests[0]["body"]["messages"][0]["content"].endswith(f"<<<{chunks[0][1]}>>>")


# ------------------------------------------------------------------------------------------ errors


def test_429_is_retried(server: FakeTeacher, tmp_path: Path) -> None:
    server.script = [(429, '{"error": "slow down"}', {"Retry-After": "0"})]
    result = generate_qa(_chunks(2), _config(server), tmp_path / "c.jsonl")
    assert len(server.requests) == 3 and result.requested == 2
    assert len(result.samples) + len(result.heldout) == 6


def test_server_errors_give_up_with_one_line(server: FakeTeacher, tmp_path: Path) -> None:
    server.script = [(503, "overloaded", {})] * 5
    cache = tmp_path / "c.jsonl"
    with pytest.raises(TeacherError) as err:
        generate_qa(_chunks(2), _config(server, max_retries=2), cache)
    message = str(err.value)
    assert "\n" not in message
    assert "HTTP 503: overloaded" in message and "gave up after 3 attempts" in message
    assert server.url + "/chat/completions" in message
    assert len(server.requests) == 3
    # Nothing was answered, so nothing is cached; a later run asks for both chunks.
    assert not cache.exists() or _cache_lines(cache) == []


def test_401_without_a_key_names_the_variable(server: FakeTeacher, tmp_path: Path) -> None:
    server.script = [(401, '{"error": "no key"}', {})]
    with pytest.raises(TeacherError) as err:
        generate_qa(_chunks(2), _config(server), tmp_path / "c.jsonl")
    assert "set the environment variable TWINLM_TEACHER_API_KEY" in str(err.value)
    assert len(server.requests) == 1  # not retried, and the second chunk was never sent


def test_401_with_a_key_says_it_was_refused(
    server: FakeTeacher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-secret-123")
    server.script = [(401, "bad key", {})]
    with pytest.raises(TeacherError) as err:
        generate_qa(_chunks(1), _config(server, api_key_env="MY_TEACHER_KEY"), tmp_path / "c.jsonl")
    assert "refused the API key in $MY_TEACHER_KEY" in str(err.value)
    assert "sk-secret-123" not in str(err.value)
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-secret-123"


def test_404_names_url_and_model(server: FakeTeacher, tmp_path: Path) -> None:
    server.script = [(404, "not found", {})]
    with pytest.raises(TeacherError) as err:
        generate_qa(_chunks(1), _config(server, model="no-such-model"), tmp_path / "c.jsonl")
    message = str(err.value)
    assert f"{server.url}/chat/completions" in message and "'no-such-model'" in message
    assert "answered 404" in message and "teacher.base_url" in message


def test_unreachable_endpoint(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = TeacherConfig(enabled=True, base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1)
    with pytest.raises(TeacherError) as err:
        generate_qa(_chunks(1), config, tmp_path / "c.jsonl")
    assert f"cannot reach the teacher at http://127.0.0.1:{port}/v1/chat/completions" in str(err.value)
    assert "gave up after 2 attempts" in str(err.value)


def test_answers_finished_before_a_fatal_error_are_cached(server: FakeTeacher, tmp_path: Path) -> None:
    server.script = [
        (
            200,
            json.dumps({"choices": [{"message": {"content": '[{"question": "Q?", "answer": "A."}]'}}]}),
            {},
        ),
        (404, "", {}),
    ]
    cache = tmp_path / "c.jsonl"
    with pytest.raises(TeacherError):
        generate_qa(_chunks(3), _config(server), cache)
    assert len(_cache_lines(cache)) == 1
    assert len(server.requests) == 2  # the third chunk was never sent


# ---------------------------------------------------------------------------- parsing, split, config


@pytest.mark.parametrize(
    ("content", "questions"),
    [
        ('[{"question": "Q1?", "answer": "A1."}]', ["Q1?"]),
        ('```json\n[{"question": "Q1?", "answer": "A1."}]\n```', ["Q1?"]),
        (
            'Sure! Here:\n[{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."}]'
            "\nDone.",
            ["Q1?", "Q2?"],
        ),
        ('{"pairs": [{"question": "Q1?", "answer": "A1."}]}', ["Q1?"]),
        ('{"Question": "Q1?", "Answer": "A1.", "tags": ["x"]}', ["Q1?"]),
        ('[{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "ans', ["Q1?"]),  # cut by max_tokens
    ],
)
def test_parse_pairs_is_lenient(content: str, questions: list[str]) -> None:
    pairs = parse_pairs(content)
    assert pairs is not None
    assert [teacher._pair(p)[0] for p in pairs if teacher._pair(p)] == questions


@pytest.mark.parametrize("content", ["", "I can't do that.", "[]", "[1, 2]", "```\nnope\n```"])
def test_parse_pairs_rejects_answers_without_pairs(content: str) -> None:
    assert parse_pairs(content) is None


def test_heldout_split_is_deterministic_and_proportional(server: FakeTeacher, tmp_path: Path) -> None:
    questions = [f"What is item number {i}?" for i in range(2000)]
    chosen = [q for q in questions if is_heldout(q, 0.1)]
    assert 140 <= len(chosen) <= 260
    assert chosen == [q for q in questions if is_heldout(q, 0.1)]
    assert is_heldout("What is item number 7?", 0.1) == is_heldout("  what is ITEM number   7? ", 0.1)
    assert not any(is_heldout(q, 0.0) for q in questions)
    # The same questions are held out whatever the order of the chunks.
    forward = generate_qa(_chunks(10), _config(server), tmp_path / "a.jsonl")
    backward = generate_qa(list(reversed(_chunks(10))), _config(server), tmp_path / "b.jsonl")
    assert sorted(map(str, forward.heldout)) == sorted(map(str, backward.heldout))
    assert {s.id for s in forward.samples} == {s.id for s in backward.samples}


def test_config_validation() -> None:
    config = TeacherConfig()
    assert not config.enabled and config.api_key_env == "TWINLM_TEACHER_API_KEY"
    assert (config.questions_per_chunk, config.heldout_fraction, config.concurrency) == (3, 0.1, 4)
    assert "{chunk}" in DEFAULT_PROMPT and "{questions}" in DEFAULT_PROMPT and '"question"' in DEFAULT_PROMPT
    assert all(f.description for f in TeacherConfig.model_fields.values())
    assert TeacherConfig(base_url="http://127.0.0.1:8000/v1/").base_url == "http://127.0.0.1:8000/v1"
    cases = {
        "base_url is empty": {"enabled": True, "model": "m"},
        "model is empty": {"enabled": True, "base_url": "http://127.0.0.1:1/v1"},
        "not an http(s) URL": {"base_url": "127.0.0.1:8000/v1"},
        "must contain {chunk}": {"prompt": "Write questions."},
        "Extra inputs are not permitted": {"api_key": "sk-123"},
    }
    for expected, values in cases.items():
        with pytest.raises(ValidationError) as err:
            TeacherConfig(**values)
        assert expected in str(err.value)
