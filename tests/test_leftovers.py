"""What a killed ingest or build leaves is removed by the next run of the same command, which says so in one
line (issue 16, point 4); nothing else in the folder is touched. The leftovers here come from real kills
(SIGKILL) of real processes: an ingest mid-unpacking, and an atomic write mid-file."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from twinlm.cli import app
from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.errors import TwinError
from twinlm.files import TMP_SUFFIX, remove_leftovers
from twinlm.ingest import SCRATCH_PREFIX
from twinlm.prepare.build import BUILD_LOCK, build

from testdata import EXAMPLES
from tiny_tokenizers import build_tokenizer

TELEGRAM = EXAMPLES / "telegram" / "result.json"
WORDS = "the a we you see meet lunch train late soon ok sure maybe tomorrow tonight call later".split()


def big_whatsapp_zip(path: Path, lines: int = 300_000) -> Path:
    """A WhatsApp chat export zip large enough that ingest is still unpacking or reading it a while."""
    rng = random.Random(0)
    start = datetime(2023, 1, 1, 9, 0)
    text = "".join(
        f"{start + timedelta(minutes=i):%d/%m/%Y, %H:%M} - {'Alice' if i % 2 else 'Bob'}: "
        + " ".join(rng.choice(WORDS) for _ in range(8))
        + "\n"
        for i in range(lines)
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("WhatsApp Chat with Alice.txt", text)
    return path


def scratch_folders(ws: Path) -> list[Path]:
    return [p for p in ws.iterdir() if p.is_dir() and p.name.startswith(SCRATCH_PREFIX)]


def telegram_twin(tmp_path: Path) -> tuple[CliRunner, Path]:
    """A workspace (you: Bob) with the sample Telegram export ingested, and the runner that made it."""
    runner = CliRunner()
    ws = tmp_path / "twin"
    assert runner.invoke(app, ["init", str(ws), "--me", "Bob"]).exit_code == 0
    assert runner.invoke(app, ["ingest", "-w", str(ws), str(TELEGRAM)]).exit_code == 0
    return runner, ws


def build_command(ws: Path, tmp_path: Path) -> list[str]:
    """`twinlm build` of `ws` with the tiny ChatML tokenizer (made in `tmp_path`), everyone trained."""
    model = build_tokenizer("chatml", tmp_path / "tokenizer")
    return ["build", "-w", str(ws), "--model", str(model), "--targets", "everyone"]


def kill_when(process: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the process ended (status {process.returncode}) before it could be killed mid-run")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the process never reached the point to kill it at")
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_killed_ingest_leaves_its_scratch_folder_and_the_next_ingest_removes_it(tmp_path: Path) -> None:
    runner, ws = telegram_twin(tmp_path)
    with Corpus(ws / "corpus.db") as corpus:
        messages = corpus.count("messages")
    # The user's own files in the workspace, with names close to twinlm's temporary ones: never removed.
    (ws / ".ingest-notes").write_text("mine")
    (ws / "notes.txt").write_text("mine")

    archive = big_whatsapp_zip(tmp_path / "WhatsApp Chat - Alice.zip")
    process = subprocess.Popen(
        [sys.executable, "-m", "twinlm", "ingest", "-w", str(ws), str(archive)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Killed once the chat is unpacked into the scratch folder, while it is being read.
    kill_when(process, lambda: any(any(f.is_file() for f in d.rglob("*")) for d in scratch_folders(ws)))
    left = scratch_folders(ws)
    assert len(left) == 1 and any(left[0].rglob("*.txt"))

    again = runner.invoke(app, ["ingest", "-w", str(ws), str(TELEGRAM)])
    assert again.exit_code == 0, again.output
    said = [line for line in again.output.splitlines() if "interrupted ingest" in line]
    assert said == [f"Removed 1 temporary file(s) left by an interrupted ingest: {left[0].name}"]
    assert scratch_folders(ws) == []
    assert (ws / ".ingest-notes").read_text() == "mine" and (ws / "notes.txt").read_text() == "mine"
    with Corpus(ws / "corpus.db") as corpus:
        assert corpus.count("messages") == messages  # the killed import left nothing in the corpus
    quiet = runner.invoke(app, ["ingest", "-w", str(ws), str(TELEGRAM)])
    assert "interrupted ingest" not in quiet.output


KILLED_WRITE = """
import os, signal, sys
from pathlib import Path
from twinlm.files import atomic_open

