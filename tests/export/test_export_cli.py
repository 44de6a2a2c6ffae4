"""`twinlm export` (and merge / gguf / ollama) as a user runs it: a tiny workspace built and trained a few
steps exports to a merged folder, a GGUF, a Modelfile and export.json with parity figures; the same
command again does no work; a failed parity check exits 1 and is recorded; bad input (an unknown run, a
missing base model, an unsupported architecture, an interrupted export, a full disk) is one line each and
leaves no half-written file under a final name."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from tools_required import require
from typer.testing import CliRunner

from twinlm.config import BuildConfig, TrainConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.models.tiny import ensure_tiny
from twinlm.prepare.build import build
from twinlm.workspace import init_workspace

TWINLM = Path(sys.executable).parent / "twinlm"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
CLEAN = {"low_quality_sessions": False, "conversation_enders": "off", "non_replies": False}
RUN = "r"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TWINLM), *args], capture_output=True, text=True, timeout=600, env=ENV)


def make_trained_workspace(root: Path) -> Path:
    """A workspace with a tiny Mistral-architecture base, a built dataset and run `r` (LoRA, 4 steps)."""
    from twinlm.train.loop import train

    exports = root / "exports"
    exports.mkdir(parents=True)
    for k, who in enumerate(("Mom", "Sam", "Priya", "Jo")):
        lines = []
        for day in range(1, 4):
            t, m = f"{day:02d}/03/2024, {8 + k:02d}", 10 + 4 * k
            lines.append(f"{t}:{m:02d} - {who}: {who} here. Did you eat dinner today?")
            lines.append(f"{t}:{m + 1:02d} - Alex Rivera: yes, pasta with tomato sauce again 🍝")
            lines.append(f"{t}:{m + 2:02d} - {who}: Good, call me on sunday please")
            lines.append(f"{t}:{m + 3:02d} - Alex Rivera: sure, sunday evening works for me")
        (exports / f"WhatsApp Chat with {who}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ws = root / "ws"
    model_dir = ws / "models" / "base"
    ensure_tiny(model_dir)
    steps = 4
    config = TwinConfig(
        me=["Alex Rivera"],
        build=BuildConfig(model=str(model_dir), eval_fraction=0.25, max_length=256, clean=CLEAN),
        train=TrainConfig(
            method="lora",
            max_steps=steps,
            batch_tokens=256,
            grad_accum=1,
            learning_rate=1e-2,
            warmup_ratio=0.0,
            eval_every=steps,
            save_every=2,
            log_every=1,
        ),
    )
    init_workspace(ws, config)
    with Corpus(ws / "corpus.db") as corpus:
        assert not ingest([exports], corpus, ParseOptions(timezone="UTC")).failed
        build(config, corpus, ws / "data")
    train(config, ws, RUN)
    return ws


def relocated_copy(ws: Path, dest: Path) -> Path:
    """A copy of the workspace whose run points at the copy's own base model (so it can be broken)."""
    shutil.copytree(ws, dest, ignore=shutil.ignore_patterns("export"))
    old, new = str(ws / "models" / "base"), str(dest / "models" / "base")
    for path in [*dest.glob("runs/*/config.json"), *dest.glob("runs/*/**/adapter_config.json")]:
        path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_trained_workspace(tmp_path_factory.mktemp("export-cli"))


@pytest.fixture(autouse=True)
def _llama_cpp() -> None:
    require("llama_cpp")


