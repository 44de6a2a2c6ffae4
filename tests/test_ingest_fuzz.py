"""Property test: truncated and mutated exports of every format never leave a partial import.

Each parser has its own fuzz test (only ExportError may escape); this one goes through `ingest`
into a corpus that already holds data: a mutated file either imports, or fails with a one-line
error and the corpus is exactly as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions

from testdata import DOCUMENTS, EXAMPLES, FIXTURES

OPTIONS = ParseOptions(timezone="UTC")
SAMPLES = {
    "chatgpt": EXAMPLES / "chatgpt" / "conversations.json",
    "discord": next((EXAMPLES / "discord").glob("*.json")),
    "telegram": EXAMPLES / "telegram" / "result.json",
    "whatsapp": EXAMPLES / "whatsapp" / "WhatsApp Chat with Mom.txt",
    "messenger": next((EXAMPLES / "messenger").rglob("message_1.json")),
    "documents": DOCUMENTS / "climbing-notes.md",
    "jsonl": next((FIXTURES / "jsonl").glob("*.jsonl")),
}


def snapshot(corpus: Corpus) -> tuple[list[tuple], list[tuple]]:
    return (
        corpus.db.execute("SELECT * FROM messages ORDER BY id").fetchall(),
        corpus.db.execute("SELECT * FROM conversations ORDER BY id").fetchall(),
    )


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    cut = draw(st.integers(0, len(data)))
    out = bytearray(data[:cut] if draw(st.booleans()) else data)
    for _ in range(draw(st.integers(0, 4))):
        if out:
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    return bytes(out)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus with the examples already in it, copied for each example run."""
    db = tmp_path_factory.mktemp("seed") / "corpus.db"
    with Corpus(db) as corpus:
        assert not ingest([EXAMPLES], corpus, OPTIONS, documents=[DOCUMENTS]).failed
        corpus.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_mutated_export_imports_whole_or_not_at_all(fmt: str, seeded: Path, tmp_path_factory) -> None:
    original = SAMPLES[fmt].read_bytes()

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=mutations(original))
    def check(data: bytes) -> None:
        work = tmp_path_factory.mktemp(fmt)
        db = work / "corpus.db"
        db.write_bytes(seeded.read_bytes())
        target = work / SAMPLES[fmt].name
        target.write_bytes(data)
        with Corpus(db) as corpus:
            before = snapshot(corpus)
            as_document = fmt == "documents"
            result = ingest(
                [] if as_document else [target], corpus, OPTIONS, documents=[target] if as_document else []
            )
            if result.failed:
                (failed,) = result.failed
                assert failed.error and "\n" not in failed.error and str(target) in failed.error
                assert snapshot(corpus) == before
            else:
                assert corpus.count("messages") >= len(before[0])

    check()