with atomic_open(Path(sys.argv[1])) as f:
    f.write(b"half a dataset")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_atomic_write(target: Path) -> Path:
    """Run an atomic write of `target` in a process that is SIGKILLed mid-file; return what it left."""
    before = set(target.parent.iterdir()) if target.parent.exists() else set()
    process = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_WRITE), str(target)], check=False)
    assert process.returncode == -signal.SIGKILL
    (left,) = set(target.parent.iterdir()) - before
    assert left.name.endswith(TMP_SUFFIX) and not target.exists()
    return left


def test_killed_build_write_is_removed_by_the_next_build(tmp_path: Path) -> None:
    runner, ws = telegram_twin(tmp_path)
    command = build_command(ws, tmp_path)
    data = ws / "data"
    left = killed_atomic_write(data / "samples.jsonl")
    (data / "notes.txt").write_text("mine")
    (data / ".samples.jsonl.keep").write_text("mine")

    built = runner.invoke(app, command)
    assert built.exit_code == 0, built.stderr
    said = [line for line in built.stderr.splitlines() if "interrupted build" in line]
    assert said == [f"Removed 1 temporary file(s) left by an interrupted build: {left.name}"]
    assert not left.exists() and (data / "samples.jsonl").is_file()
    assert (data / "notes.txt").read_text() == "mine" and (data / ".samples.jsonl.keep").read_text() == "mine"
    assert not [p for p in data.iterdir() if p.name.endswith(TMP_SUFFIX)]
    again = runner.invoke(app, command)
    assert again.exit_code == 0 and "interrupted build" not in again.stderr


def test_a_running_build_keeps_its_files_from_a_second_build(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with open(data / BUILD_LOCK, "a") as lock, Corpus(tmp_path / "corpus.db") as corpus:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running build holds it
        planted = data / f".build.json.abcd1234{TMP_SUFFIX}"
        planted.write_text("{")
        config = TwinConfig(name="t", build=BuildConfig(model=str(tmp_path / "no-model")))
        with pytest.raises(TwinError, match="another `twinlm build` is writing"):
            build(config, corpus, data)
        assert planted.exists()


def test_remove_leftovers_takes_only_its_own_names(tmp_path: Path) -> None:
    mine = tmp_path / f".train.parquet.x1y2z3_4{TMP_SUFFIX}"
    mine.write_text("")
    kept = [
        tmp_path / "train.parquet",
        tmp_path / f"notes{TMP_SUFFIX}",  # not a temporary name atomic_open makes
        tmp_path / f".a.short{TMP_SUFFIX}",
    ]
    for path in kept:
        path.write_text("mine")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / f".link.abcdefgh{TMP_SUFFIX}").symlink_to(outside)
    assert remove_leftovers(tmp_path) == [mine]
    assert all(p.exists() for p in kept) and outside.is_dir()
    assert os.path.islink(tmp_path / f".link.abcdefgh{TMP_SUFFIX}")


def test_ctrl_c_during_a_build_says_what_data_holds_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import twinlm.prepare.build as build_module

    runner, ws = telegram_twin(tmp_path)
    command = build_command(ws, tmp_path)
    real = build_module.build

    def interrupted(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "build", interrupted)
    first = runner.invoke(app, command)
    monkeypatch.setattr(build_module, "build", real)
    assert runner.invoke(app, command).exit_code == 0
    monkeypatch.setattr(build_module, "build", interrupted)
    again = runner.invoke(app, command)
    data = ws / "data"
    assert (first.exit_code, again.exit_code) == (130, 130)
    assert [line for line in first.stderr.splitlines() if line.strip()] == [
        f"Interrupted: {data} holds no dataset; run the same command to build it."
    ]
    assert [line for line in again.stderr.splitlines() if line.strip()] == [
        f"Interrupted: {data} keeps the previous dataset whole; run the same command to build it."
    ]
    assert "Traceback" not in first.output + again.output


