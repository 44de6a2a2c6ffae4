"""Evaluate fixtures: the tiny trained workspace (eval_helpers.make_workspace), built once per session,
copies of it for tests that change it, and `twinlm eval` run on it once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from eval_helpers import make_workspace
from tiny_workspace import invoke


@pytest.fixture(scope="session")
def trained_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built and trained once; tests that change it work on `copy_ws`."""
    return make_workspace(tmp_path_factory.mktemp("eval"))


@pytest.fixture
def copy_ws(trained_ws: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "ws"
    shutil.copytree(trained_ws, dest, ignore=shutil.ignore_patterns("reports"))
    return dest


@pytest.fixture(scope="session")
def evaluated(trained_ws: Path) -> dict:  # type: ignore[type-arg]
    """`twinlm eval --pick eval_loss` on the shared run, once: its JSON output."""
    code, stdout, stderr = invoke("eval", "-w", str(trained_ws), "--pick", "eval_loss", "--json")
    assert code == 0, stderr
    return json.loads(stdout)
