"""Backends: the shared Generation streams text, stops at an end-of-turn id, at a stop string (also one
split across tokens, never shown), at max_tokens and on cancel; the transformers and llama.cpp backends
give the same greedy reply for the same prompt on the f32 GGUF of a tiny model, and both stop at the
end of a turn."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tools_required import require

from twinlm.config import SamplingConfig
from twinlm.errors import TwinError
from twinlm.serve.backends import Generation, Sampling, end_of_turn_ids, open_backend, sample_token

GREEDY = Sampling(temperature=0.0, repetition_penalty=1.0, max_tokens=24)


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def one_by_one(tokenizer: Any, text: str) -> list[int]:
    """`text` as one token per character (each character's own ids), so stop strings fall across tokens."""
    return [i for ch in text for i in ids_of(tokenizer, ch)]


def generation(tokenizer: Any, ids: list[int], sampling: Sampling, **kw: Any) -> Generation:
    return Generation(iter(ids), tokenizer, end_of_turn_ids(tokenizer), sampling, 3, **kw)


def test_a_reply_ends_at_the_end_of_turn_or_any_special_token(tiny_tokenizer: Any) -> None:
    ends = end_of_turn_ids(tiny_tokenizer)
    # <|im_end|> closes a turn; <|im_start|> would start the next one (the model writing someone else's).
    assert {tiny_tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>")} <= ends
    assert not ends & set(ids_of(tiny_tokenizer, "hello there, see you at 7 🙂"))


def test_streams_piece_by_piece_and_stops_at_end_of_turn(tiny_tokenizer: Any) -> None:
    eot = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [*ids_of(tiny_tokenizer, "sure, see you at 7"), eot, *ids_of(tiny_tokenizer, " never shown")]
    g = generation(tiny_tokenizer, ids, Sampling(max_tokens=100))
    pieces = list(g)
    assert len(pieces) > 3  # streamed, not one block
    assert "".join(pieces) == g.text == "sure, see you at 7"
    assert g.finish_reason == "stop"
    assert g.completion_tokens == len(ids_of(tiny_tokenizer, "sure, see you at 7"))
    assert g.prompt_tokens == 3


@pytest.mark.parametrize("split", [False, True])
def test_stop_string_ends_the_reply_and_is_not_shown(tiny_tokenizer: Any, split: bool) -> None:
    text = "hello there\nSam: and then some"
    ids = one_by_one(tiny_tokenizer, text) if split else ids_of(tiny_tokenizer, text)
    g = generation(tiny_tokenizer, ids, Sampling(max_tokens=100, stop=("\nSam:",)))
    pieces = list(g)
    assert "".join(pieces) == g.text == "hello there"
    assert not any("\n" in p for p in pieces)  # the stop string's start was held back, never streamed
    assert g.finish_reason == "stop"


def test_held_back_text_that_is_no_stop_is_released(tiny_tokenizer: Any) -> None:
    """A prefix of a stop string that turns out to be ordinary text comes out, in order."""
    text = "a\nSa\nSb ok"
    g = generation(
        tiny_tokenizer, one_by_one(tiny_tokenizer, text), Sampling(max_tokens=100, stop=("\nSam:",))
    )
    assert "".join(g) == text
    assert g.finish_reason == "length"


def test_characters_split_across_tokens_come_out_whole(tiny_tokenizer: Any) -> None:
    text = "see you 🙂🎉 naïve 日本語 ❤️"
    ids = ids_of(tiny_tokenizer, text)
    assert any("\ufffd" in tiny_tokenizer.decode([i]) for i in ids)  # some tokens hold part of a character
    pieces = list(generation(tiny_tokenizer, ids, Sampling(max_tokens=100)))
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_max_tokens_and_cancel(tiny_tokenizer: Any) -> None:
    ids = ids_of(tiny_tokenizer, "one two three four five six seven eight")
    g = generation(tiny_tokenizer, ids, Sampling(max_tokens=2))
    list(g)
    assert g.completion_tokens == 2 and g.finish_reason == "length"

    cancel = threading.Event()
    g = generation(tiny_tokenizer, ids, Sampling(max_tokens=100), cancel=cancel)
    seen = []
    for piece in g:
        seen.append(piece)
        cancel.set()
    assert len(seen) == 1 and g.finish_reason == "cancelled"
    assert g.completion_tokens == 1


def test_breaking_out_closes_the_token_source(tiny_tokenizer: Any) -> None:
    closed = []

    def tokens() -> Iterator[int]:
        yield from ids_of(tiny_tokenizer, "one two three four")

    g = Generation(tokens(), tiny_tokenizer, frozenset(), Sampling(), 1, close=lambda: closed.append(1))
    for _ in g:
        break
    assert closed == [1] and g.finish_reason == "cancelled"


def test_sampling_from_config_with_overrides() -> None:
    s = Sampling.from_config(
        SamplingConfig(temperature=0.3, seed=5), max_tokens=9, top_p=None, stop=["", "x"]
    )
    assert (s.temperature, s.seed, s.max_tokens, s.top_p, s.stop) == (0.3, 5, 9, 0.95, ("x",))
    assert Sampling.from_config() == Sampling()


def test_sample_token_follows_llama_cpps_chain() -> None:
    import torch

    def pick(logits: list[float], reply: list[int], **kw: Any) -> set[int]:
        sampling = Sampling(
            **{"temperature": 1.0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0, **kw}
        )
        gen = torch.Generator().manual_seed(0)
        return {sample_token(torch.tensor(logits), reply, sampling, gen) for _ in range(200)}

    assert pick([1.0, 3.0, 2.0], [], temperature=0) == {1}
    # The penalty divides a positive logit, multiplies a negative one, only for tokens the reply wrote.
    assert pick([1.0, 3.0, 2.9], [1], temperature=0, repetition_penalty=1.1) == {2}
    assert pick([-1.0, -1.05, -9.0], [0], temperature=0, repetition_penalty=1.1) == {1}
    assert pick([1.0, 3.0, 2.9], [0] * 63 + [1], temperature=0, repetition_penalty=1.1) == {2}
    out_of_window = [1] + [0] * 64
    assert pick([1.0, 3.0, 2.9], out_of_window, temperature=0, repetition_penalty=1.1) == {1}
    # probabilities ~ 0.665, 0.245, 0.090: top_p keeps the token that crosses it; min_p: relative to the top.
    logits = [2.0, 1.0, 0.0]
    assert pick(logits, [], top_p=0.6) == {0}
    assert pick(logits, [], top_p=0.7) == {0, 1}
    assert pick(logits, [], min_p=0.3) == {0, 1}
    assert pick(logits, [], min_p=0.1) == {0, 1, 2}
    # Both before temperature: a high temperature does not bring back what they left out.
    assert pick(logits, [], top_p=0.7, temperature=5.0) == {0, 1}


# --- the real backends on the tiny model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt(served_workspace: Path) -> list[int]:
    from transformers import AutoTokenizer

    from twinlm.prepare.render import render_prompt
    from twinlm.prepare.sample import Sample, Turn

    tokenizer = AutoTokenizer.from_pretrained(served_workspace / "export/r/merged")
    sample = Sample("t", "t", "t", "chat", (Turn("Sam", "Did you eat dinner today?", False),), "A chat.")
    return render_prompt(sample, tokenizer, "Alex Rivera")


def test_both_backends_give_the_same_greedy_reply(served_workspace: Path, prompt: list[int]) -> None:
    """Acceptance: the same prompt ids, greedy, on the f32 GGUF and on the merged model it came from."""
    require("llama_cpp")
    export = served_workspace / "export" / "r"
    replies = {}
    for kind, path in (("transformers", export / "merged"), ("llama.cpp", export / "r-f32.gguf")):
        backend = open_backend(kind, path, context_length=512)  # type: ignore[arg-type]
        assert backend.context_length == 512
        g = backend.generate(prompt, GREEDY)
        pieces = list(g)
        replies[kind] = (g.text, g.completion_tokens, g.finish_reason)
        assert "".join(pieces) == g.text and g.prompt_tokens == len(prompt)
        assert len(pieces) > 1
    assert replies["transformers"] == replies["llama.cpp"]
    assert replies["transformers"][1] > 1


def test_both_backends_penalize_repetition_alike(served_workspace: Path, prompt: list[int]) -> None:
    """Greedy with the default repetition penalty: the same reply, so the penalty means the same in both
    (llama.cpp's: the reply's last 64 tokens, not the prompt)."""
    require("llama_cpp")
    export = served_workspace / "export" / "r"
    penalized = replace(GREEDY, repetition_penalty=1.3, max_tokens=40)
    replies = {}
    for kind, path in (("transformers", export / "merged"), ("llama.cpp", export / "r-f32.gguf")):
        backend = open_backend(kind, path, context_length=512)  # type: ignore[arg-type]
        replies[kind] = (
            "".join(backend.generate(prompt, penalized)),
            "".join(backend.generate(prompt, GREEDY)),
        )
    assert replies["transformers"] == replies["llama.cpp"]
    assert replies["transformers"][0] != replies["transformers"][1]  # the penalty changed the reply


def test_llama_cpp_stops_at_end_of_turn_and_reuses_the_context(
    served_workspace: Path, prompt: list[int]
) -> None:
    """The tiny model rarely ends a turn itself: the end-of-turn id is made the only choice after a few
    tokens (a processor on the model's logits), and the reply ends there; the same backend answers again."""
    require("llama_cpp")
    import numpy as np

    backend = open_backend("llama.cpp", served_workspace / "export/r/r-f32.gguf", context_length=512)
    eot = backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    calls = 0
    real = backend.llama.generate

    def forced(tokens: list[int], **kw: Any) -> Any:
        def force(_: Any, scores: np.ndarray) -> np.ndarray:
            nonlocal calls
            calls += 1
            if calls > 3:
                scores[:] = -np.inf
                scores[eot] = 0.0
            return scores

        return real(tokens, logits_processor=[force], **kw)

    backend.llama.generate = forced  # type: ignore[method-assign]
    g = backend.generate(prompt, GREEDY)
    list(g)
    assert g.finish_reason == "stop" and g.completion_tokens == 3
    backend.llama.generate = real  # type: ignore[method-assign]
    again = backend.generate(prompt, GREEDY)
    assert list(again) and again.finish_reason == "length"


def test_transformers_stops_at_end_of_turn(served_workspace: Path, prompt: list[int]) -> None:
    backend: Any = open_backend("transformers", served_workspace / "export/r/merged", context_length=512)
    eot = backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = backend.model
    real = model.forward
    calls = 0

    def forced(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        out = real(*args, **kw)
        calls += 1
        if calls > 3:
            out.logits[..., :] = -1e9
            out.logits[..., eot] = 0.0
        return out

    model.forward = forced
    g = backend.generate(prompt, Sampling(temperature=0.8, seed=1, max_tokens=50))
    list(g)
    assert g.finish_reason == "stop" and g.completion_tokens == 3


def test_seeded_sampling_repeats(served_workspace: Path, prompt: list[int]) -> None:
    backend = open_backend("transformers", served_workspace / "export/r/merged", context_length=512)
    s = Sampling(temperature=1.0, seed=7, max_tokens=12)
    first = backend.generate(prompt, s)
    second = backend.generate(prompt, s)
    assert "".join(first) == "".join(second)


def test_a_prompt_over_the_context_is_one_line(served_workspace: Path) -> None:
    backend = open_backend("transformers", served_workspace / "export/r/merged", context_length=64)
    with pytest.raises(TwinError, match="context window 64"):
        backend.generate([1] * 64, GREEDY)
    with pytest.raises(TwinError, match="empty prompt"):
        backend.generate([], GREEDY)


def test_a_bad_device_is_one_line(served_workspace: Path) -> None:
    import torch

    with pytest.raises(TwinError, match="--device gpu0: expected cpu, cuda or cuda:N"):
        open_backend("transformers", served_workspace / "export/r/merged", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(TwinError, match="no CUDA GPU here"):
            open_backend("transformers", served_workspace / "export/r/merged", device="cuda")
