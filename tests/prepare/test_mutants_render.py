"""Rendering rules that `make mutate` found untested (docs/mutation.md), each checked against roles and
trained texts worked out by hand from the rules in twinlm/prepare/render.py's docstrings."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twinlm.prepare.render import render, render_prompt, to_messages
from twinlm.prepare.sample import Sample, Turn


def sample(kind: str, *turns: tuple[str, str, bool]) -> Sample:
    return Sample(
        id="s1",
        conversation=f"{kind}:c1",
        source="jsonl" if kind == "dataset" else "discord",
        kind=kind,  # type: ignore[arg-type]
        turns=tuple(Turn(speaker, text, trained) for speaker, text, trained in turns),
    )


def test_a_dataset_with_one_trained_speaker_at_turn_1_uses_the_user_and_assistant_roles() -> None:
    """Named template, no played speaker given: the one trained speaker (Bot, at turn 1) is the
    assistant, Alice the user, no names (one speaker on the user side)."""
    s = sample("dataset", ("Alice", "q", False), ("Bot", "a", True), ("Alice", "q2", False))
    assert to_messages(s, "named") == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "q2"},
    ]


def test_an_opening_assistant_turn_is_left_out_only_on_alternating_templates() -> None:
    s = sample("dataset", ("Bot", "hello", False), ("Alice", "q", False), ("Bot", "a", True))
    assert to_messages(s, "alternating") == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    assert to_messages(s, "named") == [
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


def test_the_played_speaker_defaults_to_the_trained_one_even_at_turn_1() -> None:
    s = sample("chat", ("Alice", "hi", False), ("Max", "yo", True), ("Alice", "ok", False))
    assert [m["role"] for m in to_messages(s, "alternating")] == ["user", "assistant", "user"]


def test_each_rendering_trains_only_its_speakers_trained_turns(load_tokenizer: Callable[[str], Any]) -> None:
    """Max's early turn is context (untrained) in the sample: playing Max must not train it."""
    tokenizer = load_tokenizer("mistral-v0.3")
    s = sample(
        "chat", ("Alice", "hi", False), ("Max", "early", False), ("Alice", "q", False), ("Max", "yo", True),
        ("Bob", "sup", True),
    )  # fmt: skip
    out = render(s, tokenizer, 512)
    trained = sorted(
        tokenizer.decode([i for i, label in zip(r.input_ids, r.labels, strict=True) if label != -100]).strip()
        for r in out
    )
    assert trained == ["sup</s>", "yo</s>"]


def test_a_sample_without_a_trained_turn_is_counted_once(load_tokenizer: Callable[[str], Any]) -> None:
    counts: Counter[str] = Counter()
    assert (
        render(
            sample("chat", ("Alice", "hi", False), ("Max", "yo", False)),
            load_tokenizer("chatml"),
            512,
            counts,
        )
        == []
    )
    assert counts["samples without a trained turn"] == 1


def test_a_prompt_of_exactly_max_length_keeps_all_its_turns(load_tokenizer: Callable[[str], Any]) -> None:
    """`max_length` drops the oldest turns only while the prompt is longer: one exactly as long stays."""
    tokenizer = load_tokenizer("chatml")
    history = sample(
        "chat", ("Alice", "hi there", False), ("Max", "yo", False), ("Alice", "how are you", False)
    )
    full = render_prompt(history, tokenizer, "Max")
    assert render_prompt(history, tokenizer, "Max", max_length=len(full)) == full
    assert len(render_prompt(history, tokenizer, "Max", max_length=len(full) - 1)) < len(full)
