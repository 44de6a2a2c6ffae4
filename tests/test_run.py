"""`twinlm run`: the whole pipeline in one command, every stage skipped where nothing it reads changed,
a killed training resumed (issue 12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from twinlm.config import BuildConfig, ExportConfig, IngestConfig, TrainConfig, TwinConfig
from twinlm.evaluate.settings import EvalConfig
from twinlm.models.tiny import ensure_tiny
from twinlm.workspace import init_workspace

CLEAN = {"low_quality_sessions": False, "conversation_enders": "off", "non_replies": False}
STAGES = ["ingest", "build", "train", "eval", "export"]


def make_workspace(ws: Path, *, check: bool = True) -> Path:
    """Four WhatsApp chats under ingest.paths, the tiny base model, 4 training steps, a small eval."""
    exports = ws / "exports"
    exports.mkdir(parents=True)
    for k, who in enumerate(("Mom", "Sam", "Priya", "Jo")):
        lines = []
        for day in range(1, 5):
            t, m = f"{day:02d}/03/2024, {8 + k:02d}", 10 + 4 * k
            lines.append(f"{t}:{m:02d} - {who}: {who} here. Did you eat dinner today?")
            lines.append(f"{t}:{m + 1:02d} - Alex Rivera: yes, pasta with tomato sauce again")
            lines.append(f"{t}:{m + 2:02d} - {who}: Good, call me on sunday please")
            lines.append(f"{t}:{m + 3:02d} - Alex Rivera: sure, sunday evening works for me")
        (exports / f"WhatsApp Chat with {who}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ensure_tiny(ws / "models" / "base")
    config = TwinConfig(
        me=["Alex Rivera"],
        ingest=IngestConfig(paths=["exports"], timezone="UTC"),
        build=BuildConfig(model=str(ws / "models" / "base"), eval_fraction=0.25, max_length=256, clean=CLEAN),
        train=TrainConfig(
            method="lora",
            max_steps=4,
            batch_tokens=256,
            grad_accum=1,
            learning_rate=1e-2,
            warmup_ratio=0.0,
            eval_every=2,
            save_every=2,
            log_every=1,
        ),
        eval=EvalConfig(max_replies=2, max_new_tokens=4, max_friends=1, checkpoints="final"),
        export=ExportConfig(type="q8_0", check=check),
    )
    init_workspace(ws, config)
    return ws


def run(ws: Path, named: str | None = None) -> tuple[dict[str, str], str, str]:
    """`twinlm run -w WS` in this process (`named`: WS as given, relative to the current folder): (what each
    stage did, stdout, stderr)."""
    from twinlm.cli import app

    result = CliRunner().invoke(app, ["run", "-w", named or str(ws)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.stderr[-3000:]
    state = orjson.loads((ws / ".twinlm" / "run-state.json").read_bytes())
    return state["last_run"], result.stdout, result.stderr


def mtimes(ws: Path) -> dict[str, int]:
    """Every file the stages write, with its modification time."""
    folders = [ws / "corpus.db", ws / "data", ws / "runs", ws / "reports", ws / "export"]
    found = {}
    for folder in folders:
        for path in [folder, *folder.rglob("*")] if folder.is_dir() else [folder]:
            if path.is_file():
                found[str(path)] = path.stat().st_mtime_ns
    return found


def set_yaml(ws: Path, section: str, key: str, value: object) -> None:
    path = ws / "twin.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    node = data
    for part in section.split("."):
        node = node[part]
    node[key] = value
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


def test_a_second_run_does_nothing_and_a_cleaning_rule_rebuilds_and_retrains(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    did, stdout, _ = run(ws)
    assert did == dict.fromkeys(STAGES, "ran")
    (first_run,) = [p.name for p in (ws / "runs").iterdir()]
    # The summary: where everything is, the eval headline, what to run next.
    for shown in ("Model:", ".gguf", "Modelfile", f"eval-{first_run}.html", "eval loss", "twinlm chat -w"):
        assert shown in stdout, stdout
    assert "twinlm serve -w" in stdout

    before = mtimes(ws)
    did, stdout, stderr = run(ws)
    assert did == dict.fromkeys(STAGES, "skipped")
    assert mtimes(ws) == before  # nothing written: no stage did any work
    assert [p.name for p in (ws / "runs").iterdir()] == [first_run]
    assert "ingest: the exports did not change" in stderr
    assert f"eval-{first_run}.html" in stdout
    # The same workspace named from inside it: nothing changed, nothing is done (the exports were
    # fingerprinted by where the workspace was named from, so all was ingested and built again).
    cwd = Path.cwd()
    os.chdir(ws)
    try:
        did, _, _ = run(ws, named=".")
    finally:
        os.chdir(cwd)
    assert did == dict.fromkeys(STAGES, "skipped")
    assert mtimes(ws) == before

    # One cleaning rule changes (Mom's messages are dropped as a bot's): the dataset is built again and a
    # new run trained, evaluated and exported; the exports are not read again.
    set_yaml(ws, "build.clean", "bots", ["Mom"])
    did, stdout, _ = run(ws)
    assert did == {"ingest": "skipped", "build": "ran", "train": "ran", "eval": "ran", "export": "ran"}
    runs = sorted(p.name for p in (ws / "runs").iterdir())
    assert len(runs) == 2 and first_run in runs
    (second,) = set(runs) - {first_run}
    assert (ws / "export" / second / "Modelfile").is_file()
    assert f"eval-{second}.html" in stdout


def test_a_changed_export_is_ingested_again(tmp_path: Path) -> None:
    from twinlm import run as state_of

    ws = make_workspace(tmp_path / "ws")
    config = TwinConfig.model_validate(yaml.safe_load((ws / "twin.yaml").read_text(encoding="utf-8")))
    before = state_of.fingerprints(ws, config, "ingest")
    with (ws / "exports" / "WhatsApp Chat with Jo.txt").open("a", encoding="utf-8") as f:
        f.write("05/03/2024, 11:00 - Jo: one more thing\n")
    assert state_of.fingerprints(ws, config, "ingest") != before
    # ...and an ingest setting counts too.
    changed = config.model_copy(update={"ingest": IngestConfig(paths=["exports"], timezone="Europe/Paris")})
    assert state_of.fingerprints(ws, changed, "ingest") != state_of.fingerprints(ws, config, "ingest")


def test_every_corpus_write_changes_the_build_fingerprint_even_one_that_changes_no_table_size(
    tmp_path: Path,
) -> None:
    """`twinlm run` skips the build while this fingerprint stays: an undo (a change marked undone, rows put
    back) and restored superseded messages change no table's size, and were not seen: the next run kept
    the old dataset and model, silently."""
    from twinlm import run as state_of
    from twinlm.cli import app
    from twinlm.corpus import changes
    from twinlm.corpus.db import Corpus

    ws = make_workspace(tmp_path / "ws")
    config = TwinConfig.model_validate(yaml.safe_load((ws / "twin.yaml").read_text(encoding="utf-8")))
    assert CliRunner().invoke(app, ["ingest", "-w", str(ws)]).exit_code == 0
    seen = [state_of.fingerprints(ws, config, "build")]
    with Corpus(ws / "corpus.db") as corpus:
        (chat,) = corpus.db.execute("SELECT min(id) FROM conversations").fetchone()
        changes.apply(corpus, "exclude", {"ids": [chat]}, "conversation", [chat], {"excluded": 1})
    seen.append(state_of.fingerprints(ws, config, "build"))
    with Corpus(ws / "corpus.db") as corpus:
        changes.undo(corpus)
    seen.append(state_of.fingerprints(ws, config, "build"))
    assert len(set(seen)) == len(seen), seen
    with Corpus(ws / "corpus.db") as corpus:  # marked as a newer export would mark them (not a write here)
        corpus.db.execute("UPDATE messages SET superseded_by_import = 1 WHERE id % 2 = 0")
    marked = state_of.fingerprints(ws, config, "build")
    with Corpus(ws / "corpus.db") as corpus:
        assert corpus.restore_superseded() > 0  # `twinlm superseded --restore`
    assert state_of.fingerprints(ws, config, "build") != marked


def test_a_search_index_made_or_brought_up_to_date_does_not_change_the_build_fingerprint(
    tmp_path: Path,
) -> None:
    """The review page's search makes and updates an index inside the corpus: not what a build reads, so
    the next `twinlm run` keeps its build."""
    from twinlm import run as state_of
    from twinlm.cli import app
    from twinlm.corpus.browse import update_search
    from twinlm.corpus.db import Corpus

    ws = make_workspace(tmp_path / "ws")
    config = TwinConfig.model_validate(yaml.safe_load((ws / "twin.yaml").read_text(encoding="utf-8")))
    assert CliRunner().invoke(app, ["ingest", "-w", str(ws)]).exit_code == 0
    before = state_of.fingerprints(ws, config, "build")
    with Corpus(ws / "corpus.db") as corpus:
        update_search(corpus)
        assert corpus.db.execute("SELECT count(*) FROM message_search").fetchone()[0] > 0
    assert state_of.fingerprints(ws, config, "build") == before


def test_the_ingest_fingerprint_is_the_same_however_the_workspace_is_named_or_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twinlm import run as state_of

    ws = make_workspace(tmp_path / "ws")
    config = TwinConfig.model_validate(yaml.safe_load((ws / "twin.yaml").read_text(encoding="utf-8")))
    absolute = state_of.fingerprints(ws, config, "ingest")
    monkeypatch.chdir(tmp_path)
    relative = state_of.fingerprints(Path("ws"), config, "ingest")
    monkeypatch.chdir(ws)
    inside = state_of.fingerprints(Path("."), config, "ingest")
    moved = ws.rename(tmp_path / "moved")
    assert absolute == relative == inside == state_of.fingerprints(moved, config, "ingest")


KILLER = """
import os, signal, sys
import twinlm.train.loop as loop

