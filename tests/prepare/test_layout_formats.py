"""The build's fast rendering (per-shape template formats, token positions asked of the Encoding) gives
exactly what the reference gives (the template rendered per chat, every token's offsets bisected):
same ids, labels, text and windows, for every template family and for templates that change texts."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from twinlm.prepare import layout, render
from twinlm.prepare.render import Rendered, inspect_template, render_many, render_prompt
from twinlm.prepare.sample import Sample, Turn
from twinlm.prepare.tokens import Tokens

from tiny_tokenizers import FAMILIES

NAMES = ["me", "alice", "Bob", "Élodie K", "zoë", "Sam O'Neil"]
TEXTS = [
    "hi",
    "  leading spaces",
    "trailing spaces  ",
    "\n line breaks \n",
    "two\nlines",
    "<b>bold</b> &amp; 'quotes' \"too\"",
    "{{ not jinja }} {% neither %}",
    "Sure, why not? It is 7:30 already",
    "ünïcödé и кириллица 🙂",
    "UPPER lower MiXeD",
]


def samples(seed: int) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for k in range(40):
        assistant = k % 4 == 3
        pool = ["user", "assistant"] if assistant else rng.sample(NAMES, rng.randint(2, 4))
        turns = []
        for _ in range(rng.randint(2, 7)):
            speaker = rng.choice(pool)
            trained = speaker == ("assistant" if assistant else pool[0])
            turns.append(Turn(speaker, rng.choice(TEXTS), trained))
        system = rng.choice([None, "Be brief.", " padded prompt \n", "You are me, on Discord."])
        kind = "assistant" if assistant else "chat"
        out.append(Sample(f"s{k}", f"discord:c{k % 5}", "discord", kind, tuple(turns), system))
    return out


def rows(tokenizer: Any, batch: list[Sample], max_length: int) -> tuple[list[Rendered], Counter[str]]:
    counts: Counter[str] = Counter()
    return list(render_many(batch, tokenizer, max_length, counts, batch_size=16)), counts


def prompts(tokenizer: Any, batch: list[Sample]) -> list[object]:
    found: list[object] = []
    for s in batch[::3]:
        try:
            found.append(render_prompt(s, tokenizer, s.turns[-1].speaker, 48))
        except (render.TemplateError, IndexError) as err:
            found.append(type(err))
    return found


def reference_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chat through the template itself, every token position by bisecting all the offsets the
    tokenizer gives (not those worked out from byte lengths)."""

    def slow_layout(self: layout.Formats, messages: Any, turns: Any, sample_id: str) -> layout.Layout:
        return layout.locate(self.profile, messages, turns, sample_id)

    fast_encode = render._Renderer.encode

    def slow_encode(self: Any, layouts: Any) -> list[Any]:
        out = []
        for t in fast_encode(self, layouts):
            if t.encoding is not None:
                t = Tokens(t.ids, offsets=[(0, 0)] * t.shift + list(t.encoding.offsets))
            out.append(t)
        return out

    monkeypatch.setattr(layout.Formats, "layout", slow_layout)
    monkeypatch.setattr(render._Renderer, "encode", slow_encode)
    monkeypatch.setattr(render, "byte_lengths", lambda tokenizer: None)  # the tokenizer's own offsets


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fast_rendering_equals_the_reference(
    load_tokenizer: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    batch = samples(len(family))
    fast = load_tokenizer(family)
    # Twice: the first pass learns each shape's format, the second fills it.
    got = [rows(fast, batch, n) for n in (4096, 4096, 40)], prompts(fast, batch)
    assert any(f is not None for f in inspect_template(fast).formats["shapes"].values())  # the fast path ran
    # and a byte-level tokenizer's offsets were worked out from its byte lengths
    assert (render.byte_lengths(fast) is not None) == (FAMILIES[family].kind == "bytelevel")
    with monkeypatch.context() as m:
        reference_paths(m)
        want = (
            [rows(load_tokenizer(family), batch, n) for n in (4096, 4096, 40)],
            prompts(load_tokenizer(family), batch),
        )
    assert got == want


@pytest.mark.parametrize(
    "template",
    [
        # Changes the texts: upper-cased, HTML-escaped.
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n"
        "{% endfor %}",
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | e }}<|im_end|>\n{% endfor %}",
        # Changes the names only: the first chat's names are capitalized already, so only the probe shows it.
        "{% for m in messages %}<|im_start|>{{ m['role'][0] | upper }}{{ m['role'][1:] }}\n{{ m['content'] }}"
        "<|im_end|>\n{% endfor %}",
    ],
)
def test_a_template_that_changes_texts_or_names_is_never_filled(
    load_tokenizer: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch, template: str
) -> None:
    def chat(sid: str, first: str, second: str) -> Sample:
        turns = (Turn(first, "<b>a</b> & b", False), Turn(second, "reply", True))
        return Sample(sid, "discord:c", "discord", "chat", turns)

    # Same shape (two people, no system prompt): the second chat would be filled from the first's format.
    batch = [chat("s1", "Alice", "Bob"), chat("s2", "carol", "dave"), chat("s3", "Alice", "Bob")]
    tokenizer = load_tokenizer("chatml")
    tokenizer.chat_template = template
    got = rows(tokenizer, batch, 4096)
    assert list(inspect_template(tokenizer).formats["shapes"].values()) == [None]
    with monkeypatch.context() as m:
        reference_paths(m)
        reference = load_tokenizer("chatml")
        reference.chat_template = template
        assert got == rows(reference, batch, 4096)


def test_a_template_that_treats_a_repeated_name_apart_keeps_one_shape_per_name_pattern(
    load_tokenizer: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One header for consecutive messages of the same person: which names repeat changes the text.
    template = (
        "{% for m in messages %}{% if loop.first or m['role'] != messages[loop.index0 - 1]['role'] %}"
        "<|im_start|>{{ m['role'] }}\n{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )

    def chat(sid: str, *speakers: str) -> Sample:
        turns = tuple(Turn(who, f"text {k}", k > 0) for k, who in enumerate(speakers))
        return Sample(sid, "discord:c", "discord", "chat", turns)

    batch = [chat("s1", "Ann", "Bob", "Cy"), chat("s2", "Ann", "Ann", "Bob"), chat("s3", "Ann", "Bob", "Bob")]
    tokenizer = load_tokenizer("chatml")
    tokenizer.chat_template = template
    got = rows(tokenizer, batch + batch, 4096)
    assert inspect_template(tokenizer).formats["names alike"] is False
    with monkeypatch.context() as m:
        reference_paths(m)
        reference = load_tokenizer("chatml")
        reference.chat_template = template
        assert got == rows(reference, batch + batch, 4096)
