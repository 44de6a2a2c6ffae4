"""The server's workers: generation is blocking native code, so it runs in threads, fed from one
first-come-first-served queue. Each thread has a backend: its own model object (a backend that makes one
reply at a time), or the one batched llama.cpp backend that all of them share (twinlm/serve/batched.py).

A job hands its reply to the asyncio side as it comes, so the event loop never blocks on the model:
the worker appends each piece to the job's list and wakes the loop (`loop.call_soon_threadsafe`) only
where no wake-up is pending yet; the loop takes everything listed at once (`Job.take`). A loop that
keeps up gets each token as it is made; one that is behind (a busy server, a fast model) gets the
waiting tokens in one batch, with one thread hop and one SSE chunk instead of one per token.

Each job carries a cancel event: a client that leaves sets it, a worker skips a job cancelled while it
waited, and a generation under way stops before its next token (Generation checks the event between
tokens), so the worker is free for the next job at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twinlm.serve.backends import Backend, Sampling

log = logging.getLogger("twinlm.serve")


class QueueFull(Exception):
    pass


@dataclass(eq=False)  # compared and hashed by identity (the pool keeps a set of running jobs)
class Job:
    prompt_ids: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    cancel: threading.Event = field(default_factory=threading.Event)
    # ("piece", text) ... then ("done", Generation | None) or ("error", exception); "left" from the server.
    # Listed by any thread under _lock; _woken: a wake-up of the loop is on its way (or done, not yet taken).
    _events: list[tuple[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _woken: bool = False
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def emit(self, kind: str, value: Any) -> None:
        """From any thread: list an event and wake the loop, unless a wake-up is already on its way."""
        with self._lock:
            self._events.append((kind, value))
            if self._woken:
                return
            self._woken = True
        try:
            self.loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the event loop is closed: the server stopped, nobody is listening
            self.cancel.set()

    async def take(self) -> list[tuple[str, Any]]:
        """On the loop: every event listed since the last call, oldest first (waits for at least one)."""
        while True:
            with self._lock:
                if self._events:
                    events, self._events = self._events, []
                    self._woken = False  # the next emit wakes the loop again
                    self._ready.clear()
                    return events
            await self._ready.wait()
            self._ready.clear()


class WorkerPool:
    """One thread per backend; `submit` queues a job (QueueFull past `max_queued` waiting jobs)."""

    def __init__(self, backends: Sequence[Backend], max_queued: int) -> None:
        if not backends:
            raise ValueError("a worker pool needs at least one backend")
        self.backends = list(backends)
        self.max_queued = max_queued
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._busy = 0
        self._served = 0
        self._running: set[Job] = set()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self._threads:
            return
        for i, backend in enumerate(self.backends):
            thread = threading.Thread(
                target=self._work, args=(backend,), name=f"twinlm-worker-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what runs and what waits, end the threads (each after its current token)."""
        with self._lock:
            for job in self._running:
                job.cancel.set()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel.set()
                job.emit("done", None)
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def submit(self, prompt_ids: list[int], sampling: Sampling) -> Job:
        job = Job(prompt_ids, sampling, asyncio.get_running_loop())
        with self._lock:
            if self._jobs.qsize() >= self.max_queued + max(0, len(self.backends) - self._busy):
                raise QueueFull
            self._jobs.put(job)
        return job

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "workers": len(self.backends),
                "busy": self._busy,
                "queued": self._jobs.qsize(),
                "served": self._served,
            }

    def _work(self, backend: Backend) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._busy += 1
                self._running.add(job)
            try:
                if job.cancel.is_set():  # its client left while it waited
                    job.emit("done", None)
                    continue
                generation = backend.generate(job.prompt_ids, job.sampling, cancel=job.cancel)
                for piece in generation:
                    job.emit("piece", piece)
                job.emit("done", generation)
            except Exception as err:  # reported to its client; the worker goes on
                if not job.cancel.is_set():
                    log.exception("generation failed")
                job.emit("error", err)
            finally:
                with self._lock:
                    self._busy -= 1
                    self._served += 1
                    self._running.discard(job)
