"""The CPU threads llama.cpp generates with, shared among the replies one process makes at once.

llama-cpp-python's default is half the logical CPUs for each token (it assumes two hardware threads
per core). On a machine without SMT (most cloud VMs, Apple silicon) that leaves half the cores idle
during every reply: on a 2-core VM, whole replies of a 1.1B q4_k_m model came at 9.2-10.6 tokens/s
with that default (one thread) and 14.4-17.6 with both cores (benchmarks/serve.py's first two rows).
llama.cpp's own tools use one thread per physical core; so do we.

Contexts of one process that generate at the same time share the cores: before each token a reply
takes its share, so a reply alone gets them all and two get half each. Threads never outnumber cores:
llama.cpp's threads meet at a barrier after every step, so one thread waiting for a core stalls the
others. `twinlm serve --workers N` on a GGUF makes its replies in one context (twinlm/serve/batched.py,
one share); several LlamaCppBackends at once (the API, tests and benchmarks open them) split it.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def machine_cores() -> tuple[int, int]:
    """(physical cores, logical CPUs) this process may run on (its CPU affinity counted, as in a
    container limited to some CPUs)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        logical = os.cpu_count() or 1
    import psutil

    physical = psutil.cpu_count(logical=False) or logical  # None where the OS does not say
    return max(1, min(physical, logical)), max(1, logical)


class CoreShare:
    """`cores` threads to decode with and `batch_cores` to evaluate prompts with, split evenly among the
    replies under way (`reply()`); `threads()` is the share of one of them."""

    def __init__(self, cores: int, batch_cores: int | None = None) -> None:
        if cores < 1:
            raise ValueError(f"cores must be at least 1, got {cores}")
        self.cores = cores
        self.batch_cores = max(batch_cores or cores, 1)
        self._lock = threading.Lock()
        self._replies = 0

    @classmethod
    def for_machine(cls, threads: int | None = None) -> CoreShare:
        """`threads` where set (one number for both kinds of work), else every physical core to decode
        and every logical CPU for prompts (llama-cpp-python's own choice for prompts)."""
        if threads:
            return cls(threads, threads)
        physical, logical = machine_cores()
        return cls(physical, logical)

    @property
    def replies(self) -> int:
        return self._replies

    def threads(self) -> tuple[int, int]:
        """(decode threads, prompt threads) for one reply, given how many are under way now."""
        n = max(self._replies, 1)
        return max(1, self.cores // n), max(1, self.batch_cores // n)

    @contextmanager
    def reply(self) -> Iterator[None]:
        """Counts a reply as under way while the block runs."""
        with self._lock:
            self._replies += 1
        try:
            yield
        finally:
            with self._lock:
                self._replies -= 1


class ContextThreads:
    """A llama.cpp context's (decode, prompt) threads, passed to llama.cpp only when they change (it
    reads them at its next decode)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.now = (-1, -1)  # unknown until first set

    def use(self, threads: tuple[int, int]) -> None:
        import llama_cpp

        if threads != self.now:
            llama_cpp.llama_set_n_threads(self.ctx, *threads)
            self.now = threads


# One per process: every llama.cpp backend of the process draws from the same cores. `twinlm chat`,
# `serve` and `discord-bot` replace it with `configure(chat.threads)` before opening a backend.
CORES = CoreShare.for_machine()


def configure(threads: int | None) -> CoreShare:
    """Sets the process's share from the config's `chat.threads` (None: the machine's cores)."""
    global CORES
    CORES = CoreShare.for_machine(threads)
    return CORES


def tokens_on_their_own_thread(
    tokens: Iterator[Any], share: CoreShare, use_threads: Callable[[tuple[int, int]], None]
) -> Iterator[int]:
    """`tokens` (llama-cpp-python's generator), each made on one thread started for this reply, in
    lockstep with the reader (a token is made only when asked for: none is wasted after the reader
    stops). Before each token `use_threads` gets the reply's share of the cores. The reply counts as
    under way from its first token until it ends or is closed; closing waits for the token being made."""
    asks: queue.SimpleQueue[bool] = queue.SimpleQueue()
    answers: queue.SimpleQueue[tuple[int | None, BaseException | None]] = queue.SimpleQueue()

    def make() -> None:
        try:
            with share.reply():
                while asks.get():
                    use_threads(share.threads())
                    token = next(tokens, None)
                    answers.put((None if token is None else int(token), None))
                    if token is None:
                        return
        except BaseException as err:  # handed to the reader, raised there
            answers.put((None, err))
        finally:
            tokens.close()

    thread = threading.Thread(target=make, name="twinlm llama.cpp reply", daemon=True)
    thread.start()
    try:
        while True:
            asks.put(True)
            token, err = answers.get()
            if err is not None:
                raise err
            if token is None:
                return
            yield token
    finally:
        asks.put(False)
        thread.join()
