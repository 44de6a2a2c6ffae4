"""llama.cpp's threads: one per physical core (not llama-cpp-python's half of the logical CPUs), shared by
the replies one process makes at once, so a reply alone uses every core and two replies split them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tools_required import require

from twinlm.serve import cpu_share
from twinlm.serve.backends import Sampling, open_backend
from twinlm.serve.cpu_share import CoreShare

GREEDY = Sampling(temperature=0.0, repetition_penalty=1.0, max_tokens=64)


def test_a_reply_alone_gets_every_core_and_replies_at_once_split_them() -> None:
    share = CoreShare(4, 8)
    assert share.threads() == (4, 8)  # none under way: what the next reply would get
    with share.reply():
        assert share.threads() == (4, 8)
        with share.reply():
            assert share.threads() == (2, 4)
            with share.reply(), share.reply(), share.reply():
                assert share.replies == 5
                assert share.threads() == (1, 1)  # never zero threads, never more threads than cores
        assert share.threads() == (4, 8)
    assert share.replies == 0
    with pytest.raises(RuntimeError), share.reply():  # a reply that fails is no longer counted
        raise RuntimeError
    assert share.replies == 0


def test_the_machines_physical_cores_unless_the_config_says() -> None:
    import psutil

    physical, logical = cpu_share.machine_cores()
    assert 1 <= physical <= logical
    assert physical <= (psutil.cpu_count(logical=False) or logical)
    assert CoreShare.for_machine().threads() == (physical, logical)
    assert CoreShare.for_machine(3).threads() == (3, 3)
    with pytest.raises(ValueError, match="at least 1"):
        CoreShare(0)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, int, int]]:
    """Every llama_set_n_threads call, passed on to llama.cpp."""
    require("llama_cpp")
    import llama_cpp

    made: list[tuple[Any, int, int]] = []
    real = llama_cpp.llama_set_n_threads

    def recording(ctx: Any, n: int, n_batch: int) -> None:
        made.append((ctx, n, n_batch))
        real(ctx, n, n_batch)

    monkeypatch.setattr(llama_cpp, "llama_set_n_threads", recording)
    return made


def test_two_replies_at_once_share_the_cores_token_by_token(
    served_workspace: Path, calls: list[tuple[Any, int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two llama.cpp backends (serve's workers) on one CoreShare: each reply sets its context's threads
    before its next token whenever its share changed: all when alone, half while the other runs, all
    again once the other ends (closed mid-reply, as a client that leaves)."""
    monkeypatch.setattr(cpu_share, "CORES", CoreShare(4, 8))
    gguf = served_workspace / "export/r/r-f32.gguf"
    first, second = (open_backend("llama.cpp", gguf, context_length=512) for _ in range(2))
    assert first.cores is second.cores is cpu_share.CORES  # type: ignore[attr-defined]
    assert (first.llama.n_threads, first.llama.n_threads_batch) == (4, 8)  # type: ignore[attr-defined]
    a_ctx, b_ctx = first.llama.ctx, second.llama.ctx  # type: ignore[attr-defined]
    prompt = first.tokenizer("Did you eat dinner today?", add_special_tokens=False)["input_ids"]

    a = iter(first.generate(prompt, GREEDY))
    next(a)
    assert calls == [(a_ctx, 4, 8)]
    b_generation = second.generate(prompt, GREEDY)
    b = iter(b_generation)
    next(b)
    assert calls[1:] == [(b_ctx, 2, 4)]
    next(a)
    next(b)  # its share is unchanged: no call
    assert calls[2:] == [(a_ctx, 2, 4)]
    b.close()  # type: ignore[attr-defined]
    assert cpu_share.CORES.replies == 1
    rest = list(a)
    assert rest  # the reply goes on, on every core again
    assert calls[3:] == [(a_ctx, 4, 8)]
    assert cpu_share.CORES.replies == 0
    # the next reply of the second backend starts alone: all the cores
    assert "".join(second.generate(prompt, replace(GREEDY, max_tokens=3)))
    assert calls[4:] == [(b_ctx, 4, 8)]


def test_config_threads_set_every_backend_opened_after(
    served_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require("llama_cpp")
    monkeypatch.setattr(cpu_share, "CORES", cpu_share.CORES)  # restored after the test
    share = cpu_share.configure(3)
    backend = open_backend("llama.cpp", served_workspace / "export/r/r-f32.gguf", context_length=512)
    assert backend.cores is share  # type: ignore[attr-defined]
    assert (backend.llama.n_threads, backend.llama.n_threads_batch) == (3, 3)  # type: ignore[attr-defined]


def test_each_reply_is_made_on_a_thread_of_its_own_in_lockstep_with_its_reader(
    served_workspace: Path, calls: list[tuple[Any, int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp's OpenMP helper threads live as long as the thread that ran llama.cpp: a long-lived
    worker thread (serve's) would keep them past its reply, and once they outnumber the cores every
    barrier sleeps (a 2-core VM: 2.5x slower replies). Each reply runs on a thread started for it and
    ended with it, and it makes only the tokens its reader asks for."""
    import threading

    monkeypatch.setattr(cpu_share, "CORES", CoreShare(2, 2))
    backend = open_backend("llama.cpp", served_workspace / "export/r/r-f32.gguf", context_length=512)
    prompt = backend.tokenizer("Did you eat dinner today?", add_special_tokens=False)["input_ids"]
    made: list[threading.Thread] = []
    real_generate = backend.llama.generate  # type: ignore[attr-defined]

    def counted(*args: Any, **kw: Any) -> Any:
        for token in real_generate(*args, **kw):
            made.append(threading.current_thread())
            yield token

    monkeypatch.setattr(backend.llama, "generate", counted)  # type: ignore[attr-defined]
    for _ in range(2):
        generation = backend.generate(prompt, replace(GREEDY, max_tokens=5))
        assert "".join(generation)
        assert generation.completion_tokens == 5
        assert len(made) == 5  # none made ahead of the reader
        (thread,) = set(made)
        assert thread is not threading.current_thread() and not thread.is_alive()
        made.clear()


def test_an_error_while_making_a_token_reaches_the_reader(
    served_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require("llama_cpp")
    monkeypatch.setattr(cpu_share, "CORES", CoreShare(2, 2))
    backend = open_backend("llama.cpp", served_workspace / "export/r/r-f32.gguf", context_length=512)

    def failing(*args: Any, **kw: Any) -> Any:
        yield 5
        raise OSError("llama_decode failed")

    monkeypatch.setattr(backend.llama, "generate", failing)  # type: ignore[attr-defined]
    with pytest.raises(OSError, match="llama_decode failed"):
        list(backend.generate([1, 2, 3], GREEDY))
    assert cpu_share.CORES.replies == 0
