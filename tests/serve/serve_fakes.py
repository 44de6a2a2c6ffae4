"""Test doubles of the use stage, shared by chat, serve and discord-bot tests (fixtures in conftest.py):
`FakeBackend`, a deterministic Backend that streams a fixed reply token by token (optionally slowly, for
tests that interrupt it), and `make_fake_twin`, a Twin around a backend with the personas of
`served_workspace` (ME, who is me, and FRIEND)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twinlm.serve.backends import Generation, Sampling, end_of_turn_ids
from twinlm.serve.twin import Twin

ME, FRIEND = "Alex Rivera", "Sam"
FAKE_REPLY = "sure, sunday evening works for me"


class FakeBackend:
    """A deterministic Backend: every generation streams `reply` (its tokens one by one, `delay`
    seconds apart), then the end-of-turn token; through the real `Generation`, so stop strings,
    max_tokens and cancel behave as with a model."""

    name = "fake"

    def __init__(
        self, tokenizer: Any, reply: str = FAKE_REPLY, *, delay: float = 0.0, context_length: int = 2048
    ):
        self.tokenizer = tokenizer
        self.reply = reply
        self.delay = delay
        self.context_length = context_length
        self.end_ids = end_of_turn_ids(tokenizer)
        self.prompts: list[list[int]] = []
        self.lock = threading.Lock()

    def generate(
        self, prompt_ids: list[int], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Generation:
        with self.lock:
            self.prompts.append(list(prompt_ids))
        ids = list(self.tokenizer(self.reply, add_special_tokens=False)["input_ids"])

        def tokens() -> Iterator[int]:
            for token in ids:
                if self.delay:
                    time.sleep(self.delay)
                yield token
            yield min(self.end_ids)

        return Generation(tokens(), self.tokenizer, self.end_ids, sampling, len(prompt_ids), cancel)


def make_fake_twin(backend: Any) -> Twin:
    """A Twin around `backend` with the personas of `served_workspace` (me and a friend)."""
    prompt = "You are {name}, chatting with {others} on {platform}. Today is {date}."
    return Twin(
        backend=backend,
        source=Path("fake"),
        personas={
            ME: f"You are {ME}, chatting with someone on WhatsApp.",
            FRIEND: f"You are {FRIEND}, chatting with someone on WhatsApp.",
        },
        me=ME,
        provenance={
            "template_style": "named",
            "me": ME,
            "persona_settings": {"system_prompt": prompt, "targets": [ME, FRIEND], "platform": "whatsapp"},
        },
        description="a fake model (tests)",
    )
