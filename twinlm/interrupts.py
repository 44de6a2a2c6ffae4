"""Ctrl-C as a request instead of an exception, where an exception could land anywhere.

A KeyboardInterrupt is raised at whatever bytecode the main thread is running: inside a queue's lock
(the chat's reply stream hung so), or in one process of a multi-process run while another waits for it
in a collective call. Inside `ctrl_c_calls`, SIGINT runs a callback instead, which only sets a flag that
the caller reads where stopping is safe.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def ctrl_c_calls(on_press: Callable[[], None]) -> Iterator[None]:
    """While inside, each Ctrl-C (SIGINT) calls `on_press` instead of raising KeyboardInterrupt; the
    previous handler is put back after. `on_press` runs between two bytecodes of the main thread: it must
    only set a plain flag (no lock, no I/O). Signals reach the main thread only: elsewhere this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: on_press())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
