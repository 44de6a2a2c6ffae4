"""A hosted run's record (runs/NAME/hosted.json) and the following of its job.

The job id is written to hosted.json as soon as the API returns it, before anything is displayed, so a
closed terminal loses nothing: the job runs on at Mistral and `twinlm train --backend mistral-api
--resume` re-attaches to it. Each look at the job rewrites metrics.jsonl from the job's checkpoints (the
same events a local run writes: step, split, loss, time), so following twice, or after a resume, gives
the same file; loss.png is drawn from it by the local run's own plot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from twinlm.errors import TwinError
from twinlm.files import write_atomic
from twinlm.hosted.api import FINAL_STATES, MistralAPI
from twinlm.train.metrics import METRICS_FILE, plot_loss

RECORD = "hosted.json"
BACKEND = "mistral-api"
LOOK_TRIES = 5  # failed looks at the job in a row before following gives up


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    write_atomic(run_dir / RECORD, orjson.dumps(record, option=orjson.OPT_INDENT_2).decode() + "\n")


def read_record(run_dir: Path) -> dict[str, Any]:
    try:
        record = orjson.loads((run_dir / RECORD).read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise TwinError(f"{run_dir / RECORD}: unreadable hosted run record ({e})") from None
    if not isinstance(record, dict):
        raise TwinError(f"{run_dir / RECORD}: not a hosted run record")
    return record


def find_hosted_run(workspace: Path, name: str | None) -> Path:
    """The named hosted run, or the latest one (by its record's time)."""
    runs = workspace / "runs"
    if name is not None:
        if not (runs / name / RECORD).is_file():
            raise TwinError(f"{runs / name}: no hosted run to resume there (no {RECORD})")
        return runs / name
    found = sorted(runs.glob(f"*/{RECORD}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise TwinError(f"nothing to resume in {runs}: no hosted run (twinlm train --backend mistral-api)")
    return found[-1].parent


def checkpoint_events(job: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics.jsonl events from the job's checkpoints, by step: train loss and, where given, eval loss."""
    events = []
    checkpoints = [c for c in job.get("checkpoints") or [] if isinstance(c, dict)]
    for c in sorted(checkpoints, key=lambda c: c.get("step_number", 0)):
        metrics = c.get("metrics") or {}
        step, when = int(c.get("step_number", 0)), c.get("created_at")
        for split, key in (("train", "train_loss"), ("eval", "valid_loss")):
            if isinstance(metrics.get(key), (int, float)):
                event: dict[str, Any] = {"step": step, "split": split, "loss": float(metrics[key])}
                if split == "eval" and isinstance(metrics.get("valid_mean_token_accuracy"), (int, float)):
                    event["token_accuracy"] = float(metrics["valid_mean_token_accuracy"])
                if isinstance(when, (int, float)):
                    event["time"] = float(when)
                events.append(event)
    return events


def record_metrics(run_dir: Path, job: dict[str, Any]) -> list[dict[str, Any]]:
    events = checkpoint_events(job)
    write_atomic(run_dir / METRICS_FILE, "".join(json.dumps(e) + "\n" for e in events))
    return events


def _last(events: list[dict[str, Any]], split: str) -> dict[str, Any] | None:
    found = [e for e in events if e["split"] == split]
    return found[-1] if found else None


def status_view(job: dict[str, Any], events: list[dict[str, Any]], started: float) -> Table:
    """The live panel: job, status, step, train and eval loss, time followed."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    steps = (job.get("hyperparameters") or {}).get("training_steps")
    train, evals = _last(events, "train"), _last(events, "eval")
    step = max((e["step"] for e in events), default=0)
    table.add_row("job", Text(str(job.get("id"))))
    table.add_row("model", Text(str(job.get("fine_tuned_model") or job.get("model"))))
    table.add_row("status", Text(str(job.get("status"))))
    table.add_row("step", f"{step}" + (f" / {steps}" if steps else ""))
    table.add_row("train loss", f"{train['loss']:.4f}" if train else "-")
    table.add_row("eval loss", f"{evals['loss']:.4f}" if evals else "-")
    table.add_row("following", f"{time.monotonic() - started:.0f} s (Ctrl-C stops following, not the job)")
    return table


def follow(
    api: MistralAPI,
    run_dir: Path,
    record: dict[str, Any],
    *,
    poll_seconds: float,
    console: Console,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Look at the job until it ends, showing its status and losses and recording them; the final job."""
    started = time.monotonic()
    job_id = record["job_id"]
    with Live(console=console, transient=True, auto_refresh=False, redirect_stdout=False) as live:
        failures = 0
        while True:
            try:
                job = api.get_job(job_id)
            except TwinError:
                failures += 1  # a passing outage should not end an hour of following
                if failures >= LOOK_TRIES:
                    raise
                sleep(poll_seconds)
                continue
            failures = 0
            events = record_metrics(run_dir, job)
            if job.get("status") != record.get("status") or job.get("fine_tuned_model"):
                if job.get("status") != record.get("status") and not console.is_terminal:
                    console.print(Text(f"job {job_id}: {job.get('status')}"))  # for a log
                record.update(status=job.get("status"), fine_tuned_model=job.get("fine_tuned_model"))
                write_record(run_dir, record)
            live.update(Group(status_view(job, events, started)), refresh=True)
            if job.get("status") in FINAL_STATES:
                break
            sleep(poll_seconds)
    if events:
        plot_loss(run_dir)
    return job


def failure_reason(job: dict[str, Any]) -> str:
    """What the job's last event says went wrong, if it says."""
    for event in reversed([e for e in job.get("events") or [] if isinstance(e, dict)]):
        data = event.get("data")
        if isinstance(data, dict):
            for key in ("error", "message", "reason", "detail"):
                if data.get(key):
                    return str(data[key]).strip().splitlines()[0][:300]
    return ""
