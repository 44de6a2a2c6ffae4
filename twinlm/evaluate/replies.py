"""What the models say: replies in held-out contexts, and probe conversations.

Every generation goes through one function, `Generate(persona, turns, system) -> reply text` (greedy, so the
same weights give the same text on every run); `twin_generate` makes one from a `twinlm.serve.twin.Twin`
(the Use layer's prompt: the training rendering), tests pass a fake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from twinlm.prepare.sample import Sample, read_samples

Turns = Sequence[tuple[str, str]]
Generate = Callable[[str, Turns, str | None], str]  # system None: the persona's own prompt
ASSISTANT = "assistant"


def twin_generate(twin: Any, max_new_tokens: int, sampling_settings: Any = None) -> Generate:
    """Greedy replies of `twin` (temperature 0; the rest of the chat's sampling settings as configured)."""
    from twinlm.serve.backends import Sampling

    sampling = Sampling.from_config(sampling_settings, temperature=0.0, max_tokens=max_new_tokens, seed=0)

    def generate(persona: str, turns: Turns, system: str | None = None) -> str:
        return "".join(twin.reply(persona, list(turns), sampling=sampling, system=system)).strip()

    return generate


def eval_samples(data_dir: Path) -> list[Sample]:
    """The eval split's samples, from the readable dataset build wrote (samples.jsonl)."""
    return [s for s in read_samples(data_dir / "samples.jsonl") if s.split == "eval"]


def contexts(samples: Iterable[Sample], persona: str, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` places in held-out chats where `persona` really replied: the turns before (as
    (speaker, text)), the real reply, and the system prompt the sample was trained with where it was
    trained for `persona` alone. A trained turn that opens a chat has no context: skipped."""
    found = []
    for sample in samples:
        if sample.kind not in ("chat", "assistant"):
            continue
        for i, turn in enumerate(sample.turns):
            if i == 0 or not turn.trained or turn.speaker != persona:
                continue
            context = [(t.speaker, t.text) for t in sample.turns[max(0, i - 8) : i]]
            alone = {t.speaker for t in sample.turns if t.trained} == {persona}
            system = sample.system if alone else None
            found.append({"sample": sample.id, "context": context, "real": turn.text, "system": system})
            if len(found) >= limit:
                return found
    return found


def in_context(
    generate: Generate, places: Sequence[dict[str, Any]], persona: str, tick: Callable[[], None]
) -> list[str]:
    """The model's reply at each place (what `persona` would have said there)."""
    replies = []
    for place in places:
        replies.append(generate(persona, place["context"], place.get("system")))
        tick()
    return replies


def probe(
    generate: Generate, persona: str, partner: str, starters: Sequence[str], tick: Callable[[], None]
) -> list[tuple[str, str]]:
    """A probe conversation: `partner` says each starter in turn, the model answers as `persona`."""
    turns: list[tuple[str, str]] = []
    for starter in starters:
        turns.append((partner, starter))
        turns.append((persona, generate(persona, turns, None)))
        tick()
    return turns