def invoke(*args: str) -> tuple[int, str, str]:
    """The CLI in this process (for tests that patch a function on the way)."""
    from twinlm.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def error_lines(stderr: str) -> list[str]:
    """The error lines (the lines about each step done are not errors); never a traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error")]


# --- end to end -------------------------------------------------------------------------------------


def test_export_end_to_end_then_nothing_to_do(trained: Path) -> None:
    first = cli("export", "-w", str(trained), "--type", "f16")
    assert first.returncode == 0, first.stderr
    folder = trained / "export" / RUN
    gguf, modelfile, merged = folder / f"{RUN}-f16.gguf", folder / "Modelfile", folder / "merged"
    assert gguf.is_file() and gguf.read_bytes()[:4] == b"GGUF"
    assert modelfile.read_text(encoding="utf-8").startswith("# Ollama Modelfile")
    assert f"FROM ./{gguf.name}" in modelfile.read_text(encoding="utf-8")
    assert (merged / "twinlm-export.json").is_file() and any(merged.glob("*.safetensors"))
    summary = orjson.loads((folder / "export.json").read_bytes())
    assert summary["status"] == "ok" and summary["problems"] == [] and summary["type"] == "f16"
    parity = summary["parity"]
    assert parity["top1_agreement"] == 1.0 and parity["strings_identical"] == parity["strings"] > 0
    assert parity["stops_at_end_of_turn"] is True and parity["end_of_turn"] == "<|im_end|>"
    # The summary: files with sizes, parity figures, the commands to run it.
    assert "Parity with llama.cpp: ok" in first.stdout and "top-1 100.0%" in first.stdout
    assert f"export/{RUN}/{gguf.name}" in first.stdout
    assert "ollama create r-alex-rivera -f" in first.stdout and "ollama run r-alex-rivera" in first.stdout
    assert f"llama-server --jinja -m {gguf}" in first.stdout
    for step in ("merge:", "gguf:", "modelfile:", "check:"):
        assert step in first.stderr

    mtimes = {p: p.stat().st_mtime_ns for p in [gguf, modelfile, *merged.iterdir()]}
    time.sleep(0.05)
    again = cli("export", "-w", str(trained), "--type", "f16", "--json")
    assert again.returncode == 0, again.stderr
    result = orjson.loads(again.stdout)
    assert result["done"] == [] and result["skipped"] == ["merge", "gguf", "modelfile", "check"]
    assert result["status"] == "ok" and result["parity"]["top1_agreement"] == 1.0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing rewritten
    plain = cli("export", "-w", str(trained), "--type", "f16")
    assert "Nothing changed since the last export" in plain.stdout and "skipped" in plain.stderr


def test_verbs_stop_after_their_step_and_reuse_what_is_there(trained: Path) -> None:
    """`twinlm gguf` with another type reuses the merge; `twinlm ollama` only writes the Modelfile."""
    code, stdout, stderr = invoke("gguf", RUN, "-w", str(trained), "--type", "q8_0", "--json")
    assert code == 0, stderr
    result = orjson.loads(stdout)
    assert result["skipped"] == ["merge"] and result["done"] == ["gguf"]
    assert (trained / "export" / RUN / f"{RUN}-q8_0.gguf").is_file()
    code, stdout, stderr = invoke("ollama", "-w", str(trained), "--type", "q8_0", "--as", "alex rivera")
    assert code == 0, stderr
    assert "ollama create r-alex-rivera" in stdout and "Parity" not in stdout
    code, _, stderr = invoke("ollama", "-w", str(trained), "--type", "q8_0", "--as", "Nobody")
    assert code == 1
    assert error_lines(stderr) == [
        "error: --as 'Nobody': the run has no such persona (personas: 'Alex Rivera')"
    ]


def test_merge_of_a_checkpoint_into_another_folder(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged-step-2"
    code, stdout, stderr = invoke("merge", "-w", str(trained), "--checkpoint", "step-2", "--out", str(out))
    assert code == 0, stderr
    assert orjson.loads((out / "twinlm-export.json").read_bytes())["step"] == 2
    assert str(out) in stdout


def test_a_failed_parity_check_is_recorded_and_exits_1(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twinlm.export import parity

    ws = relocated_copy(trained, tmp_path / "ws")

    def broken(model_dir: Path, gguf_path: Path, **kwargs: object) -> parity.ParityReport:
        return parity.ParityReport(
            gguf=str(gguf_path), qtype="q8_0", problems=["tokenization differs on 'hi': token 0 ..."]
        )

    monkeypatch.setattr(parity, "check_parity", broken)
    for attempt in range(2):  # the same export again: still failed, never quietly kept
        code, stdout, stderr = invoke("export", "-w", str(ws), "--type", "q8_0")
        assert code == 1, (attempt, stdout, stderr)
        assert "Parity with llama.cpp FAILED" in stderr and "tokenization differs on 'hi'" in stderr
        summary = orjson.loads((ws / "export" / RUN / "export.json").read_bytes())
        assert summary["status"] == "failed"
        assert summary["problems"] == ["tokenization differs on 'hi': token 0 ..."]
    code, stdout, stderr = invoke("export", "-w", str(ws), "--type", "q8_0", "--no-check")
    assert code == 0 and "Parity not checked" in stdout


# --- bad input -------------------------------------------------------------------------------------


def test_unknown_run(trained: Path) -> None:
    code, _, stderr = invoke("export", "nope", "-w", str(trained))
    assert code == 1
    assert error_lines(stderr) == [f"error: {trained / 'runs' / 'nope'}: no such run (runs: {RUN})"]


def test_the_latest_run_is_the_default(tmp_path: Path) -> None:
    from twinlm.export.pipeline import find_run

    for i, name in enumerate(("b-old", "a-new")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.json").write_text("{}")
        os.utime(tmp_path / "runs" / name / "config.json", (1000 + i, 1000 + i))
    (tmp_path / "runs" / "c-empty").mkdir()  # no record: not a run
    assert find_run(tmp_path, None).name == "a-new"
    assert find_run(tmp_path, "b-old").name == "b-old"
    code, _, stderr = invoke("export", "-w", str(tmp_path / "nowhere"))
    assert code == 1 and "not a twinlm workspace" in stderr


def test_no_run_at_all(tmp_path: Path) -> None:
    init_workspace(tmp_path / "ws", TwinConfig())
    code, _, stderr = invoke("export", "-w", str(tmp_path / "ws"))
    assert code == 1
    assert error_lines(stderr) == [
        f"error: {tmp_path / 'ws' / 'runs'}: no trained run to export; train one first with `twinlm train`"
    ]


def test_missing_base_model(trained: Path, tmp_path: Path) -> None:
    ws = relocated_copy(trained, tmp_path / "ws")
    shutil.rmtree(ws / "models" / "base")
    code, _, stderr = invoke("export", "-w", str(ws), "--type", "f16")
    assert code == 1
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "base model" in lines[0], lines
    assert str(ws / "models" / "base") in lines[0]
    assert not list((ws / "export" / RUN).glob("*.gguf")) and not (ws / "export" / RUN / "merged").exists()


def test_unsupported_architecture(trained: Path, tmp_path: Path) -> None:
    ws = relocated_copy(trained, tmp_path / "ws")
    config = ws / "models" / "base" / "config.json"
    data = orjson.loads(config.read_bytes())
    config.write_bytes(orjson.dumps(data | {"architectures": ["FalconForCausalLM"], "model_type": "falcon"}))
    code, _, stderr = invoke("gguf", "-w", str(ws), "--type", "f16")
    assert code == 1
    lines = error_lines(stderr)
    assert len(lines) == 1 and "FalconForCausalLM" in lines[0] and "convert_hf_to_gguf" in lines[0], lines
    assert not list((ws / "export" / RUN).glob("*.gguf"))


def _fail_mid_write(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """The GGUF writer stops after its first block of tensor data (a Ctrl-C, a full disk)."""
    from twinlm.export import gguf_tensors

    real = gguf_tensors.tensor_blocks

    def blocks(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for block in real(*args, **kwargs):
            yield block
            raise error

    monkeypatch.setattr(gguf_tensors, "tensor_blocks", blocks)


def test_interrupted_export_leaves_nothing_under_a_final_name(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = relocated_copy(trained, tmp_path / "ws")
    folder = ws / "export" / RUN
    _fail_mid_write(monkeypatch, KeyboardInterrupt())
    code, _, stderr = invoke("export", "-w", str(ws), "--type", "f16")
    assert code == 130
    assert "Interrupted: nothing half-written is left under a final name" in stderr
    assert sorted(p.name for p in folder.iterdir()) == ["export.json", "merged"]  # the merge was done
    assert orjson.loads((folder / "export.json").read_bytes())["steps"]["merge"]
    monkeypatch.undo()

    # What a SIGKILL would leave: temporary names only, removed by the next export, which goes on.
    (folder / f".{RUN}-f16.gguf.abc123.part").write_bytes(b"GGUF half")
    (folder / ".merged.tmp-xyz").mkdir()
    code, stdout, stderr = invoke("export", "-w", str(ws), "--type", "f16", "--json")
    assert code == 0, stderr
    result = orjson.loads(stdout)
    assert result["skipped"] == ["merge"] and result["done"] == ["gguf", "modelfile", "check"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "Modelfile",
        "export.json",
        "merged",
        f"{RUN}-f16.gguf",
    ]


def test_full_disk_is_one_line_naming_the_folder_and_the_space(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = relocated_copy(trained, tmp_path / "ws")
    folder = ws / "export" / RUN
    _fail_mid_write(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    code, _, stderr = invoke("gguf", "-w", str(ws), "--type", "q8_0")
    assert code == 1
    lines = error_lines(stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"error: {folder}: the disk is full (writing {RUN}-q8_0.gguf); it needs about "
    )
    assert "free there" in lines[0]
    assert not list(folder.glob("*.gguf")) and not [p for p in folder.iterdir() if ".part" in p.name]


def test_full_disk_while_merging(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The merge's own one-line error, when its cause is a full disk, says how much space is needed."""
    from twinlm.export import merge

    ws = relocated_copy(trained, tmp_path / "ws")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(merge, "_write_shards", full)
    code, _, stderr = invoke("merge", "-w", str(ws))
    assert code == 1
    lines = error_lines(stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"error: {ws / 'export' / RUN}: the disk is full (writing the merged model merged/)"
    )
    assert "it needs about" in lines[0]
    assert [p.name for p in (ws / "export" / RUN).iterdir()] == []  # no merged/, no temporary folder


def test_a_checkpoint_exports_beside_the_final_weights(trained: Path, tmp_path: Path) -> None:
    ws = relocated_copy(trained, tmp_path / "ws")
    folder = ws / "export" / RUN
    code, stdout, stderr = invoke("gguf", "-w", str(ws), "--checkpoint", "step-2", "--type", "q8_0", "--json")
    assert code == 0, stderr
    assert orjson.loads(stdout)["done"] == ["merge", "gguf"]
    assert (folder / f"{RUN}-step-2-q8_0.gguf").is_file()
    assert orjson.loads((folder / "merged-step-2" / "twinlm-export.json").read_bytes())["step"] == 2
    code, stdout, _ = invoke(
        "gguf", "-w", str(ws), "--type", "q8_0", "--json"
    )  # the final weights: their own
    assert orjson.loads(stdout)["done"] == ["merge", "gguf"] and (folder / f"{RUN}-q8_0.gguf").is_file()
    code, stdout, _ = invoke("gguf", "-w", str(ws), "--checkpoint", "step-000002", "--type", "q8_0", "--json")
    assert code == 0 and orjson.loads(stdout)["skipped"] == ["merge", "gguf"]  # the same checkpoint
