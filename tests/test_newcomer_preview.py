"""Preview and show mark trained text without colour too (piped, as here: no terminal), with a legend;
a session split into several pieces shows each under its own id (issue 12, item 6)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from test_run import make_workspace
from typer.testing import CliRunner


def invoke(*args: str) -> str:
    from twinlm.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_preview_and_show_mark_trained_text_without_colour(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    config = yaml.safe_load((ws / "twin.yaml").read_text(encoding="utf-8"))
    config["build"]["max_length"] = 128  # each session (~170 tokens) is split into pieces
    (ws / "twin.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    invoke("ingest", "-w", str(ws))
    stdout = invoke("build", "-w", str(ws), "--preview", "4")
    assert "\x1b[" not in stdout  # no colour here: the markers are all there is
    assert "Trained text is green and between ⟦ ⟧" in stdout
    assert "⟦" in stdout and "⟧" in stdout
    assert "pasta with tomato sauce" in stdout.split("⟦", 1)[1]  # the reply is what is marked
    ids = re.findall(r"\S+#piece-\d+/\d+", stdout)
    assert len(ids) == 4 and len(set(ids)) == 4, stdout  # each piece under its own id
    first = ids[0].rsplit("#piece-", 1)[0]
    assert ids[:2] == [f"{first}#piece-1/2", f"{first}#piece-2/2"]

    shown = invoke("show", "1", "-w", str(ws))
    assert "\x1b[" not in shown
    assert "▶ trained" in shown and "✗ excluded" in shown  # the legend, in words and markers
    trained = [line for line in shown.splitlines() if line.startswith("▶")]
    assert trained and all("Alex Rivera:" in line for line in trained)
