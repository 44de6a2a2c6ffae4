"""The streaming build's parts (issue 18): long chats read row by row, the split from metadata only,
the temporary files gone after a build or a failed one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.errors import TwinError
from twinlm.identities import resolver
from twinlm.model import Conversation, Message
from twinlm.prepare.build import build
from twinlm.prepare.select import chats
from twinlm.prepare.sessions import iter_by_gap, split_by_gap


def message(mid: str, minute: int | None, author: str = "Sam") -> Message:
    when = None if minute is None else datetime(2024, 6, 1, 12, minute, tzinfo=UTC)
    return Message(id=mid, author_id=author, author_name=author, timestamp=when, text=mid)


def add(corpus: Corpus, chat: str, *messages: Message) -> None:
    with corpus.importing(["test"]) as import_id, corpus.file_savepoint():
        corpus.add(Conversation("telegram", chat, chat, "chat", tuple(messages)), import_id)


def test_a_long_chat_in_time_order_is_streamed_and_one_out_of_order_is_sorted(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        add(corpus, "a-short", *(message(f"s{i}", i) for i in range(3)))
        add(corpus, "b-ordered", *(message(f"o{i}", i) for i in range(10)))
        add(corpus, "c-late", *(message(f"l{i}", i + 1) for i in range(8)))
        add(corpus, "c-late", message("l-first", 0))  # an older message ingested last: rows out of order
        whole = {c.key: list(c.lines) for c in chats(corpus, resolver(TwinConfig()), Counter())}
        streamed = {}
        for chat in chats(corpus, resolver(TwinConfig()), Counter(), stream_over=4):
            streamed[chat.key] = (isinstance(chat.lines, tuple), list(chat.lines))
    assert {key: lines for key, (_, lines) in streamed.items()} == whole
    assert [line.text for line in whole["telegram:c-late"]][:2] == ["l-first", "l0"]
    assert streamed["telegram:a-short"][0]  # short: held as before
    assert not streamed["telegram:b-ordered"][0]  # long and in order: read as used
    assert streamed["telegram:c-late"][0]  # long but out of order: sorted whole


def test_sessions_made_while_reading_are_the_sessions_of_the_whole_chat() -> None:
    class Timed:
        def __init__(self, ts: int | None) -> None:
            self.timestamp_ms = ts

    lines = [Timed(t) for t in (0, 1000, None, 10_000_000, 10_000_001, None, 50_000_000)]
    assert list(iter_by_gap(iter(lines), 30)) == split_by_gap(lines, 30)
    assert [len(s) for s in split_by_gap(lines, 30)] == [3, 3, 1]


def test_a_failed_build_leaves_no_temporary_file_and_keeps_the_old_dataset(
    tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        add(corpus, "chat", message("hello there", 1), message("climbing " * 200, 2, "Me"))
        out = tmp_path / "data"
        out.mkdir()
        (out / "train.parquet").write_bytes(b"the old one")
        # The one trained turn is longer than max_length: no training samples, an error.
        config = TwinConfig(me=["Me"], build=BuildConfig(model=str(tokenizer_dir("chatml")), max_length=64))
        with pytest.raises(TwinError, match="no training samples"):
            build(config, corpus, out)
    assert (out / "train.parquet").read_bytes() == b"the old one"
    assert sorted(p.name for p in out.iterdir() if p.name != ".build.lock") == ["train.parquet"]


def test_ctrl_c_during_rendering_closes_the_corpus_reads_before_the_corpus_closes(
    tokenizer_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C lands in rendering while the chat reader waits at a yield. The reader's clean-up (it puts the
    database's cache size back) must run while the corpus is open: left to the garbage collector, it ran
    after the corpus closed and `twinlm build` printed "Exception ignored ... Cannot operate on a closed
    database" with a traceback under the interrupted build."""
    import gc
    import sys

    import twinlm.prepare.build as build_module

    real = build_module.render_arrays

    def interrupted(samples: object, *args: object, **kwargs: object) -> object:
        for n, row in enumerate(real(samples, *args, **kwargs)):
            if n == 1:
                raise KeyboardInterrupt
            yield row

    monkeypatch.setattr(build_module, "render_arrays", interrupted)
    unraisable: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda found: unraisable.append(repr(found.exc_value)))
    out = tmp_path / "data"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"the old one")
    config = TwinConfig(me=["Me"], build=BuildConfig(model=str(tokenizer_dir("chatml"))))
    with Corpus(tmp_path / "corpus.db") as corpus:
        for chat in ("a", "b", "c", "d"):
            said = [
                message(f"{chat}: message {i} about the climbing trip", i, "Me" if i % 2 else "Sam")
                for i in range(6)
            ]
            add(corpus, chat, *said)
    # As in `twinlm build`: the interrupt leaves the corpus's `with` and is handled after it closed.
    with pytest.raises(KeyboardInterrupt) as caught, Corpus(tmp_path / "corpus.db") as corpus:
        build(config, corpus, out, render_batch_size=1)  # a row per sample: the reader waits mid-corpus
    del caught
    gc.collect()
    assert unraisable == []
    assert (out / "train.parquet").read_bytes() == b"the old one"
    assert sorted(p.name for p in out.iterdir() if p.name != ".build.lock") == ["train.parquet"]


def test_a_build_runs_with_the_cycle_collector_paused_and_puts_it_back(
    tokenizer_dir: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    collector_on: None,
) -> None:
    import gc

    import twinlm.prepare.build as build_module

    seen: list[bool] = []
    real = build_module.render_arrays

    def watched(*args: object, **kwargs: object) -> Iterator[object]:
        seen.append(gc.isenabled())
        yield from real(*args, **kwargs)

    monkeypatch.setattr(build_module, "render_arrays", watched)
    with Corpus(tmp_path / "corpus.db") as corpus:
        said = ["are you coming climbing on saturday?", "yes, I will bring the ropes and some snacks"] * 3
        add(corpus, "chat", *(message(text, i, ["Sam", "Me"][i % 2]) for i, text in enumerate(said)))
        config = TwinConfig(me=["Me"], build=BuildConfig(model=str(tokenizer_dir("chatml"))))
        build_module.build(config, corpus, tmp_path / "data")
        assert seen == [False]
        assert gc.isenabled()
        # A failing build puts it back too.
        failing = TwinConfig(me=["Nobody"], build=BuildConfig(model=str(tokenizer_dir("chatml"))))
        with pytest.raises(TwinError):
            build_module.build(failing, corpus, tmp_path / "data2")
        assert seen == [False, False]
        assert gc.isenabled()
