"""Rendering rules that `make mutate` found untested (docs/mutation.md), each checked against roles and
trained texts worked out by hand from the rules in twinlm/prepare/render.py's docstrings."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from twinlm.prepare.render import TemplateError, render, render_prompt, to_messages
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


# --- issue 17, the survivors left on 2026-12-05 (docs/mutation.md) ------------------------------


def _trained(tokenizer: Any, r: Any) -> str:
    return str(tokenizer.decode([label for label in r.labels if label != -100]))


def test_a_template_that_drops_a_turns_text_and_the_newline_after_it_is_refused(
    load_tokenizer: Callable[[str], Any],
) -> None:
    """A template that leaves out a '[deleted]' message's text (and the newline after it): the trained
    text is nowhere in the rendering, which must be refused, not labelled somewhere."""
    tokenizer = load_tokenizer("chatml")
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'] != '[deleted]' %}{{ m['content'] }}\n{% endif %}<|im_end|>\n{% endfor %}"
    )
    with pytest.raises(TemplateError, match="changes turn 1 beyond recognition"):
        render(sample("chat", ("Alice", "hi", False), ("Max", "[deleted]", True)), tokenizer, 512)


def test_one_trained_speaker_is_one_rendering_with_no_extra_rendering_counted(
    load_tokenizer: Callable[[str], Any],
) -> None:
    """Alternating template, one trained speaker: rendered once, and the build report (its counts,
    written as they are) names nothing that did not happen."""
    tokenizer = load_tokenizer("mistral-v0.3")
    counts: Counter[str] = Counter()
    (r,) = render(sample("chat", ("Alice", "hi", False), ("Max", "yo", True)), tokenizer, 512, counts)
    assert r.text == "<s>[INST] Alice: hi[/INST] Max: yo</s>"
    assert dict(counts) == {"sequences": 1}


class _NoFastBackend:
    """A tokenizer without `backend_tokenizer` (render then calls the tokenizer itself)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        if name == "backend_tokenizer":
            raise AttributeError(name)
        return getattr(self._tokenizer, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._tokenizer)


