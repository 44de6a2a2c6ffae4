"""Several replies from one llama.cpp context (twinlm/serve/batched.py): alone, a reply is the one
LlamaCppBackend makes (greedy and seeded sampling: the same sampler chain, the same seed); at once,
every reply completes and a reply's reader that stops frees its slot for the next; a prompt that
shares its start with a slot's last reply evaluates only the rest."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tools_required import require

from twinlm.serve.backends import Sampling, open_backend

GREEDY = Sampling(temperature=0.0, repetition_penalty=1.0, max_tokens=24)
SAMPLED = Sampling(temperature=0.9, top_p=0.95, min_p=0.05, repetition_penalty=1.1, max_tokens=24, seed=7)


@pytest.fixture(scope="module")
def gguf(served_workspace: Path) -> Path:
    require("llama_cpp")
    return served_workspace / "export/r/r-f32.gguf"


@pytest.fixture(scope="module")
def batched(gguf: Path) -> Any:
    backend = open_backend("llama.cpp", gguf, context_length=512, slots=3)
    yield backend
    backend.close()


def prompts(tokenizer: Any) -> list[list[int]]:
    """Chats rendered as the twin renders them (render_prompt), one message each."""
    from twinlm.prepare.render import render_prompt
    from twinlm.prepare.sample import Sample, Turn

    texts = ["Did you eat dinner today?", "where are you", "lol ok see you at 8", "what did Sam say?"]
    return [
        render_prompt(
            Sample("t", "t", "t", "chat", (Turn("Sam", text, False),), "A chat."), tokenizer, "Alex Rivera"
        )
        for text in texts
    ]


def reply(backend: Any, prompt: list[int], sampling: Sampling) -> tuple[str, int, str | None]:
    generation = backend.generate(prompt, sampling)
    text = "".join(generation)
    return text, generation.completion_tokens, generation.finish_reason


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
def test_a_reply_alone_is_the_one_llamacppbackend_makes(gguf: Path, batched: Any, sampling: Sampling) -> None:
    single = open_backend("llama.cpp", gguf, context_length=512)
    assert type(batched).__name__ == "BatchedLlamaCpp" and batched.context_length == 512
    assert batched.end_ids == single.end_ids
    lengths = []
    for prompt in prompts(single.tokenizer):
        expected = reply(single, prompt, sampling)
        assert reply(batched, prompt, sampling) == expected
        lengths.append(expected[1])
    assert max(lengths) > 5  # replies of some length were compared
    single.close()


def test_replies_at_once_all_complete_and_the_waiting_get_a_freed_slot(
    batched: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six readers on three slots, at once: each gets a whole reply, max_tokens long (the tiny model
    rarely ends a turn itself) and made of real text; never more than three under way, and some waited
    for a slot while three were."""
    results: dict[int, tuple[str, int, str | None]] = {}
    start = threading.Barrier(6)
    long = replace(GREEDY, max_tokens=150)
    seen: list[tuple[int, int]] = []  # (under way, waiting) after each admission
    admit = batched._admit

    def watched() -> bool:
        going = admit()
        seen.append((len(batched._running), len(batched._waiting)))
        return going

    monkeypatch.setattr(batched, "_admit", watched)

    def read(k: int, prompt: list[int]) -> None:
        start.wait()
        results[k] = reply(batched, prompt, long)

    ps = prompts(batched.tokenizer)
    threads = [threading.Thread(target=read, args=(k, ps[k % len(ps)])) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(6))
    for text, tokens, reason in results.values():
        assert text.strip() and 0 < tokens <= 150
        assert reason in ("length", "stop")
    assert batched._running == [] and sorted(batched._free) == [0, 1, 2]
    assert max(running for running, _ in seen) == 3
    assert any(waiting > 0 for running, waiting in seen if running == 3)


def test_a_reader_that_stops_early_frees_its_slot(batched: Any) -> None:
    prompt = prompts(batched.tokenizer)[0]
    readers = [iter(batched.generate(prompt, replace(GREEDY, max_tokens=200))) for _ in range(3)]
    for r in readers:
        next(r)
    for r in readers:
        r.close()  # type: ignore[attr-defined]  (a client that left)
    # the three slots are free again: a fourth reply gets one and completes
    assert reply(batched, prompt, GREEDY)[1] > 0
    assert batched._running == [] and len(batched._free) == 3


