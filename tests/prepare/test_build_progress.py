"""The build's progress: messages read of those it reads. The total must be the number of rows the build
actually reads (exclusions, superseded rows, a source filter, streamed chats), or a bar stops short of
its end or runs past it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.identities import resolver
from twinlm.prepare import build as build_module
from twinlm.prepare.build import build
from twinlm.prepare.select import Reading, chats

ME = ["Alex Rivera", "Alex"]


def leave_some_out(corpus: Corpus) -> None:
    """A conversation and a message excluded by the user, two messages gone from a newer export."""
    corpus.db.execute("UPDATE conversations SET excluded = 1 WHERE source = 'messenger'")
    corpus.db.execute("UPDATE messages SET excluded = 1 WHERE text = 'see ya'")
    corpus.db.execute(
        "UPDATE messages SET superseded_by_import = first_import WHERE id IN "
        "(SELECT id FROM messages WHERE source = 'telegram' ORDER BY id LIMIT 2)"
    )


def lines_read(corpus: Corpus, sources: list[str] | None) -> int:
    """The rows a read takes, counted from the lines it gives (not from its Reading)."""
    found = chats(corpus, resolver(TwinConfig(me=ME)), Counter(), sources)
    return sum(len(list(chat.lines)) for chat in found)


@pytest.mark.parametrize("left_out", [False, True], ids=["whole corpus", "exclusions"])
@pytest.mark.parametrize("sources", [None, ["discord", "telegram"]], ids=["all sources", "two sources"])
def test_a_read_counts_every_row_it_reads_against_the_total_it_announced(
    corpus: Corpus, left_out: bool, sources: list[str] | None
) -> None:
    if left_out:
        leave_some_out(corpus)
    expected = lines_read(corpus, sources)
    whole = corpus.count("messages")
    assert 0 < expected < whole if (left_out or sources) else expected == whole
    reading = Reading()
    found = chats(corpus, resolver(TwinConfig(me=ME)), Counter(), sources, stream_over=2, reading=reading)
    first = next(found)
    assert reading.total == expected  # known before the first chat is read
    for chat in [first, *found]:
        for _ in chat.lines:
            pass
    assert (reading.done, reading.total) == (expected, expected)


def test_the_build_tells_its_progress_up_to_the_total(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leave_some_out(corpus)
    monkeypatch.setattr(build_module, "STREAM_OVER", 3)  # long chats come streamed, read as they are used
    told: list[tuple[int, int]] = []
    settings = BuildConfig(model=str(tokenizer_dir("chatml")), sources=["discord", "telegram", "documents"])
    build(TwinConfig(me=ME, build=settings), corpus, tmp_path / "data", on_progress=lambda *p: told.append(p))
    expected = lines_read(corpus, ["discord", "telegram", "documents"])
    assert len(told) >= 2
    assert {total for _, total in told} == {expected}
    read = [done for done, _ in told]
    assert read == sorted(read) and 0 < read[0] < expected
    assert told[-1] == (expected, expected)


@pytest.mark.parametrize("width", [100, 60])
def test_the_bar_draws_the_numbers_first_and_crops_only_the_stage(
    tokenizer_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    """The last frame `twinlm build` draws (on a terminal `width` columns wide): every message read of the
    total, and the stage's name, cropped with an ellipsis where the line is too narrow for it."""
    import io
    import re

    from rich.console import Console
    from typer.testing import CliRunner

    import twinlm.cli.data as data_cli
    from twinlm.cli import app

    from testdata import EXAMPLES

    runner = CliRunner()
    ws = tmp_path / "twin"
    assert runner.invoke(app, ["init", str(ws), "--me", "Alex Rivera"]).exit_code == 0
    assert runner.invoke(app, ["ingest", "-w", str(ws), str(EXAMPLES / "telegram")]).exit_code == 0
    with Corpus(ws / "corpus.db") as corpus:
        total = lines_read(corpus, None)
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=width, color_system=None, legacy_windows=False)
    monkeypatch.setattr(data_cli, "err", terminal)
    built = runner.invoke(app, ["build", "-w", str(ws), "--model", str(tokenizer_dir("chatml"))])
    assert built.exit_code == 0, built.output
    # Frames are separated by cursor moves; the bar's last frame before the transient display is cleared:
    frames = [f for f in re.split(r"\x1b\[[0-9;?]*[A-Za-z]|\r", screen.getvalue()) if "messages" in f]
    last = frames[-1].rstrip()
    assert f"{total:,}/{total:,} messages" in last
    assert len(last) <= width
    if width >= 100:
        assert re.search(r"\d:\d\d:\d\d Writing the dataset folder$", last)  # the last stage, whole
    else:
        assert re.search(r"\d:\d\d:\d\d W…$", last)  # the stage's name cropped, the numbers whole