@pytest.mark.parametrize("family", ["mistral-v0.3", "llama3"])
def test_a_tokenizer_without_a_fast_backend_gives_apply_chat_templates_ids(
    family: str, load_tokenizer: Callable[[str], Any]
) -> None:
    tokenizer = load_tokenizer(family)
    s = sample("dataset", ("User", "what is it", False), ("Bot", "a pizza", True))
    (r,) = render(s, _NoFastBackend(tokenizer), 512)
    messages = [{"role": "user", "content": "what is it"}, {"role": "assistant", "content": "a pizza"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    # transformers' own rendering, tokenized as apply_chat_template does (the template writes BOS)
    assert r.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    end_of_turn = {"mistral-v0.3": "</s>", "llama3": "<|eot_id|>"}[family]
    assert _trained(tokenizer, r).strip() == "a pizza" + end_of_turn


# A template that writes each text first, nothing before the first one.
_TEXT_FIRST = (
    "{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}{% endfor %}"
)


def test_a_template_with_the_first_text_at_the_start_gets_the_tokenizers_bos_in_front(
    load_tokenizer: Callable[[str], Any],
) -> None:
    """Mistral's tokenizer adds BOS itself and this template writes none: the BOS id goes in front,
    the user's text (at character 0) is context and the answer is trained."""
    tokenizer = load_tokenizer("mistral-v0.3")
    tokenizer.chat_template = _TEXT_FIRST
    (r,) = render(sample("dataset", ("User", "what is it", False), ("Bot", "pizza", True)), tokenizer, 512)
    expected = "what is it\npizza</s>\n"
    ids = tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert r.input_ids == [tokenizer.bos_token_id, *ids]
    assert r.text == "<s>" + expected
    assert _trained(tokenizer, r) == "pizza</s>"


def test_a_prompt_with_nothing_before_the_speakers_text_is_empty(
    load_tokenizer: Callable[[str], Any],
) -> None:
    """A named template that writes the text first and the role after it ("Hello (Max) "): with no
    history the prompt is what comes before the text: nothing (no BOS in this family)."""
    tokenizer = load_tokenizer("qwen2.5")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} ({{ m['role'] }}) {% endfor %}"
    assert render_prompt(sample("chat", ("Alice", "", False)), tokenizer, "Max") == []


def test_a_one_token_reply_trains_the_space_token_before_it(load_tokenizer: Callable[[str], Any]) -> None:
    """'Max: x' tokenizes as ':', 'Ġ', 'x' (no 'Ġx' merge in the tiny vocabulary): the model must learn
    to write the space, so the labels are ' x<|im_end|>' (render.py's first-token rule)."""
    tokenizer = load_tokenizer("qwen2.5")
    (r,) = render(sample("chat", ("Alice", "hey", False), ("Max", "x", True)), tokenizer, 512)
    assert tokenizer.convert_ids_to_tokens([label for label in r.labels if label != -100]) == [
        "Ġ",
        "x",
        "<|im_end|>",
    ]


def test_trimmed_offsets_give_the_same_labels_and_prompt(load_tokenizer: Callable[[str], Any]) -> None:
    """A byte-level tokenizer whose post-processor trims offsets (trim_offsets=true) reports the space
    token before 'x' with empty offsets; the ids are the same, so the labels and the chat-time prompt
    must be too: the space is trained, as with untrimmed offsets (a real bug: it was left out)."""
    from tokenizers import processors

    plain, trimmed = load_tokenizer("qwen2.5"), load_tokenizer("qwen2.5")
    trimmed.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    spaced = trimmed.backend_tokenizer.encode("Max: x", add_special_tokens=False)
    assert spaced.tokens[-2:] == ["Ġ", "x"] and spaced.offsets[-2][0] == spaced.offsets[-2][1]  # empty
    s = sample(
        "chat", ("Alice", "hey", False), ("Max", "x", True), ("Alice", "ok", False), ("Max", "y", True)
    )
    ((a,), (b,)) = render(s, plain, 512), render(s, trimmed, 512)
    assert a.input_ids == b.input_ids
    assert _trained(trimmed, b) == " x<|im_end|> y<|im_end|>" == _trained(plain, a)
    history = sample("chat", ("Alice", "hey", False), ("Max", "x", False))
    assert render_prompt(history, trimmed, "Alice") == render_prompt(history, plain, "Alice")


def test_a_template_without_an_end_of_turn_token_trains_the_text_and_counts_it(
    load_tokenizer: Callable[[str], Any],
) -> None:
    """Nothing special follows the last trained text (only a newline, then the end of the chat)."""
    tokenizer = load_tokenizer("chatml")
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    counts: Counter[str] = Counter()
    (r,) = render(sample("chat", ("Alice", "hi", False), ("Max", "sure thing", True)), tokenizer, 512, counts)
    assert r.text == "Alice: hi\nMax: sure thing\n"
    assert _trained(tokenizer, r) == " sure thing"
    assert counts["trained turn without an end-of-turn token"] == 1


_EVENING = (
    ("Alice", "hi", False),
    ("Max", "yo", True),
    ("Alice", "what are you doing tonight", False),
    ("Max", "watching a movie with friends later", True),
    ("Alice", "cool", False),
)


def test_a_trained_turn_that_fits_with_its_context_turn_is_kept(load_tokenizer: Callable[[str], Any]) -> None:
    """max_length is exactly the rendering of the window (Alice's question, Max's answer) alone: that
    window must be made. A turn's estimated size counts the next turn's header, which the window's last
    turn does not have, so the estimate said no room and the answer was dropped (a real bug, fixed)."""
    tokenizer = load_tokenizer("chatml")
    (pair,) = render(sample("chat", *_EVENING[2:4]), tokenizer, 512)
    counts: Counter[str] = Counter()
    out = render(sample("chat", *_EVENING), tokenizer, len(pair.input_ids), counts)
    answer = "watching a movie with friends later<|im_end|>"
    assert [_trained(tokenizer, r) for r in out] == ["yo<|im_end|>", answer]
    assert out[1].input_ids == pair.input_ids
    assert "trained turns lost: no room for the turn before them" not in counts


def test_a_split_renders_at_most_one_window_per_context_turn(
    load_tokenizer: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows are sized from the full rendering and each one is rendered again only to check it
    (render.py's `split`): for a chat whose estimates are not too small, at most one window render
    per turn that can start a window, not a search over every window size."""
    from twinlm.prepare import render as module

    tokenizer = load_tokenizer("chatml")
    words = ["sure", "pizza tonight", "what time", "great thanks", "maybe later", "yes", "no", "lol ok"]
    turns = [("Alice" if i % 2 == 0 else "Max", f"{w} {w}", i % 2 == 1) for i, w in enumerate(words)]
    s = sample("chat", *turns)
    (whole,) = render(s, tokenizer, 4096)
    real, calls = module._Renderer.window, [0]

    def counting(self: Any, *args: Any) -> Any:
        calls[0] += 1
        return real(self, *args)

    monkeypatch.setattr(module._Renderer, "window", counting)
    out = render(s, tokenizer, len(whole.input_ids) // 3)
    assert len(out) >= 3 and all(len(r.input_ids) <= len(whole.input_ids) // 3 for r in out)
    assert 0 < calls[0] <= len(turns) - 1
