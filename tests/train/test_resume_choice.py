"""Which run `twinlm train --resume` continues without --name (issue 14): the newest LOCAL run, even when a
hosted run (runs/NAME/hosted.json, no config.json, made by `--backend mistral-api`) is newer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from twinlm.errors import TwinError
from twinlm.train.run import run_dir


def _run(runs: Path, name: str, record: str, when: int) -> Path:
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / record).write_text("{}\n")
    os.utime(folder, (when, when))  # the folder's time orders the runs
    return folder


def test_resume_picks_the_newest_local_run_over_a_newer_hosted_one(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run(runs, "old-local", "config.json", 1_000)
    local = _run(runs, "local", "config.json", 2_000)
    _run(runs, "hosted", "hosted.json", 3_000)  # the newest folder
    # Before: "nothing to resume" (the newest folder has no config.json).
    assert run_dir(tmp_path, None, resume=True) == local


def test_a_half_started_local_run_is_still_not_skipped(tmp_path: Path) -> None:
    # A newer local folder without config.json (stopped before training started) is the latest run, as
    # before: --resume says there is nothing to resume rather than continuing an older run.
    runs = tmp_path / "runs"
    _run(runs, "local", "config.json", 1_000)
    _run(runs, "hosted", "hosted.json", 3_000)
    (runs / "early").mkdir()
    os.utime(runs / "early", (2_000, 2_000))
    with pytest.raises(TwinError, match="nothing to resume"):
        run_dir(tmp_path, None, resume=True)


def test_only_hosted_runs_is_nothing_to_resume_and_a_named_one_points_at_its_backend(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run(runs, "hosted", "hosted.json", 3_000)
    with pytest.raises(TwinError, match="nothing to resume in"):
        run_dir(tmp_path, None, resume=True)
    with pytest.raises(TwinError, match="a hosted run: twinlm train --backend mistral-api --resume"):
        run_dir(tmp_path, "hosted", resume=True)
