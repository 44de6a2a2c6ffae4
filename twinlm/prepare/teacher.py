"""Question/answer pairs about document chunks, written by a teacher model (optional, off by default).

NETWORK: this is the only code in the build stage that talks to the network. It runs only when
`teacher.enabled` is true and then SENDS EVERY DOCUMENT CHUNK to `teacher.base_url` (any
OpenAI-compatible `/chat/completions` endpoint: a local vLLM / llama.cpp / Ollama server, or a hosted
API). Point it at a local server to keep documents on this machine. Before the first request it refuses
plain http to another machine unless `allow_insecure_http` (twinlm.privacy.check_endpoint_url), and
`confirm` is asked with the URL and how many chunks and characters are about to be sent (the command
line says so and asks, or takes --yes: twinlm.privacy.confirm_remote_send).

Decisions:

- The API key comes from the environment variable named by `api_key_env`, never from twin.yaml; it
  is sent (Bearer) only when set, as local servers need none. A 401 names the variable to set.
- Answers are cached in a JSONL file keyed by (PROMPT_VERSION, model, prompt, questions per chunk,
  chunk text): a rebuild sends nothing, a changed prompt or model asks again. Each answer is one
  line, written and flushed as it arrives, so an interruption loses only the requests in flight; a
  torn last line (a kill mid-write) is dropped on the next run, which asks only for what is missing.
- Parsing is lenient (``` fences and <think> blocks stripped, the JSON list found inside prose,
  whole objects salvaged from a list cut off by max_tokens). An answer without a usable pair counts
  as malformed and is cached too, so a rebuild neither changes the dataset nor pays again (delete
  its cache line to retry). Pairs lacking a question or an answer are skipped and counted.
- Held-out questions are chosen by a hash of the question text: the same on every run, in any
  order, at any concurrency. A question asked twice (ignoring case) is kept once. Held-out pairs
  never reach the training samples. Samples follow the order of the input chunks.
- 429, 5xx, timeouts and refused connections are retried with exponential backoff (Retry-After
  honoured up to a minute); 401/403/404 and other 4xx stop the run at once with one line naming
  the URL and the model. Answers already received stay cached either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from twinlm.errors import TwinError
from twinlm.prepare.sample import Sample, Turn
from twinlm.privacy import check_endpoint_url

PROMPT_VERSION = 1  # bump when the request or the parsing changes in a way that invalidates answers
SOURCE = "teacher"
MAX_RETRY_AFTER_S = 60.0
_BACKOFF_S = 1.0  # first retry delay; doubles each time (tests lower it)

DEFAULT_PROMPT = """\
Below is an excerpt from a document. Write {questions} question-and-answer pairs about it.

Rules:
- Answer ONLY from the excerpt; never add facts that are not in it.
- Each question must make sense on its own, without seeing the excerpt (name the subject instead \
of saying "the text" or "the excerpt").
- Answers are complete sentences in the language of the excerpt.
- Reply with JSON only, no other text: a list of objects such as
  [{"question": "...", "answer": "..."}]

