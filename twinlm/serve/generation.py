"""What both backends share: the sampling settings, and a reply as it is generated (`Generation`).

A backend only produces token ids; `Generation` decodes them with the run's Hugging Face tokenizer (so
both backends write the same text for the same ids) and stops at an end-of-turn token, at a stop
string (never part of the reply; text that could be the start of a stop string is held back until
the next tokens tell, so a stop string split across tokens is still caught), at max_tokens, or when
`cancel` is set (checked between tokens). twinlm.serve.backends re-exports both names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from twinlm.config import SamplingConfig

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen (temperature 0: greedy) and when a reply ends."""

    temperature: float = 0.7
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.1
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()  # extra stop strings (never included in the reply text)

    @classmethod
    def from_config(cls, settings: SamplingConfig | None = None, **overrides: Any) -> Sampling:
        """The config's sampling settings (twin.yaml `chat.sampling`), with per-request overrides;
        an override of None keeps the config's value."""
        values: dict[str, Any] = {}
        if settings is not None:
            names = {f.name for f in fields(cls)}
            values = {k: v for k, v in settings.model_dump().items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "stop" in values:
            values["stop"] = tuple(s for s in values["stop"] if s)
        return cls(**values)


# --- the shared part: ids -> text, stops ----------------------------------------------------------------


class _Decoder:
    """Incremental detokenization with the HF tokenizer: the text each new token adds.

    Decodes a short window of recent ids and returns what the new token appended, so that
    SentencePiece's word-initial spaces and byte-fallback characters spread over several tokens come
    out right; a piece that ends in an incomplete character waits for the next token.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] were decoded already; they give the context of the next piece
        self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """What is still undecoded at the end (a character cut off by the last token, as U+FFFD)."""
        if self.read == len(self.ids):
            return ""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.read = len(self.ids)
        return after[len(before) :]


def _held_back(text: str, start: int, stops: tuple[str, ...]) -> int:
    """The first position p >= start where text[p:] could still grow into a stop string."""
    for p in range(max(start, len(text) - max((len(s) for s in stops), default=0) + 1), len(text)):
        tail = text[p:]
        if any(s.startswith(tail) for s in stops):
            return p
    return len(text)


class Generation:
    """Returned by Backend.generate; iterate it for text pieces as they are generated (stream).

    After iteration ends: .finish_reason in {"stop", "length", "cancelled"}, .prompt_tokens,
    .completion_tokens, and .text (the whole reply). Iterate once; breaking out of the loop early
    ends the generation ("cancelled").
    """

    def __init__(
        self,
        tokens: Iterator[int],
        tokenizer: Any,
        end_ids: frozenset[int],
        sampling: Sampling,
        prompt_tokens: int,
        cancel: threading.Event | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self._tokens = tokens
        self._decoder = _Decoder(tokenizer)
        self._end_ids = end_ids
        self._sampling = sampling
        self._cancel = cancel
        self._close = close
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.text = ""
        self._started = False

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("a Generation can be iterated only once")
        self._started = True
        self.finish_reason = "cancelled"  # until it ends some other way (a consumer may stop iterating)
        try:
            yield from self._run()
        finally:
            if self._close is not None:
                self._close()

    def _run(self) -> Iterator[str]:
        stops = tuple(s for s in self._sampling.stop if s)
        text, sent = "", 0  # the decoded reply so far; how much of it was handed out
        reason: FinishReason = "length"
        while self.completion_tokens < self._sampling.max_tokens:
            if self._cancel is not None and self._cancel.is_set():
                reason = "cancelled"
                break
            token = next(self._tokens, None)
            if token is None:  # the backend ran out of context
                break
            if token in self._end_ids:
                reason = "stop"
                break
            self.completion_tokens += 1
            text += self._decoder.add(token)
            if not sent:
                text = text.lstrip()  # training texts are stripped: a reply never starts with a space
            found = [p for p in (text.find(s, sent) for s in stops) if p >= 0]
            if found:
                end = min(found)
                self.text = text[:end]
                if end > sent:
                    yield text[sent:end]
                self.finish_reason = "stop"
                return
            safe = _held_back(text, sent, stops)
            if safe > sent:
                self.text = text[:safe]
                yield text[sent:safe]
                sent = safe
        text += self._decoder.flush()
        if not sent:
            text = text.lstrip()
        self.text = text
        if len(text) > sent:
            yield text[sent:]
        self.finish_reason = reason

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._started and self._close is not None:
            self._close()
