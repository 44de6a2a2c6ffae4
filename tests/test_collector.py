"""The cycle collector is paused around ingest and build (their millions of short-lived tuples) and put
back as it was afterwards, also when they fail."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

import twinlm.ingest as ingest_module
from twinlm.collector import collector_paused
from twinlm.corpus.db import Corpus
from twinlm.model import ParseOptions


def test_paused_inside_and_back_on_after_also_on_error(collector_on: None) -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("a failed build")
    assert gc.isenabled()


def test_a_collector_the_caller_turned_off_stays_off(collector_on: None) -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_cyclic_garbage_made_while_paused_is_collected_after(collector_on: None) -> None:
    class Node:
        pass

    alive = []
    with collector_paused():
        for _ in range(1000):
            node = Node()
            node.me = node  # type: ignore[attr-defined]
            alive.append(weakref.ref(node))
        del node
        assert all(ref() is not None for ref in alive)  # garbage, but no collection while paused
    assert all(ref() is None for ref in alive)


def test_ingest_runs_with_the_collector_paused_and_puts_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collector_on: None
) -> None:
    seen: list[bool] = []
    real = ingest_module._ingest

    def watched(*args: object, **kwargs: object) -> object:
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "_ingest", watched)
    export = tmp_path / "result.json"
    export.write_text('{"name": "Sam", "type": "personal_chat", "id": 1, "messages": []}', encoding="utf-8")
    with Corpus(tmp_path / "corpus.db") as corpus:
        ingest_module.ingest([export], corpus, ParseOptions(timezone="UTC"))
    assert seen == [False]
    assert gc.isenabled()