Excerpt:
\"\"\"
{chunk}
\"\"\"
"""

Progress = Callable[[int, int], None]  # (chunks done, chunks in all)
# (endpoint URL, chunks about to be sent, their characters): raises to send nothing.
ConfirmSend = Callable[[str, int, int], None]


class TeacherError(TwinError):
    """The teacher endpoint cannot be used: one line naming the URL, the model and the fix."""


class TeacherConfig(BaseModel):
    """Optional question/answer pairs about your documents, written by a teacher model."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Ask a teacher model for question/answer pairs about each document chunk. This SENDS "
        "THE CHUNKS to base_url; use a local server to keep them on this machine.",
    )
    base_url: str | None = Field(
        None,
        description="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp, "
        "Ollama) or https://api.openai.com/v1.",
    )
    model: str | None = Field(None, description="Model name the endpoint knows, e.g. 'gpt-4o-mini'.")
    allow_insecure_http: bool = Field(
        False,
        description="Allow a plain http:// base_url on another machine. Off: http is refused unless the "
        "host is this machine (localhost, 127.0.0.1, ::1), as chunks sent over http can be read on the way.",
    )
    api_key_env: str = Field(
        "TWINLM_TEACHER_API_KEY",
        min_length=1,
        description="Name of the environment variable that holds the API key (the key never goes in "
        "this file). Unset: no key is sent, which local servers accept.",
    )
    questions_per_chunk: int = Field(3, ge=1, le=20, description="Question/answer pairs asked per chunk.")
    heldout_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of the questions kept out of training and written to "
        "data/heldout_questions.jsonl, to test whether the tuned model answers from the documents.",
    )
    temperature: float = Field(0.3, ge=0.0, le=2.0, description="Sampling temperature of the teacher.")
    max_tokens: int = Field(1024, ge=16, description="Longest answer the teacher may write per chunk.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for one answer.")
    max_retries: int = Field(
        4, ge=0, le=20, description="Retries per chunk on rate limits, server errors and timeouts."
    )
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")
    prompt: str = Field(
        DEFAULT_PROMPT,
        description="Prompt sent per chunk: {chunk} is replaced by the chunk's text, {questions} by "
        'questions_per_chunk. It must ask for a JSON list of {"question", "answer"} objects.',
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not re.match(r"https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL; write it like http://127.0.0.1:8000/v1")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_has_chunk(cls, value: str) -> str:
        if "{chunk}" not in value:
            raise ValueError("the prompt must contain {chunk}, where the chunk's text goes")
        return value

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> TeacherConfig:
        if self.enabled and not self.base_url:
            raise ValueError("enabled, but base_url is empty; set base_url (and model) or set enabled: false")
        if self.enabled and not (self.model or "").strip():
            raise ValueError("enabled, but model is empty; name the teacher model or set enabled: false")
        return self


@dataclass
class QAResult:
    """Training samples, the held-out list and the counts the build report shows."""

    samples: list[Sample] = field(default_factory=list)
    heldout: list[dict[str, str]] = field(default_factory=list)  # {"question", "answer", "chunk_id"}
    requested: int = 0  # chunks asked this run (the rest came from the cache)
    cached: int = 0  # chunks answered from the cache
    malformed: int = 0  # chunks whose answer held no usable pair
    skipped_pairs: int = 0  # pairs without a question or an answer
    duplicate_pairs: int = 0  # questions already asked about another chunk


def generate_qa(
    chunks: list[tuple[str, str]],
    config: TeacherConfig,
    cache_path: Path,
    progress: Progress | None = None,
    confirm: ConfirmSend | None = None,
) -> QAResult:
    """Q/A samples for `chunks` ((chunk_id, text); ids as `document_samples` makes them: "<doc id>:<n>").

    Sends every chunk that is not in the cache to the teacher endpoint, after checking its URL and calling
    `confirm` with what is about to be sent; does nothing (no network, no cache) unless the teacher is
    enabled.
    """
    result = QAResult()
    if not config.enabled or not config.base_url or not chunks:
        return result
    keys = [_cache_key(config, text) for _, text in chunks]
    cache = _Cache(cache_path)
    answers: dict[str, list[dict[str, Any]] | None] = {}
    missing: dict[str, str] = {}
    for key, (_, text) in zip(keys, chunks, strict=True):
        if key in cache.entries:
            answers[key] = cache.entries[key]
        else:
            missing.setdefault(key, text)
    result.cached = len(set(keys)) - len(missing)
    total = len(set(keys))
    if progress:
        progress(result.cached, total)
    if missing:
        check_endpoint_url(config.base_url, config.allow_insecure_http, setting="build.teacher")
        if confirm is not None:
            confirm(config.base_url, len(missing), sum(map(len, missing.values())))
        with cache, _Client(config) as client:
            for key, content in client.ask_all(missing, progress, result.cached, total):
                pairs = parse_pairs(content)
                answers[key] = pairs
                cache.append(key, config, missing[key], content, pairs)
                result.requested += 1
    _assemble(chunks, keys, answers, config, result)
    return result


# ----------------------------------------------------------------------------------- parsing


def parse_pairs(content: str) -> list[dict[str, Any]] | None:
    """The {"question", "answer"} objects in a model's reply, or None when there is no JSON in it."""
    text = re.sub(r"<think>.*?</think>", "", content, flags=re.DOTALL).strip()  # reasoning models
    fence = re.search(r"```[\w-]*\s*\n(.*?)(?:\n\s*```|\Z)", text, re.DOTALL)
    if fence:
        text = fence.group(1).strip()
    data = _loads(text)
    if data is None and "[" in text:
        data = _loads(text[text.index("[") : text.rindex("]") + 1] if "]" in text else "")
    if data is None:
        data = _salvage_objects(text)
    if isinstance(data, dict):  # {"questions": [...]} or a single {"question", "answer"}
        inner = next((v for v in data.values() if isinstance(v, list)), None)
        single = any(str(k).strip().lower() == "question" for k in data)
        data = [data] if single or inner is None else inner
    if not isinstance(data, list) or not data:
        return None
    return [item for item in data if isinstance(item, dict)] or None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def _salvage_objects(text: str) -> list[Any] | None:
    """Complete JSON objects found one after another, e.g. in a list cut off by max_tokens."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except (json.JSONDecodeError, RecursionError):
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found.append(obj)
        i = text.find("{", end)
    return found or None


def _pair(item: dict[str, Any]) -> tuple[str, str] | None:
    fields = {str(k).strip().lower(): v for k, v in item.items()}
    question, answer = fields.get("question"), fields.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str):
        return None
    question, answer = question.strip(), answer.strip()
    return (question, answer) if question and answer else None


# ----------------------------------------------------------------------------------- splitting


def is_heldout(question: str, fraction: float) -> bool:
    """Deterministic: the same question is held out on every run, whatever else is asked."""
    digest = hashlib.sha256(_question_key(question).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _question_key(question: str) -> str:
    return " ".join(question.casefold().split())


def _assemble(
    chunks: list[tuple[str, str]],
    keys: list[str],
    answers: dict[str, list[dict[str, Any]] | None],
    config: TeacherConfig,
    result: QAResult,
) -> None:
    seen: set[str] = set()
    counted: set[str] = set()  # a chunk text repeated under two ids counts its answer once
    for (chunk_id, _), key in zip(chunks, keys, strict=True):
        items = answers.get(key)
        first_time = key not in counted
        counted.add(key)
        if items is None:
            result.malformed += int(first_time)
            continue
        pairs = []
        for item in items:
            pair = _pair(item) if isinstance(item, dict) else None
            if pair is None:
                result.skipped_pairs += int(first_time)
            else:
                pairs.append(pair)
        for index, (question, answer) in enumerate(pairs[: config.questions_per_chunk]):
            qkey = _question_key(question)
            if qkey in seen:
                result.duplicate_pairs += 1
                continue
            seen.add(qkey)
            if is_heldout(question, config.heldout_fraction):
                result.heldout.append({"question": question, "answer": answer, "chunk_id": chunk_id})
                continue
            result.samples.append(
                Sample(
                    id=f"{chunk_id}:qa{index}",
                    conversation=chunk_id.rpartition(":")[0] or chunk_id,
                    source=SOURCE,
                    kind="document",
                    turns=(Turn("user", question, False), Turn("assistant", answer, True)),
                )
            )


# ----------------------------------------------------------------------------------- cache


def _cache_key(config: TeacherConfig, text: str) -> str:
    material = json.dumps(
        [PROMPT_VERSION, config.model, config.prompt, config.questions_per_chunk, text], ensure_ascii=False
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class _Cache:
    """Answers by key, read from the JSONL cache; new answers are appended one flushed line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, list[dict[str, Any]] | None] = {}
        self._file: Any = None
        self._valid_bytes = 0  # length of the file up to its last complete line
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            raise TeacherError(f"{path}: cannot read the teacher cache ({e.strerror or e})") from None
        self._valid_bytes = raw.rfind(b"\n") + 1  # a torn last line (killed mid-write) is dropped
        for line in raw[: self._valid_bytes].splitlines():
            entry = _loads(line.decode("utf-8", errors="replace"))
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                pairs = entry.get("pairs")
                self.entries[entry["key"]] = pairs if isinstance(pairs, list) else None

    def __enter__(self) -> _Cache:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # closed in __exit__
        except OSError as e:
            raise TeacherError(f"{self.path}: cannot write the teacher cache ({e.strerror or e})") from None
        if self._file.tell() > self._valid_bytes:
            self._file.truncate(self._valid_bytes)  # new lines must not glue onto a torn one
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def append(
        self, key: str, config: TeacherConfig, text: str, content: str, pairs: list[dict[str, Any]] | None
    ) -> None:
        entry = {
            "key": key,
            "model": config.model,
            "prompt_version": PROMPT_VERSION,
            "chunk_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "pairs": pairs,
            "content": content,
        }
        # One write per line: a kill leaves at most this line torn, which the next run drops.
        self._file.write(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
        self._file.flush()
        self.entries[key] = pairs


# ----------------------------------------------------------------------------------- network


class _Client:
    """Chat-completion requests with retries, `concurrency` at a time."""

    def __init__(self, config: TeacherConfig) -> None:
        assert config.base_url and config.model  # guaranteed by TeacherConfig when enabled
        self.config = config
        self.url = f"{config.base_url}/chat/completions"
        self.key_env = config.api_key_env
        key = os.environ.get(self.key_env, "").strip()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.has_key = bool(key)
        limits = httpx.Limits(max_connections=config.concurrency)
        self.http = httpx.Client(headers=headers, timeout=config.timeout_s, limits=limits)
        self.stop = threading.Event()  # set on a fatal error: requests in flight stop retrying

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def ask_all(
        self, missing: dict[str, str], progress: Progress | None, done: int, total: int
    ) -> Iterator[tuple[str, str]]:
        """(key, reply text) per chunk as replies arrive. At most `concurrency` requests are in flight
        and the next is sent only after the caller took the last answer, so an interruption loses
        only what was in flight. The first fatal error is raised once the requests in flight have
        finished (their answers are yielded first, so they reach the cache)."""
        error: BaseException | None = None
        queue = iter(missing.items())
        pending: dict[Future[str], str] = {}
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="teacher")
        try:
            while True:
                while error is None and len(pending) < self.config.concurrency:
                    item = next(queue, None)
                    if item is None:
                        break
                    pending[pool.submit(self.ask, item[1])] = item[0]
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    key = pending.pop(future)
                    try:
                        content = future.result()
                    except BaseException as e:
                        error = error or e
                        self.stop.set()  # the others in flight stop retrying
                        continue
                    yield key, content
                    done += 1
                    if progress:
                        progress(done, total)
        finally:
            self.stop.set()  # requests waiting to retry give up at once
            pool.shutdown(wait=True, cancel_futures=True)
        if error is not None:
            raise error

    def ask(self, text: str) -> str:
        config = self.config
        # {chunk} last, so braces in a document are never taken for a placeholder.
        prompt = config.prompt.replace("{questions}", str(config.questions_per_chunk))
        prompt = prompt.replace("{chunk}", text)
        body = {
            "model": config.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
        }
        attempt = 0
        while True:
            if self.stop.is_set():
                raise _Stopped()
            delay: float | None = None
            try:
                response = self.http.post(self.url, json=body)
            except httpx.TransportError as e:  # refused, reset, timed out
                problem = f"cannot reach the teacher at {self.url} ({type(e).__name__}: {e})"
            else:
                if response.status_code == 200:
                    return _reply_text(response)
                problem = self._describe(response)
                if response.status_code != 429 and response.status_code < 500:
                    raise TeacherError(problem)
                delay = _retry_after(response)
            if attempt >= config.max_retries:
                raise TeacherError(f"{problem}; gave up after {attempt + 1} attempts")
            self.stop.wait(delay if delay is not None else _BACKOFF_S * 2**attempt)
            attempt += 1

    def _describe(self, response: httpx.Response) -> str:
        status, where = response.status_code, f"teacher {self.url} (model {self.config.model!r})"
        if status == 401:
            if not self.has_key:
                return (
                    f"{where} needs an API key (HTTP 401): set the environment variable {self.key_env} "
                    "(teacher.api_key_env)"
                )
            return f"{where} refused the API key in ${self.key_env} (HTTP 401); check the key"
        if status == 403:
            return f"{where} denied access (HTTP 403): the key in ${self.key_env} may lack this model"
        if status == 404:
            return (
                f"{where} answered 404: check teacher.base_url (the API root, usually ending in /v1) "
                "and teacher.model"
            )
        detail = " ".join(response.text.split())[:200]
        return f"{where} answered HTTP {status}" + (f": {detail}" if detail else "")


class _Stopped(Exception):
    """A request that stopped retrying because another one failed fatally."""


def _reply_text(response: httpx.Response) -> str:
    """The assistant message of a chat completion; an unexpected body is an empty (malformed) reply."""
    try:
        data = response.json()
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value is not None else None
    except ValueError:
        return None
