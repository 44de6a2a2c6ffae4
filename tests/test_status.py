"""`twinlm status`: what is ingested, what the dataset was built with, which runs exist and which can
resume, what was exported, read from the workspace without writing to it (issue 12, item 6)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_run import make_workspace
from typer.testing import CliRunner

from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.prepare.build import build
from twinlm.workspace import open_workspace


def status(ws: Path, *extra: str) -> str:
    from twinlm.cli import app

    result = CliRunner().invoke(app, ["status", "-w", str(ws), *extra])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_status_of_a_new_workspace_says_what_to_do_next(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    shown = status(ws)
    assert "Ingested: nothing yet. Next: twinlm ingest" in shown
    assert "Dataset: not built. Next: twinlm build" in shown
    assert "Runs: none" in shown and "Exported: nothing yet" in shown
    assert not (ws / "corpus.db").exists()  # status created nothing


def test_status_lists_corpus_dataset_runs_that_can_resume_and_exports(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    config = open_workspace(ws).config
    with Corpus(ws / "corpus.db") as corpus:
        assert not ingest([ws / "exports"], corpus, ParseOptions(timezone="UTC")).failed
        build(config, corpus, ws / "data")
    # A run killed after its second checkpoint, and a finished one with a pick and an export.
    killed = ws / "runs" / "killed"
    (killed / "checkpoints" / "step-000002").mkdir(parents=True)
    (killed / "checkpoints" / "step-000002" / "state.json").write_text("{}")
    (killed / "config.json").write_text(json.dumps({"config": {"train": {"method": "lora"}}}))
    done = ws / "runs" / "done"
    (done / "final").mkdir(parents=True)
    (done / "config.json").write_text(json.dumps({"config": {"train": {"method": "full"}}}))
    (done / "picked.json").write_text(json.dumps({"twinlm_pick": 1, "checkpoint": "step-4"}))
    (ws / "export" / "done").mkdir(parents=True)
    (ws / "export" / "done" / "export.json").write_text(
        json.dumps(
            {"status": "ok", "type": "q8_0", "checkpoint": "step-4", "files": {"export/done/Modelfile": 9}}
        )
    )
    os.utime(killed / "config.json", (1_000_000, 1_000_000))  # runs are listed oldest first
    before = (ws / "corpus.db").stat().st_mtime_ns

    shown = " ".join(status(ws).split())
    assert "Ingested: whatsapp 4 chats, 64 messages" in shown
    assert "Dataset: built with model" in shown and "targets auto" in shown and "train /" in shown
    assert (
        f"Run killed (lora): stopped (step-2); resume: twinlm train -w {ws} --name killed --resume" in shown
    )
    assert "Run done (full): finished; picked for export: step-4" in shown
    assert "Exported done (step-4, q8_0): ok; export/done/Modelfile" in shown
    assert (ws / "corpus.db").stat().st_mtime_ns == before

    data = json.loads(status(ws, "--json"))
    assert data["corpus"]["sources"]["whatsapp"]["messages"] == 64
    assert [(r["name"], r["finished"]) for r in data["runs"]] == [("killed", False), ("done", True)]
    assert data["runs"][0]["resume"].endswith("--name killed --resume")
