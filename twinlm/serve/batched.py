"""Several replies from one llama.cpp context, their next tokens decoded together in one batch, as
llama-server does with its slots (`twinlm serve --workers N` on a GGUF).

Why: on a CPU a token's decode is bound by reading the weights, and a batch of tokens from several
replies reads them once. Measured on a 2-core VM with a 1.1B q4_k_m model: 8 replies on 4 slots made
1.6-2x the tokens/s of one reply alone (benchmarks/serve.py). N copies of the model (the other way to
serve N replies at once) split the same cores and bandwidth, so N replies together were no faster
than one, and each copy took another ~0.6 GB; 4 slots took 0.16 GB more than one.

One thread (the engine) owns the context: it takes in replies, evaluates their prompts, decodes one
token of every reply under way per step, and samples each with llama.cpp's own sampler chain built by
llama-cpp-python (`Llama._init_sampler`, the chain `Llama.generate` uses: the same reply for the same
seed as LlamaCppBackend). The readers (serve's workers) take their tokens from a queue each. Each
reply's sequence keeps its tokens in the context when it ends, and a new reply takes the free slot
whose tokens share the longest start with its prompt, so it evaluates only the rest (the system
prompt and earlier turns stay cached). A reply that starts alone clears the other free slots (see
`_admit`). Replies decoded in one batch differ from a reply alone in the last bits of their logits
(so may their greedy picks, where two tokens are nearly tied), as llama-server's do.
llama-cpp-python has no multi-sequence API of its own; this uses its ctypes bindings of llama.h.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twinlm.errors import TwinError
from twinlm.serve import cpu_share
from twinlm.serve.cpu_share import CoreShare
from twinlm.serve.generation import Generation, Sampling

log = logging.getLogger(__name__)

_END = None  # put on a reply's queue after its last token


@dataclass(eq=False)
class _Reply:
    prompt: list[int]
    sampling: Sampling
    sampler: Any  # llama-cpp-python's LlamaSampler (a llama.cpp sampler chain)
    tokens: queue.SimpleQueue[int | BaseException | None] = field(default_factory=queue.SimpleQueue)
    closed: bool = False  # its reader stopped: free its slot at the next step
    seq: int = -1
    pending: list[int] = field(default_factory=list)  # to evaluate at the next step
    made: int = 0


class BatchedLlamaCpp:
    """A GGUF through llama-cpp-python, `slots` replies at once in one context (see the module)."""

    name = "llama.cpp"

    def __init__(
        self,
        llama: Any,
        tokenizer: Any,
        end_ids: frozenset[int],
        *,
        slots: int,
        context_length: int,
        cores: CoreShare | None = None,
    ) -> None:
        import llama_cpp

        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.llama = llama  # holds the model (its own context is the smallest llama.cpp makes)
        self.tokenizer = tokenizer
        self.end_ids = end_ids
        self.slots = slots
        self.context_length = context_length
        self.cores = cores or cpu_share.CORES
        self.n_batch = min(512, context_length)
        # llama-cpp-python's own settings for the model's context (flash attention, KV types, ...), so
        # a reply's logits are those LlamaCppBackend's context gives; only the sizes differ.
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
        params.n_ctx = slots * context_length  # room for every sequence at its longest (each is checked)
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = slots
        # One KV buffer for all sequences: 8 replies on 4 slots made 24-26 tokens/s in all against 17
        # with a buffer per sequence (1.1B q4_k_m, 2-core VM; one reply alone: 17).
        params.kv_unified = True
        params.n_threads, params.n_threads_batch = self.cores.threads()
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(llama.model, params)
        if not self._ctx:
            raise TwinError(f"llama.cpp cannot make a context of {params.n_ctx} tokens for {slots} replies")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._threads = cpu_share.ContextThreads(self._ctx)
        self._cached: list[list[int]] = [[] for _ in range(slots)]  # each sequence's tokens in the context
        self._free = list(range(slots))
        self._waiting: deque[_Reply] = deque()
        self._running: list[_Reply] = []
        self._lock = threading.Lock()
        self._engine: threading.Thread | None = None
        self._closed = False

    # --- the readers' side ----------------------------------------------------------------------------

    def generate(
        self, prompt_ids: list[int], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Generation:
        from twinlm.serve.backends import fit_to_context

        capped = fit_to_context(prompt_ids, sampling, self.context_length)
        tokens = self._tokens(list(prompt_ids), capped)
        return Generation(
            tokens, self.tokenizer, self.end_ids, capped, len(prompt_ids), cancel, close=tokens.close
        )

    def _tokens(self, prompt: list[int], sampling: Sampling) -> Any:
        reply = _Reply(prompt, sampling, self._sampler(sampling))
        with self._lock:
            if self._closed:
                raise TwinError("the model was closed")
            self._waiting.append(reply)
            if self._engine is None:  # the engine runs while there are replies: no idle thread
                self._engine = threading.Thread(target=self._run, name="twinlm llama.cpp batch", daemon=True)
                self._engine.start()
        try:
            while True:
                token = reply.tokens.get()
                if isinstance(token, BaseException):
                    raise token
                if token is _END:
                    return
                yield token
        finally:
            with self._lock:
                reply.closed = True

    def _sampler(self, sampling: Sampling) -> Any:
        """llama.cpp's sampler chain for `sampling`, as LlamaCppBackend.generate gets it from
        Llama.generate (so the same seed gives the same reply)."""
        from twinlm.serve.backends import llama_cpp_sampler_args, llama_cpp_seed

        with self._lock:  # the seed is read from the Llama object while the chain is built
            self.llama.set_seed(llama_cpp_seed(sampling))
            return self.llama._init_sampler(**llama_cpp_sampler_args(sampling))

    # --- the engine -----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with self.cores.reply():  # one reply's share of the process's cores, whatever the batch
                while self._admit():
                    self._step()
        except BaseException as err:  # every reply under way or waiting gets it
            log.exception("llama.cpp batch failed")
            with self._lock:
                for reply in self._running + list(self._waiting):
                    reply.tokens.put(err)
                self._free.extend(r.seq for r in self._running)
                self._running.clear()
                self._waiting.clear()
                self._engine = None

    def _admit(self) -> bool:
        """Drops the replies whose readers stopped, gives free slots to waiting replies; False (and the
        engine ends) when nothing is left to do."""
        import llama_cpp

        with self._lock:
            for reply in [r for r in self._running if r.closed]:
                self._running.remove(reply)
                self._free.append(reply.seq)
            self._waiting = deque(r for r in self._waiting if not r.closed)
            while self._waiting and self._free:
                reply = self._waiting.popleft()
                # the slot whose cached tokens share the longest start with this prompt
                seq = max(self._free, key=lambda s: _common(self._cached[s], reply.prompt))
                self._free.remove(seq)
                keep = min(_common(self._cached[seq], reply.prompt), len(reply.prompt) - 1)
                llama_cpp.llama_memory_seq_rm(self._memory, seq, keep, -1)
                del self._cached[seq][keep:]
                reply.seq, reply.pending = seq, reply.prompt[keep:]
                if not self._running:
                    # Alone: the other slots' cached tokens go, so that attention spans this reply's
                    # tokens only (one KV buffer for all: a reply alone beside 3 idle slots' caches
                    # made 14 tokens/s against 17 without them; the same as llama.cpp alone after).
                    for idle in self._free:
                        llama_cpp.llama_memory_seq_rm(self._memory, idle, 0, -1)
                        self._cached[idle].clear()
                self._running.append(reply)
            if not self._running or self._closed:
                self._engine = None
                return False
            return True

    def _step(self) -> None:
        """One llama_decode: every running reply's pending tokens (prompts in n_batch-sized pieces,
        first come first), then a token sampled for each reply whose pending tokens all went in."""
        import llama_cpp

        batch, room = self._batch, self.n_batch
        taken: list[tuple[_Reply, int, int]] = []  # (reply, tokens put in, batch index of its logits)
        n = 0
        # tokens of replies under way first (one each), then prompts, first come first
        for reply in sorted(self._running, key=lambda r: len(r.pending) > 1):
            if room == 0:
                break
            if reply.closed or not reply.pending:
                continue
            chunk = reply.pending[:room]
            pos = len(self._cached[reply.seq])
            for j, token in enumerate(chunk):
                batch.token[n] = token
                batch.pos[n] = pos + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = reply.seq
                batch.logits[n] = False
                n += 1
            room -= len(chunk)
            done = len(chunk) == len(reply.pending)
            if done:
                batch.logits[n - 1] = True
            taken.append((reply, len(chunk), n - 1 if done else -1))
        if n == 0:  # every reply under way was closed by its reader: dropped at the next admit
            return
        batch.n_tokens = n
        self._threads.use(self.cores.threads())
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            raise TwinError(f"llama.cpp could not decode a batch of {n} tokens (llama_decode: {status})")
        for reply, count, index in taken:
            self._cached[reply.seq] += reply.pending[:count]
            reply.pending = reply.pending[count:]
            if index < 0:
                continue
            token = int(llama_cpp.llama_sampler_sample(reply.sampler.sampler, self._ctx, index))
            reply.made += 1
            reply.tokens.put(token)
            if token in self.end_ids or reply.made >= reply.sampling.max_tokens:
                reply.tokens.put(_END)
                with self._lock:
                    reply.closed = True  # its slot is free at the next step; the token is not evaluated
            else:
                reply.pending = [token]

    def close(self) -> None:
        """Stops taking replies, waits for the engine, frees the context and the model."""
        import llama_cpp

        from twinlm.export.parity import _llama_cpp_quiet

        with self._lock:
            self._closed = True
            for reply in self._running + list(self._waiting):
                reply.tokens.put(TwinError("the model was closed"))
                reply.closed = True
            engine = self._engine
        if engine is not None:
            engine.join()
        with _llama_cpp_quiet():
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self.llama.close()


def _common(a: list[int], b: list[int]) -> int:
    """How many tokens `a` and `b` share from their start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