original = loop.train

def train(*args, on_step=None, **kwargs):
    def step(done, total, loss, speed):
        if on_step is not None:
            on_step(done, total, loss, speed)
        if done == 3:  # in the middle of step 3: checkpoint step-2 is saved, step 3 is not
            os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, on_step=step, **kwargs)

loop.train = train
from twinlm.cli import app
app(["run", "-w", sys.argv[1]])
"""


def test_a_run_killed_during_training_resumes(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", check=False)
    script = tmp_path / "kill_run.py"
    script.write_text(textwrap.dedent(KILLER), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script), str(ws)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    (name,) = [p.name for p in (ws / "runs").iterdir()]
    assert not (ws / "runs" / name / "final").exists()
    assert [p.name for p in (ws / "runs" / name / "checkpoints").iterdir()] == ["step-000002"]

    did, stdout, stderr = run(ws)
    assert did == dict(ingest="skipped", build="skipped", train="resumed", eval="ran", export="ran")
    assert f"Resuming run {name}" in stderr
    assert [p.name for p in (ws / "runs").iterdir()] == [name]  # the same run, not a new one
    steps = [orjson.loads(line) for line in (ws / "runs" / name / "metrics.jsonl").read_bytes().splitlines()]
    train_steps = [e["step"] for e in steps if e.get("split") == "train"]
    assert train_steps == [1, 2, 3, 4], steps  # step 3 done once, after the resume from step 2
    assert (ws / "runs" / name / "final").is_dir()
    assert f"export/{name}" in stdout


def test_nothing_to_ingest_is_one_line(tmp_path: Path) -> None:
    from twinlm.cli import app

    init_workspace(tmp_path / "ws", TwinConfig())
    result = CliRunner().invoke(app, ["run", "-w", str(tmp_path / "ws")])
    assert result.exit_code == 1
    assert "ingest.paths is empty" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_dataset_with_nothing_held_out_is_trained_and_exported_but_not_evaluated(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", check=False)
    set_yaml(ws, "build", "eval_fraction", 0)
    did, stdout, stderr = run(ws)
    assert did == dict(ingest="ran", build="ran", train="ran", eval="skipped", export="ran")
    assert "build.eval_fraction is 0" in " ".join(stderr.split())
    assert "Modelfile:" in stdout and not list((ws / "reports").glob("eval-*"))
