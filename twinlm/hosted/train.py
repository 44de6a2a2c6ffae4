"""`twinlm train --backend mistral-api`: fine-tune through the Mistral API instead of on this machine.

Order, so that nothing leaves the machine unasked: the API key (environment only), the base URL (https),
the export of the built dataset into runs/NAME/upload, the API's limits and the token budget, then a
confirmation naming the files, their sizes, the conversations and whose messages they hold (or --yes).
Only then the files are uploaded and the job created; its id goes into runs/NAME/hosted.json at once,
and the job is followed (status, step, losses) until it ends, recording metrics.jsonl and loss.png.
`--resume` re-attaches to the job recorded in the run folder (the latest hosted run, or --name).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from twinlm.errors import TwinError
from twinlm.hosted import job as hosted_job
from twinlm.hosted.api import MistralAPI, api_key, check_job_id
from twinlm.hosted.dataset import Upload, check_upload, export_upload, names, sha256
from twinlm.hosted.settings import HostedConfig
from twinlm.prepare.sample import read_samples
from twinlm.privacy import check_endpoint_url, confirm_remote_send
from twinlm.train import run as run_record

SHOWN_PARTNERS = 5  # the people a chat with the hosted model defaults to


@dataclass
class HostedResult:
    run_dir: Path
    job_id: str
    status: str
    fine_tuned_model: str | None
    steps: int
    first_eval_loss: float | None
    last_eval_loss: float | None


def train_hosted(
    root: Path,
    settings: HostedConfig,
    name: str | None,
    *,
    resume: bool,
    yes: bool,
    cancel: bool = False,
    console: Console,
    safe: Callable[[object], str] = str,
    sleep: Callable[[float], None] = time.sleep,
) -> HostedResult:
    """Start (or with `resume` re-attach to, with `cancel` cancel) a hosted job and follow it to its end.

    `safe` makes user-supplied text (names, paths) printable as rich markup (the CLI's safe_text)."""
    key = api_key()  # first: without a key nothing else happens
    if resume or cancel:
        run_dir = hosted_job.find_hosted_run(root, name)
        record = hosted_job.read_record(run_dir)
        if not record.get("job_id"):
            raise TwinError(
                f"{run_dir / hosted_job.RECORD}: the job was never created (stopped during the upload); "
                "start a new run with another --name"
            )
        check_job_id(record["job_id"])  # (hosted.json is a file anyone with the folder can edit)
        # The job lives where it was created: follow it there, whatever twin.yaml says now.
        api = MistralAPI(settings.model_copy(update={"base_url": record["base_url"]}), key)
        if cancel:
            api.cancel_job(record["job_id"])
            console.print(Text(f"Asked Mistral to cancel job {record['job_id']}."))
        else:
            console.print(Text(f"Re-attaching to job {record['job_id']} of run {run_dir.name}."))
    else:
        check_endpoint_url(settings.base_url, settings.allow_insecure_http, setting="hosted")
        run_dir = run_record.run_dir(root, name, resume=False)
        try:
            upload = export_upload(list(read_samples(root / "data" / "samples.jsonl")), run_dir)
            trained_tokens = check_upload(upload, settings)
            _confirm(upload, settings, trained_tokens, yes=yes, console=console, safe=safe)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing was sent: leave no half-made run behind
            raise
        api = MistralAPI(settings, key)
        record = _start(api, root, run_dir, upload, settings, console)
    try:
        final = hosted_job.follow(
            api, run_dir, record, poll_seconds=settings.poll_seconds, console=console, sleep=sleep
        )
    except KeyboardInterrupt:
        said = (  # Text: the job id comes from the API, the path from the user; neither is markup
            f"Stopped following; job {record['job_id']} goes on at Mistral. Re-attach with: "
            f"twinlm train -w {root} --backend mistral-api --name {run_dir.name} --resume"
        )
        console.print(Text(said), soft_wrap=True)
        raise
    except TwinError as e:  # the API or the connection failed while following: the job itself goes on
        raise TwinError(
            f"{e}; job {record['job_id']} may still be running at Mistral: re-attach with twinlm train "
            f"--backend mistral-api --name {run_dir.name} --resume"
        ) from None
    return _result(run_dir, final, cancelled_by_user=cancel)


def _confirm(
    upload: Upload,
    settings: HostedConfig,
    trained_tokens: int,
    *,
    yes: bool,
    console: Console,
    safe: Callable[[object], str],
) -> None:
    """Say exactly what would leave the machine, then ask (twinlm.privacy's confirmation)."""
    console.print(
        f"Hosted fine-tuning of {safe(settings.model)} uploads these files of {safe(upload.folder)} to "
        f"Mistral ({safe(settings.base_url)}):",
        highlight=False,
        soft_wrap=True,
    )
    for file in upload.files():
        console.print(f"  {file}  {upload.sizes[file]:,} bytes", highlight=False)
    console.print(
        f"  {upload.conversations['train']:,} training and {upload.conversations['eval']:,} evaluation "
        "conversations",
        highlight=False,
    )
    console.print(f"  replies learned, by: {safe(names(upload.trained))}", highlight=False, soft_wrap=True)
    console.print(
        f"  messages sent as context, by: {safe(names(upload.context))}", highlight=False, soft_wrap=True
    )
    console.print(
        f"  about {upload.tokens:,} tokens of training data, about {trained_tokens:,} tokens trained "
        f"(hosted.max_tokens {settings.max_tokens:,}); {_hyperparameters_said(settings)}",
        highlight=False,
        soft_wrap=True,
    )
    total = sum(upload.conversations.values())
    confirm_remote_send(
        settings.base_url,
        total,
        upload.sent_characters,
        yes=yes,
        what="conversations",
        to="Mistral fine-tuning API",
    )


def _hyperparameters_said(settings: HostedConfig) -> str:
    return ", ".join(f"{k} {v}" for k, v in job_hyperparameters(settings).items())


def job_hyperparameters(settings: HostedConfig) -> dict[str, Any]:
    params: dict[str, Any] = {"learning_rate": settings.learning_rate}
    if settings.training_steps is not None:
        params["training_steps"] = settings.training_steps
    if settings.epochs is not None:
        params["epochs"] = settings.epochs
    return params


def _start(
    api: MistralAPI, root: Path, run_dir: Path, upload: Upload, settings: HostedConfig, console: Console
) -> dict[str, Any]:
    """Upload the files, create the job, and record each step in hosted.json as it happens."""
    record: dict[str, Any] = {
        "twinlm_hosted_run": 1,
        "backend": hosted_job.BACKEND,
        "base_url": settings.base_url,
        "model": settings.model,
        "hyperparameters": job_hyperparameters(settings),
        "data_fingerprint": run_record.data_fingerprint(root / "data"),
        # Whom the model learned to speak as (most replies first) and whom it heard most: chat's personas.
        "personas": [name for name, _ in upload.trained.most_common() if name],
        "partners": [name for name, _ in upload.context.most_common(SHOWN_PARTNERS) if name],
        "files": {},
        "job_id": None,
        "status": "uploading",
        "fine_tuned_model": None,
    }
    hosted_job.write_record(run_dir, record)
    for file in upload.files():
        path = upload.folder / file
        with console.status(f"uploading {file} ({upload.sizes[file]:,} bytes)"):
            file_id = api.upload(path)
        record["files"][file] = {"bytes": upload.sizes[file], "sha256": sha256(path), "file_id": file_id}
        hosted_job.write_record(run_dir, record)
    ids = {f: record["files"][f]["file_id"] for f in upload.files()}
    body: dict[str, Any] = {
        "model": settings.model,
        "training_files": [{"file_id": ids[f], "weight": 1} for f in upload.train_files],
        "hyperparameters": record["hyperparameters"],
        "auto_start": True,
    }
    if upload.eval_files:
        body["validation_files"] = [ids[f] for f in upload.eval_files]
    if settings.suffix:
        body["suffix"] = settings.suffix
    job = api.create_job(body)
    record.update(job_id=job["id"], status=job.get("status"))
    hosted_job.write_record(run_dir, record)  # before following: a closed terminal can re-attach
    said = (
        f"Created job {job['id']} (run {run_dir.name}); following it. Ctrl-C or a closed terminal stops "
        f"following, not the job: re-attach with twinlm train --backend mistral-api --name {run_dir.name} "
        "--resume"
    )
    console.print(Text(said), soft_wrap=True)
    return record


def _result(run_dir: Path, job: dict[str, Any], *, cancelled_by_user: bool) -> HostedResult:
    status = str(job.get("status"))
    job_id = str(job.get("id"))
    if status in ("FAILED", "FAILED_VALIDATION"):
        reason = hosted_job.failure_reason(job)
        raise TwinError(
            f"Mistral job {job_id} {'failed validation' if status == 'FAILED_VALIDATION' else 'failed'}"
            f"{': ' + reason if reason else ''} (run {run_dir.name}; no model was made)"
        )
    if status == "CANCELLED" and not cancelled_by_user:
        raise TwinError(f"Mistral job {job_id} was cancelled (run {run_dir.name}; no model was made)")
    events = hosted_job.checkpoint_events(job)
    evals = [e["loss"] for e in events if e["split"] == "eval"]
    return HostedResult(
        run_dir=run_dir,
        job_id=job_id,
        status=status,
        fine_tuned_model=job.get("fine_tuned_model"),
        steps=max((e["step"] for e in events), default=0),
        first_eval_loss=evals[0] if evals else None,
        last_eval_loss=evals[-1] if evals else None,
    )
