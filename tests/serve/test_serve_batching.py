"""How a worker hands a reply to the event loop (twinlm.serve.serve_pool.Job): pieces listed while the
loop is busy reach it in one batch, with one wake-up, and go out as one SSE chunk with the same text;
no piece and no end is lost when the worker and the loop race (which would leave a stream hanging).

The server end to end (OpenAI client, 50 streams, disconnects) is test_server.py / test_server_llama.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace
from typing import Any

from twinlm.serve.backends import Sampling
from twinlm.serve.serve_api import Chunks
from twinlm.serve.serve_pool import Job
from twinlm.serve.server import _stream

PIECES = [f"word{i} " for i in range(100)]
DONE = SimpleNamespace(finish_reason="length", prompt_tokens=5, completion_tokens=len(PIECES))


def _job(loop: asyncio.AbstractEventLoop) -> Job:
    return Job([1, 2, 3], Sampling(), loop)


def _counting_wakeups(loop: asyncio.AbstractEventLoop) -> list[int]:
    calls = [0]
    original = loop.call_soon_threadsafe

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    return calls


def test_pieces_listed_while_the_loop_is_busy_come_in_one_batch_with_one_wakeup() -> None:
    async def main() -> tuple[list[tuple[str, Any]], int]:
        loop = asyncio.get_running_loop()
        wakeups = _counting_wakeups(loop)
        job = _job(loop)

        def worker() -> None:
            for piece in PIECES:
                job.emit("piece", piece)
            job.emit("done", DONE)

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()  # the loop is blocked meanwhile, as a busy server's would be
        return await asyncio.wait_for(job.take(), 10), wakeups[0]

    events, wakeups = asyncio.run(main())
    assert events == [("piece", p) for p in PIECES] + [("done", DONE)]
    assert wakeups == 1


def test_a_worker_racing_the_loop_loses_no_piece_and_no_end() -> None:
    async def main() -> list[tuple[str, Any]]:
        loop = asyncio.get_running_loop()
        job = _job(loop)

        def worker() -> None:
            for i, piece in enumerate(PIECES):
                job.emit("piece", piece)
                if i % 7 == 0:
                    time.sleep(0.001)  # sometimes the loop catches up and waits for the next one
            job.emit("done", DONE)

        thread = threading.Thread(target=worker)
        thread.start()
        got: list[tuple[str, Any]] = []
        while not got or got[-1][0] != "done":
            batch = await asyncio.wait_for(job.take(), 10)
            assert batch  # take never returns empty-handed
            got += batch
        thread.join()
        return got

    for _ in range(20):
        assert asyncio.run(main()) == [("piece", p) for p in PIECES] + [("done", DONE)]


def test_a_stream_behind_its_worker_sends_the_waiting_pieces_as_one_chunk() -> None:
    async def main() -> list[bytes]:
        job = _job(asyncio.get_running_loop())
        for piece in PIECES:
            job.emit("piece", piece)
        job.emit("done", DONE)
        return [event async for event in _stream(job, Chunks("c1", 0, "alex", include_usage=True))]

    events = b"".join(asyncio.run(main())).decode().split("\n\n")
    data = [e.removeprefix("data: ") for e in events if e]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert contents == ["", "".join(PIECES), None]  # the role's empty content, the text, the end
    assert chunks[-1]["usage"]["completion_tokens"] == len(PIECES)
