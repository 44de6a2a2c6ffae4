"""Tables never cut the names and ids a user copies into twin.yaml, however narrow the terminal
(issue 12, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from testdata import EXAMPLES


def invoke(*args: str) -> str:
    from twinlm.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("width", [60, 100])
def test_people_shows_every_name_and_id_whole(
    tmp_path: Path, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twinlm.cli import out

    ws = tmp_path / "ws"
    invoke("init", str(ws), "--me", "Alex Rivera")
    invoke("ingest", "-w", str(ws), str(EXAMPLES))
    speakers = json.loads(invoke("people", "-w", str(ws), "--json"))
    assert any(len(s["author_id"]) >= 15 for s in speakers)  # Discord's long ids are among them
    monkeypatch.setattr(out, "width", width)
    shown = invoke("people", "-w", str(ws))
    assert "…" not in shown
    for speaker in speakers:
        assert speaker["author_id"] in shown, (speaker, shown)
        assert speaker["name"] in shown, (speaker, shown)
