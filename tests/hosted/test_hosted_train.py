"""`twinlm train --backend mistral-api` against a fake Mistral API on loopback (issue 14): the official
client uploads exactly what `export-data --format mistral` writes, the job gets the configured model and
hyperparameters, it is followed to its end and recorded like a local run; failures are one line; a
closed terminal loses nothing (--resume follows the same job); and without a key, over a limit or
without a confirmation nothing is sent at all (the conftest socket guard fails anything not loopback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_mistral import FakeMistral, checkpoint
from rich.console import Console
from typer.testing import CliRunner

from twinlm import privacy
from twinlm.cli import app
from twinlm.config import load_config
from twinlm.errors import TwinError
from twinlm.hosted.dataset import Upload, check_upload
from twinlm.hosted.job import LOOK_TRIES, read_record
from twinlm.hosted.settings import HostedConfig
from twinlm.hosted.train import train_hosted
from twinlm.prepare import interop
from twinlm.prepare.interop import ExportReport, MistralLimits
from twinlm.prepare.sample import Sample, Turn
from twinlm.train.metrics import read_metrics

from conftest import KEY, make_workspace

TRAIN = ["train", "--backend", "mistral-api"]


def _train(ws: Path, *args: str, input: str | None = None) -> object:
    return CliRunner().invoke(app, [*TRAIN, "-w", str(ws), *args], input=input)


def _exported(ws: Path, tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export-data", "--format", "mistral", "-w", str(ws), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.jsonl"))}


def test_uploads_exactly_the_export_and_creates_the_configured_job(
    fake: FakeMistral, workspace: Path, key: str, tmp_path: Path
) -> None:
    result = _train(workspace, "--name", "hosted-1", "--yes")
    assert result.exit_code == 0, result.stderr

    # The files uploaded are byte for byte what export-data --format mistral writes.
    exported = _exported(workspace, tmp_path)
    assert set(exported) == {"train.jsonl", "eval.jsonl"}
    assert {u.filename: u.content for u in fake.uploads} == exported
    assert {u.purpose for u in fake.uploads} == {"fine-tune"}
    ids = {u.filename: u.file_id for u in fake.uploads}

    # The job has the configured base model and hyperparameters.
    assert fake.job_bodies == [
        {
            "model": "open-mistral-7b",
            "training_files": [{"file_id": ids["train.jsonl"], "weight": 1}],
            "validation_files": [ids["eval.jsonl"]],
            "hyperparameters": {"learning_rate": 0.0002, "training_steps": 3},
            "auto_start": True,
        }
    ]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in fake.requests)
    assert [(r.method, r.path) for r in fake.requests[:3]] == [
        ("POST", "/v1/files"),
        ("POST", "/v1/files"),
        ("POST", "/v1/fine_tuning/jobs"),
    ]

    # The confirmation named the files, their sizes, the conversations and whose messages.
    said = result.stderr
    for name, content in exported.items():
        assert f"{name}  {len(content):,} bytes" in said
    assert "2 training and 1 evaluation conversations" in said
    assert "replies learned, by: Alex Rivera (4)" in said
    assert "Sam (3)" in said and "Jo (1)" in said

    # Recorded like a local run: the model name, metrics.jsonl from the checkpoints, loss.png.
    run = workspace / "runs" / "hosted-1"
    record = read_record(run)
    assert record["job_id"] == "job-0001" and record["status"] == "SUCCESS"
    assert record["fine_tuned_model"] == "ft:open-mistral-7b:x:abc123"
    assert {f: v["file_id"] for f, v in record["files"].items()} == ids
    events = [(e["step"], e["split"], e["loss"]) for e in read_metrics(run)]
    assert events == [
        (1, "train", 2.5),
        (1, "eval", 2.6),
        (2, "train", 2.0),
        (3, "train", 1.5),
        (3, "eval", 1.9),
    ]
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ft:open-mistral-7b:x:abc123" in result.stdout and "2.600 -> 1.900" in result.stdout


def test_json_summary(fake: FakeMistral, workspace: Path, key: str) -> None:
    result = _train(workspace, "--name", "j", "--yes", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["fine_tuned_model"] == "ft:open-mistral-7b:x:abc123" and summary["steps"] == 3


def test_several_training_files_when_one_would_pass_the_size_limit(
    fake: FakeMistral, workspace: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(interop, "MISTRAL_LIMITS", MistralLimits(max_train_file_bytes=300))
    result = _train(workspace, "--name", "split", "--yes")
    assert result.exit_code == 0, result.stderr
    names = [u.filename for u in fake.uploads]
    assert names == ["train-001.jsonl", "train-002.jsonl", "eval.jsonl"]
    files = fake.job_bodies[0]["training_files"]
    assert [f["file_id"] for f in files] == [u.file_id for u in fake.uploads[:2]]


def test_failed_job_is_one_clear_line(fake: FakeMistral, workspace: Path, key: str) -> None:
    fake.script = [("QUEUED", []), ("VALIDATING", []), ("FAILED", [])]
    fake.failure_event = {"name": "status-updated", "data": {"error": "Invalid file format"}, "created_at": 1}
    result = _train(workspace, "--name", "bad", "--yes")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: Mistral job job-0001 failed: Invalid file format (run bad; no model was made)"]
    assert "Traceback" not in result.stderr
    assert read_record(workspace / "runs" / "bad")["status"] == "FAILED"


def test_failed_validation_and_cancelled_elsewhere_are_reported(
    fake: FakeMistral, workspace: Path, key: str
) -> None:
    fake.script = [("FAILED_VALIDATION", [])]
    result = _train(workspace, "--name", "v", "--yes")
    assert result.exit_code == 1 and "error: Mistral job job-0001 failed validation" in result.stderr
    fake.script = [("RUNNING", [checkpoint(1, 2.0)]), ("CANCELLED", [checkpoint(1, 2.0)])]
    result = _train(workspace, "--name", "c", "--yes")
    assert result.exit_code == 1
    assert "error: Mistral job job-0002 was cancelled (run c; no model was made)" in result.stderr


def test_an_api_failure_while_following_says_how_to_re_attach(
    fake: FakeMistral, workspace: Path, key: str
) -> None:
    fake.unavailable_after = 1
    result = _train(workspace, "--name", "u", "--yes")
    assert result.exit_code == 1
    said = " ".join(result.stderr.split())
    assert (
        "reading job job-0001 failed: HTTP 503 Service unavailable; job job-0001 may still be running" in said
    )
    assert "--name u --resume" in said and "Traceback" not in result.stderr
    assert fake.gets["job-0001"] == 1  # answered once, then refused LOOK_TRIES times in a row
    assert sum(r.method == "GET" for r in fake.requests) == 1 + LOOK_TRIES
    fake.unavailable_after = None
    assert _train(workspace, "--name", "u", "--resume").exit_code == 0
    assert read_record(workspace / "runs" / "u")["status"] == "SUCCESS"


def _interrupted_after(polls: int):  # a closed terminal, as the follower sees it
    seen = []

    def sleep(seconds: float) -> None:
        seen.append(seconds)
        if len(seen) >= polls:
            raise KeyboardInterrupt

    return sleep


def test_resume_follows_the_same_job(fake: FakeMistral, workspace: Path, key: str) -> None:
    settings = load_config(workspace / "twin.yaml").hosted
    console = Console(file=open("/dev/null", "w"), force_terminal=True)  # noqa: SIM115
    with pytest.raises(KeyboardInterrupt):
        train_hosted(
            workspace, settings, "r", resume=False, yes=True, console=console, sleep=_interrupted_after(2)
        )
    run = workspace / "runs" / "r"
    assert read_record(run)["job_id"] == "job-0001" and read_record(run)["status"] == "RUNNING"
    assert [e["step"] for e in read_metrics(run)] == [1, 1]  # recorded while followed
    uploads, requests = len(fake.uploads), len(fake.requests)

    result = _train(workspace, "--resume")  # the latest hosted run
    assert result.exit_code == 0, result.stderr
    assert "Re-attaching to job job-0001 of run r" in result.stderr
    later = fake.requests[requests:]
    assert later and all((r.method, r.path) == ("GET", "/v1/fine_tuning/jobs/job-0001") for r in later)
    assert len(fake.uploads) == uploads and len(fake.job_bodies) == 1
    assert read_record(run)["fine_tuned_model"] == "ft:open-mistral-7b:x:abc123"
    assert [e["step"] for e in read_metrics(run)] == [1, 1, 2, 3, 3]


def test_cancel_cancels_the_recorded_job(fake: FakeMistral, workspace: Path, key: str) -> None:
    fake.script = [("RUNNING", [])]
    settings = load_config(workspace / "twin.yaml").hosted
    console = Console(file=open("/dev/null", "w"))  # noqa: SIM115
    with pytest.raises(KeyboardInterrupt):
        train_hosted(
            workspace, settings, "k", resume=False, yes=True, console=console, sleep=_interrupted_after(1)
        )
    result = _train(workspace, "--name", "k", "--cancel")
    assert result.exit_code == 0, result.stderr
    assert ("POST", "/v1/fine_tuning/jobs/job-0001/cancel") in [(r.method, r.path) for r in fake.requests]
    assert "Job job-0001 cancelled" in result.stdout
    assert read_record(workspace / "runs" / "k")["status"] == "CANCELLED"


# ------------------------------------------------------------------------------- nothing sent


def test_no_api_key_sends_nothing(
    fake: FakeMistral, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    result = _train(workspace, "--yes")
    assert result.exit_code == 1 and "MISTRAL_API_KEY is not set" in result.stderr
    assert fake.requests == [] and not any((workspace / "runs").iterdir())


def test_over_the_token_budget_sends_nothing(fake: FakeMistral, tmp_path: Path, key: str) -> None:
    ws = make_workspace(tmp_path, fake.url, max_tokens=10)
    result = _train(ws, "--name", "big", "--yes")
    assert result.exit_code == 1 and "over hosted.max_tokens 10" in result.stderr
    assert "Nothing was sent" in result.stderr
    assert fake.requests == [] and not (ws / "runs" / "big").exists()


def test_refused_confirmation_sends_nothing(
    fake: FakeMistral, workspace: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _train(workspace)  # no terminal to ask, no --yes
    assert result.exit_code == 1 and "run again with --yes" in result.stderr
    monkeypatch.setattr(privacy, "_interactive", lambda: True)
    result = _train(workspace, input="n\n")
    assert result.exit_code == 1 and "nothing was sent to the Mistral fine-tuning API" in result.stderr
    assert "train.jsonl" in result.stderr  # it said what it would have sent
    assert fake.requests == [] and not any((workspace / "runs").iterdir())


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--backend", "mistral"], "--backend 'mistral': use one of local, mistral-api"),
        (
            [*TRAIN[1:], "--gpus", "2"],
            "--gpus are for local training; --backend mistral-api takes its settings",
        ),
        (["--cancel"], "--cancel: cancels a hosted job; use it with --backend mistral-api"),
    ],
)
def test_options_that_do_not_fit_are_one_line(
    fake: FakeMistral, workspace: Path, key: str, args: list[str], said: str
) -> None:
    result = CliRunner().invoke(app, ["train", "-w", str(workspace), "--yes", *args])
    assert result.exit_code == 1 and said in " ".join(result.stderr.split())
    assert fake.requests == []


def test_plain_http_to_another_machine_is_refused(tmp_path: Path, key: str) -> None:
    ws = make_workspace(tmp_path, "http://api.example.com")
    result = _train(ws, "--yes")
    assert result.exit_code == 1 and "allow_insecure_http" in result.stderr


def test_limits_are_checked_before_sending(tmp_path: Path) -> None:
    report = ExportReport(format="mistral", out=tmp_path)
    big = Upload(
        folder=tmp_path, report=report, train_files=["train.jsonl"], sizes={"train.jsonl": 600_000_000}
    )
    with pytest.raises(TwinError, match="over the API's limit of 500,000,000 per training file"):
        check_upload(big, HostedConfig())
    evals = Upload(
        folder=tmp_path,
        report=report,
        train_files=["train.jsonl"],
        eval_files=["eval.jsonl"],
        sizes={"train.jsonl": 10, "eval.jsonl": 1_000_001},
    )
    with pytest.raises(TwinError, match="1,000,001 bytes of evaluation data, over the API's limit"):
        check_upload(evals, HostedConfig())
    steps = Upload(folder=tmp_path, report=report, train_files=["t"], sizes={"t": 10}, characters=4000)
    assert check_upload(steps, HostedConfig(epochs=3)) == 3000


def test_names_are_shown_as_written_never_as_markup_or_terminal_codes(
    fake: FakeMistral, workspace: Path, key: str
) -> None:
    odd = Sample(
        id="odd",
        conversation="discord:odd",
        source="discord",
        kind="chat",
        turns=(Turn("[bold]Eve\x1b[2J", "hi [red]", False), Turn("Alex Rivera", "hello", True)),
    )
    with (workspace / "data" / "samples.jsonl").open("ab") as f:
        f.write(odd.to_json() + b"\n")
    result = _train(workspace, "--name", "odd", "--yes")
    assert result.exit_code == 0, result.stderr
    assert "[bold]Eve" in result.stderr and "\x1b" not in result.stderr


def test_a_tampered_job_id_is_refused_before_any_request(
    fake: FakeMistral, workspace: Path, key: str
) -> None:
    assert _train(workspace, "--name", "t", "--yes").exit_code == 0
    record = workspace / "runs" / "t" / "hosted.json"
    record.write_text(record.read_text().replace('"job-0001"', '"../../files"'))
    before = len(fake.requests)
    result = _train(workspace, "--name", "t", "--resume")
    assert result.exit_code == 1 and "job id '../../files' is not one the Mistral API gives" in result.stderr
    assert len(fake.requests) == before
