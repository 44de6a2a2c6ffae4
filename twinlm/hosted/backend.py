"""The fine-tuned Mistral model (`ft:...`) as a chat backend, through the official client's streamed chat
completion.

The local backends take prompt token ids made by the training rendering; a hosted model cannot: Mistral
renders and tokenizes on its side, from messages. So this backend takes messages, and
`conversation_messages` makes them the way the training files were made: the chat as a Sample, the
persona's turns as its trained replies, shaped by export-data's own `to_messages` (the "Name: text"
labels of group chats, merged consecutive turns, the persona's system prompt as built by
twinlm.prepare.persona). Where the Backend protocol hands over a prompt (twinlm serve's workers), the
hosted twin's prompt is those messages (twinlm.hosted.twin.HostedTwin.prompt), and `generate` takes
them in place of token ids; real token ids are refused with one line rather than guessed into text.

Sampling: temperature, top_p, max_tokens, seed (random_seed) and stop strings are sent; min_p and
repetition_penalty have no equivalent in the Mistral API and are not applied (said in `ignored`).
Token counts come from the API's usage report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from twinlm.config import BuildConfig
from twinlm.errors import TwinError
from twinlm.hosted import job as hosted_job
from twinlm.hosted.api import MistralAPI, api_key
from twinlm.hosted.settings import HostedConfig
from twinlm.prepare.interop import ExportReport, to_messages
from twinlm.prepare.persona import persona_prompt
from twinlm.prepare.sample import Sample, Turn

NAME = "mistral-api"
CONTEXT_LENGTH = 32_768  # the open Mistral models' window; the API refuses longer chats itself
_PLACEHOLDER = "\x00"  # the reply to come, removed before sending


class SamplingLike(Protocol):  # twinlm.serve.backends.Sampling (not imported: serve is a higher layer)
    temperature: float
    top_p: float
    min_p: float
    repetition_penalty: float
    max_tokens: int
    seed: int | None
    stop: tuple[str, ...]


def conversation_messages(
    build: BuildConfig,
    persona: str,
    turns: Sequence[tuple[str, str]],
    *,
    system: str | None = None,
    platform: str = "chat",
) -> list[dict[str, str]]:
    """The chat so far ((speaker, text), oldest first) as the messages the fine-tuned model was trained on,
    `persona` to reply next."""
    if system is None:
        speakers = {speaker for speaker, _ in turns}
        system = persona_prompt(
            build,
            "alternating",
            speaker=persona,
            participants=speakers | {persona},
            platform=platform,
            timestamp_ms=int(time.time() * 1000),
        )
    sample = Sample(
        id="chat",
        conversation="chat",
        source=platform,
        kind="chat",
        system=system,
        turns=(*(Turn(s, t, s == persona) for s, t in turns), Turn(persona, _PLACEHOLDER, True)),
    )
    msgs = to_messages(sample, weights=False, report=ExportReport(format="mistral", out=Path()))
    if not msgs or msgs[-1].role != "assistant" or msgs[-1].content != _PLACEHOLDER:
        # The persona spoke last already: the placeholder merged into its turn; the chat needs a message.
        raise TwinError(f"the chat must end with someone else's message for {persona} to answer")
    return [{"role": m.role, "content": m.content} for m in msgs[:-1]]


def request_options(sampling: SamplingLike) -> dict[str, Any]:
    options: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
    }
    if sampling.seed is not None:
        options["random_seed"] = sampling.seed
    if sampling.stop:
        options["stop"] = list(sampling.stop)
    return options


def ignored(sampling: SamplingLike) -> list[str]:
    """The settings the hosted model cannot apply (left at their neutral values, nothing to say)."""
    said = []
    if sampling.min_p > 0:
        said.append(f"min_p {sampling.min_p}")
    if sampling.repetition_penalty != 1:
        said.append(f"repetition_penalty {sampling.repetition_penalty}")
    return said


class HostedGeneration:
    """A streamed reply, as twinlm.serve.backends.Generation: iterate for text pieces; afterwards
    .finish_reason ("stop", "length", "cancelled"), .prompt_tokens, .completion_tokens, .text."""

    def __init__(self, events: Iterator[Any], cancel: threading.Event | None) -> None:
        self._events = events
        self._cancel = cancel
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.text = ""
        self._started = False

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("a Generation can be iterated only once")
        self._started = True
        self.finish_reason = "cancelled"  # until the stream says otherwise (a consumer may stop early)
        try:
            for event in self._events:
                if self._cancel is not None and self._cancel.is_set():
                    return
                chunk = event.data
                if getattr(chunk, "usage", None):
                    self.prompt_tokens = int(chunk.usage.prompt_tokens or 0)
                    self.completion_tokens = int(chunk.usage.completion_tokens or 0)
                for choice in chunk.choices or []:
                    piece = choice.delta.content if isinstance(choice.delta.content, str) else ""
                    if piece:
                        self.text += piece
                        yield piece
                    if choice.finish_reason:
                        self.finish_reason = "length" if choice.finish_reason == "length" else "stop"
        finally:
            close = getattr(self._events, "close", None)
            if close is not None:
                close()  # ends the HTTP stream when the consumer stops early


class MistralAPIBackend:
    """A fine-tuned model at the Mistral API. `generate_messages` streams its reply to a chat."""

    name = NAME
    tokenizer = None  # the model's tokenizer is Mistral's, on their side
    context_length = CONTEXT_LENGTH

    def __init__(self, api: MistralAPI, model: str) -> None:
        self.api = api
        self.model = model

    def generate(
        self, prompt_ids: list[Any], sampling: SamplingLike, cancel: threading.Event | None = None
    ) -> HostedGeneration:
        """The Backend protocol's call: `prompt_ids` must be the hosted twin's prompt, i.e. the chat as
        messages (twinlm.hosted.twin.HostedTwin.prompt); token ids are refused."""
        if prompt_ids and all(isinstance(m, Mapping) for m in prompt_ids):
            return self.generate_messages(prompt_ids, sampling, cancel)
        raise TwinError(
            f"{self.model}: a hosted model takes the chat as messages, not token ids; use generate_messages "
            "(twinlm.hosted.backend.conversation_messages makes them)"
        )

    def generate_messages(
        self,
        messages: Sequence[Mapping[str, str]],
        sampling: SamplingLike,
        cancel: threading.Event | None = None,
    ) -> HostedGeneration:
        return HostedGeneration(self.api.chat_stream(self.model, messages, request_options(sampling)), cancel)


def open_hosted_backend(
    workspace: Path, settings: HostedConfig, name: str | None = None
) -> MistralAPIBackend:
    """The fine-tuned model of the named hosted run (the latest if no name), at the URL it was made at."""
    run = hosted_job.find_hosted_run(workspace, name)
    record = hosted_job.read_record(run)
    model = record.get("fine_tuned_model")
    if not model:
        raise TwinError(
            f"run {run.name}: its job ({record.get('job_id')}, {record.get('status')}) has made no model "
            f"yet; follow it with twinlm train --backend mistral-api --name {run.name} --resume"
        )
    api = MistralAPI(settings.model_copy(update={"base_url": record["base_url"]}), api_key())
    return MistralAPIBackend(api, str(model))