def test_a_prompt_sharing_its_start_with_a_slots_last_reply_evaluates_only_the_rest(batched: Any) -> None:
    import llama_cpp

    prompt = prompts(batched.tokenizer)[1]
    first = reply(batched, prompt, GREEDY)
    evaluated: list[int] = []
    real = llama_cpp.llama_decode

    def counting(ctx: Any, batch: Any) -> int:
        evaluated.append(batch.n_tokens)
        return real(ctx, batch)

    llama_cpp.llama_decode = counting
    try:
        again = reply(batched, prompt, GREEDY)
    finally:
        llama_cpp.llama_decode = real
    assert again == first
    # the prompt was cached: its last token again (for its logits), then one token a step
    assert evaluated[0] == 1 and set(evaluated) == {1}


def test_a_closed_backend_refuses_new_replies(gguf: Path) -> None:
    from twinlm.errors import TwinError

    backend = open_backend("llama.cpp", gguf, context_length=256, slots=2)
    backend.close()
    with pytest.raises(TwinError, match="closed"):
        reply(backend, [1, 2, 3], GREEDY)


def test_a_reply_that_starts_alone_clears_the_other_slots(batched: Any) -> None:
    """One KV buffer holds every slot's tokens and attention spans all of them: a reply alone beside
    idle slots' caches was ~15% slower. It keeps its own slot's tokens (the longest shared start)."""
    import llama_cpp

    ps = prompts(batched.tokenizer)
    readers = [iter(batched.generate(ps[k], replace(GREEDY, max_tokens=200))) for k in range(3)]
    for r in readers:
        next(r)  # three replies under way at once, a slot each
    for r in readers:
        r.close()  # type: ignore[attr-defined]
    positions = [llama_cpp.llama_memory_seq_pos_max(batched._memory, s) for s in range(3)]
    assert min(positions) > 0  # each slot holds a reply
    slot_of = {tuple(batched._cached[s][: len(ps[1])]): s for s in range(3)}
    reply(batched, ps[1], GREEDY)
    kept = slot_of[tuple(ps[1])]
    for s in range(3):
        held = llama_cpp.llama_memory_seq_pos_max(batched._memory, s)
        assert (held >= len(ps[1]) - 1) if s == kept else (held == -1 and batched._cached[s] == [])


def test_a_prompt_longer_than_a_batch_goes_in_pieces_and_gives_the_same_reply(
    gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt over n_batch (512) tokens is evaluated over several steps, beside the tokens of a reply
    under way, and still gives LlamaCppBackend's reply."""
    single = open_backend("llama.cpp", gguf, context_length=2048)
    batched = open_backend("llama.cpp", gguf, context_length=2048, slots=2)
    long_prompt = [t for p in prompts(single.tokenizer) for t in p] * 8
    assert 700 < len(long_prompt) < 2000 - GREEDY.max_tokens
    other = iter(batched.generate(prompts(single.tokenizer)[0], replace(GREEDY, max_tokens=400)))
    next(other)  # a reply under way while the long prompt goes in
    import llama_cpp

    decoded: list[list[int]] = []  # the sequence of each token of each decode
    real = llama_cpp.llama_decode

    def recording(ctx: Any, batch: Any) -> int:
        decoded.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
        return real(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", recording)
    long_reply = reply(batched, long_prompt, GREEDY)
    monkeypatch.undo()
    assert long_reply == reply(single, long_prompt, GREEDY)
    assert "".join(other)
    # the prompt went in over several decodes, each beside a token of the other reply
    pieces = [seqs for seqs in decoded if len(seqs) > 2]
    assert len(pieces) >= 2 and all(len(set(seqs)) == 2 for seqs in pieces)
    assert sum(len(seqs) - 1 for seqs in pieces) == len(long_prompt)
    batched.close()
    single.close()
