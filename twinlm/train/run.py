"""The run folder (runs/NAME) and its record: which folder a run uses, what it says about itself
(config.json, build.json, tokenizer/), and what resuming reads back from it."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from twinlm.config import TwinConfig
from twinlm.errors import TwinError
from twinlm.files import write_atomic


def run_dir(workspace: Path, name: str | None, resume: bool) -> Path:
    """The run's folder: a new one (created), or with `resume` the named run's (the latest if no name)."""
    runs = workspace / "runs"
    if resume:
        candidates = [runs / name] if name else sorted(runs.glob("*/"), key=lambda p: p.stat().st_mtime)
        if not candidates or not (candidates[-1] / "config.json").is_file():
            raise TwinError(f"nothing to resume in {runs}" + (f" named {name!r}" if name else ""))
        return candidates[-1]
    folder = runs / (name or datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S"))
    if folder.exists() and any(folder.iterdir()):
        raise TwinError(
            f"{folder}: a run with this name exists; pass --resume to continue it, or another --name"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def describe_run(
    run_dir: Path,
    config: TwinConfig,
    data_dir: Path,
    info: dict[str, Any],
    lr: float,
    attention: str,
    dtype: str,
    trainable: int,
    total: int,
) -> None:
    """The run folder describes itself: what config, dataset, tokenizer and template made it."""
    description = {
        "twinlm_run": 1,
        "config": config.model_dump(mode="json"),
        "dataset": str(data_dir),
        "model": info["model"],
        "template_style": info.get("template_style"),
        "system_prompt_template": info.get("system_prompt_template"),
        "me": info.get("me"),
        "learning_rate": lr,
        "attention": attention,
        "dtype": dtype,
        "trainable_params": trainable,
        "total_params": total,
    }
    write_atomic(
        run_dir / "config.json", orjson.dumps(description, option=orjson.OPT_INDENT_2).decode() + "\n"
    )
    shutil.copy(data_dir / "build.json", run_dir / "build.json")
    shutil.copytree(data_dir / "tokenizer", run_dir / "tokenizer", dirs_exist_ok=True)


def first_eval(run_dir: Path) -> float | None:
    """The eval loss before training (step 0) from the run's metrics, for a resumed run's summary."""
    from twinlm.train.metrics import read_metrics

    for event in read_metrics(run_dir):
        if event.get("split") == "eval" and event.get("step") == 0:
            return event.get("loss")
    return None
