"""Pausing Python's cycle collector around work that allocates millions of short-lived objects.

Ingest and build make a tuple or two per message and keep few of them: none of it is cyclic garbage, but
the collector runs every 700 allocations and, every so often, walks every object the process holds (the
imported transformers and torch among them). Paused, ingest ran ~9% faster (measured when ingest first
paused it) and a build of 1M messages ~10% (benchmarks/RESULTS.md, "Build, the cycle collector paused"),
with the same peak memory: a build of a 2.7M-message chat peaked at 554.6 MiB with it paused and
554.5 MiB without.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cycle collector off inside, then back as it was and, if it was on, run once (also on error)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
            gc.collect()