def test_ctrl_c_during_an_ingest_keeps_nothing_of_it_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, ws = telegram_twin(tmp_path)
    with Corpus(ws / "corpus.db") as corpus:
        before = corpus.count("messages"), corpus.count("conversations")
    real, added = Corpus.add, []

    def add_then_stop(self: Corpus, *args: object, **kwargs: object) -> object:
        added.append(1)
        if len(added) == 3:  # well into the import: two conversations written
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Corpus, "add", add_then_stop)
    stopped = runner.invoke(app, ["ingest", "-w", str(ws), str(EXAMPLES)])
    assert stopped.exit_code == 130 and len(added) == 3
    assert [line for line in stopped.stderr.splitlines() if line.strip()] == [
        "Interrupted: nothing of this ingest was kept (the corpus is as it was); run the same command to "
        "ingest."
    ]
    with Corpus(ws / "corpus.db") as corpus:
        assert (corpus.count("messages"), corpus.count("conversations")) == before


def test_a_full_disk_is_one_line_and_leaves_no_half_written_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Models and datasets are large: a disk that fills up during a build or an ingest is the user's to fix,
    said in one line (not a traceback), with the previous dataset and corpus as they were."""
    import errno
    import sqlite3

    from twinlm.prepare.stream import Spill

    runner, ws = telegram_twin(tmp_path)
    command = build_command(ws, tmp_path)
    assert runner.invoke(app, command).exit_code == 0
    data = ws / "data"
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}

    staged = data / ".train.parquet.abcd1234.twinlm-tmp"

    def full(self: Spill, *args: object, **kwargs: object) -> object:
        raise OSError(errno.ENOSPC, "No space left on device", str(staged))

    monkeypatch.setattr(Spill, "write", full)
    built = runner.invoke(app, command)
    assert built.exit_code == 1 and isinstance(built.exception, SystemExit), built.output
    assert [line for line in built.stderr.splitlines() if line.strip()] == [
        f"error: the disk is full while writing {staged}: free some space and run the same command again"
    ]
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()} == before

    real = Corpus.add

    def add_until_full(self: Corpus, *args: object, **kwargs: object) -> object:
        raise sqlite3.OperationalError("database or disk is full")

    with Corpus(ws / "corpus.db") as corpus:
        messages = corpus.count("messages")
    monkeypatch.setattr(Corpus, "add", add_until_full)
    ingested = runner.invoke(app, ["ingest", "-w", str(ws), str(EXAMPLES)])
    monkeypatch.setattr(Corpus, "add", real)
    assert ingested.exit_code == 1 and isinstance(ingested.exception, SystemExit), ingested.output
    said = [line for line in ingested.stderr.splitlines() if line.startswith("error:")]
    assert said == [
        "error: the disk is full while writing the corpus: free some space and run the same command again"
    ]
    with Corpus(ws / "corpus.db") as corpus:
        assert corpus.count("messages") == messages


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device", "export/r/merged/.model.safetensors.tmp"),
        OSError(122, "Disk quota exceeded"),
        RuntimeError(  # safetensors
            "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
            'message: "No space left on device" })'
        ),
        OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"),  # pyarrow
    ],
    ids=["ENOSPC", "EDQUOT", "safetensors", "pyarrow"],
)
def test_full_disk_errors_from_python_and_native_writers_are_recognised(error: Exception) -> None:
    from twinlm.errors import disk_full

    found = disk_full(error)
    assert found is not None and str(found).startswith("the disk is full")
    assert disk_full(OSError(13, "Permission denied", "x")) is None
    assert disk_full(RuntimeError("CUDA out of memory")) is None
