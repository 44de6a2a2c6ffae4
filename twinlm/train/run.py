"""The run folder (runs/NAME) and its record: which folder a run uses, what it says about itself
(config.json, build.json, tokenizer/), and what resuming reads back from it.

A resumed run continues as it was recorded: the train settings in its config.json (with the command-line
options it was started with) are the ones used, whatever twin.yaml says today, so the step budget, the
schedule and the batch order are the ones its checkpoints were made with. What cannot be continued is
refused in one line: another dataset (config.json holds a fingerprint of data/) or another adapter shape.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import ValidationError

from twinlm.config import TrainConfig, TwinConfig
from twinlm.errors import TwinError
from twinlm.files import write_atomic

RECORD = "config.json"
HOSTED_RECORD = "hosted.json"  # twinlm.hosted.job.RECORD (hosted sits above train)
DATA_FILES = ("train.parquet", "eval.parquet", "build.json")  # what the fingerprint of data/ covers
# Settings a checkpoint's weights and optimizer state are shaped by: resuming with others cannot work.
SHAPE_FIELDS = ("method", "lora.r", "lora.target_modules")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_run_name(name: str) -> str:
    """A run name is one plain folder name under runs/: a path could write anywhere."""
    if not _PLAIN_NAME.fullmatch(name) or name in (".", ".."):
        raise TwinError(
            f"--name {name!r}: a run name is a plain folder name under runs/ (letters, digits, - _ .), "
            "e.g. --name first-try"
        )
    return name


def new_run_name() -> str:
    return datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S")


def _hosted(folder: Path) -> bool:
    """A hosted run's folder (`twinlm train --backend mistral-api`): hosted.json and no local record."""
    return (folder / HOSTED_RECORD).is_file() and not (folder / RECORD).is_file()


def run_dir(workspace: Path, name: str | None, resume: bool) -> Path:
    """The run's folder: a new one (created), or with `resume` the named run's (the latest if no name)."""
    if name is not None:
        check_run_name(name)
    runs = workspace / "runs"
    if resume:
        if name:
            candidates = [runs / name]
        else:  # the newest local run: a hosted run (hosted.json, no config.json) is resumed by its backend
            local = [p for p in runs.glob("*/") if not _hosted(p)]
            candidates = sorted(local, key=lambda p: p.stat().st_mtime)
        if not candidates or not (candidates[-1] / RECORD).is_file():
            where = f"{runs} named {name!r}" if name else str(runs)
            hosted = name is not None and _hosted(runs / name)
            also = " (a hosted run: twinlm train --backend mistral-api --resume)" if hosted else ""
            raise TwinError(f"nothing to resume in {where}{also}")
        return candidates[-1]
    folder = runs / (name or new_run_name())
    if folder.exists() and any(folder.iterdir()):
        raise TwinError(
            f"{folder}: a run with this name exists; pass --resume to continue it, or another --name"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


TRAIN_LOCK = ".train.lock"  # held by the main process while it trains the run


def hold_run(run_dir: Path) -> IO[Any] | None:
    """An exclusive lock on the run for the life of the returned file: a second `twinlm train --resume` of
    the same run (another terminal, a `twinlm run`) would write the same checkpoints and metrics and
    remove the other's half-written files. None where there is no flock (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    lock = open(run_dir / TRAIN_LOCK, "a")  # noqa: SIM115 (held open until training ends)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise TwinError(
            f"{run_dir}: another `twinlm train` is training this run; let it finish (or stop it), or train a "
            "new run with another --name"
        ) from None
    return lock


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
    identity: dict[str, tuple[int, int, int] | None],
) -> None:
    """The run folder describes itself: what config, dataset, tokenizer and template made it.

    `identity`: the dataset's (`data_identity`) as training first read it. Its build.json and tokenizer
    are copied and its files hashed, then the dataset is checked unchanged, then the record is written
    (last: a run folder without it is not a run): a build that finished while the model loaded cannot
    leave a record of another dataset."""
    shutil.copy(data_dir / "build.json", run_dir / "build.json")
    shutil.copytree(data_dir / "tokenizer", run_dir / "tokenizer", dirs_exist_ok=True)
    fingerprint = data_fingerprint(data_dir)
    unchanged_since(data_dir, identity)
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
        "data_fingerprint": fingerprint,
    }
    write_atomic(run_dir / RECORD, orjson.dumps(description, option=orjson.OPT_INDENT_2).decode() + "\n")


def first_eval(run_dir: Path) -> float | None:
    """The eval loss before training (step 0) from the run's metrics, for a resumed run's summary."""
    from twinlm.train.metrics import read_metrics

    for event in read_metrics(run_dir):
        if event.get("split") == "eval" and event.get("step") == 0:
            return event.get("loss")
    return None


def data_fingerprint(data_dir: Path) -> dict[str, str]:
    """sha256 of each file of the built dataset that training reads: a rebuilt dataset shows here."""
    found = {}
    for name in DATA_FILES:
        path = data_dir / name
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            found[name] = digest.hexdigest()
    return found


def data_identity(data_dir: Path) -> dict[str, tuple[int, int, int] | None]:
    """(inode, size, modification time) of each file training reads and of the tokenizer folder: a build
    puts each in place by a rename, so any rebuild shows here, read in microseconds (`data_fingerprint`
    hashes every byte: once per run, for its record)."""
    found: dict[str, tuple[int, int, int] | None] = {}
    for name in (*DATA_FILES, "tokenizer"):
        try:
            stat = (data_dir / name).stat()
        except FileNotFoundError:
            found[name] = None
        else:
            found[name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return found


def unchanged_since(data_dir: Path, identity: dict[str, tuple[int, int, int] | None]) -> None:
    """Raise unless the dataset's files are still those of `identity`: a `twinlm build` that finished while
    training read them would have it train on one dataset and record another."""
    if data_identity(data_dir) != identity:
        raise TwinError(
            f"{data_dir}: the dataset changed while training was starting (a `twinlm build` finished "
            "meanwhile); start the training again"
        )


def read_record(run_dir: Path) -> dict[str, Any]:
    try:
        return orjson.loads((run_dir / RECORD).read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise TwinError(f"{run_dir / RECORD}: unreadable run record ({e}); start a new run") from None


def recorded_settings(run_dir: Path) -> TrainConfig:
    """The train settings the run started with, command-line options included."""
    try:
        return TrainConfig.model_validate(read_record(run_dir)["config"]["train"])
    except (KeyError, TypeError, ValidationError) as e:
        raise TwinError(
            f"{run_dir / RECORD}: no train settings this version of twinlm can read "
            f"({str(e).splitlines()[0]}); start a new run with another --name"
        ) from None


def _flat(settings: TrainConfig) -> dict[str, Any]:
    values = settings.model_dump(mode="json")
    lora = values.pop("lora")
    return values | {f"lora.{key}": value for key, value in lora.items()}


def changed_settings(recorded: TrainConfig, current: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{train field (dotted): (recorded value, current value)} for each that differs."""
    was, now = _flat(recorded), _flat(current)
    return {key: (was[key], now.get(key)) for key in was if was[key] != now.get(key)}


def check_shape(run_dir: Path, recorded: TrainConfig, current: TrainConfig) -> None:
    """Refuse settings the run's checkpoints cannot be loaded with (the adapter's shape, the method)."""
    changed = changed_settings(recorded, current)
    for key in SHAPE_FIELDS:
        if key in changed and (key == "method" or recorded.method != "full"):
            was, now = changed[key]
            raise TwinError(
                f"train.{key} is {now} in twin.yaml, but run {run_dir.name} was trained with {was}: its "
                f"checkpoints only fit that; set train.{key} back to {was} to resume it, or train a new "
                "run with another --name"
            )


def check_data(run_dir: Path, data_dir: Path) -> None:
    """Refuse to continue a run on another dataset than it started with (after `twinlm build` again)."""
    recorded = read_record(run_dir).get("data_fingerprint")
    if recorded is None:  # a run recorded before fingerprints: its copy of build.json stands in
        copy = run_dir / "build.json"
        same = copy.is_file() and copy.read_bytes() == (data_dir / "build.json").read_bytes()
        changed = [] if same else ["build.json"]
    else:
        now = data_fingerprint(data_dir)
        changed = [name for name in DATA_FILES if recorded.get(name) != now.get(name)]
    if changed:
        raise TwinError(
            f"{data_dir / changed[0]}: the dataset changed since run {run_dir.name} started (built again?); "
            "resuming would train on other samples: train a new run with another --name (or put back "
            "the data/ the run used)"
        )


def resume_config(run_dir: Path, config: TwinConfig, data_dir: Path) -> TwinConfig:
    """`config` with the train settings run_dir was recorded with, once its data and shape are checked."""
    recorded = recorded_settings(run_dir)
    check_shape(run_dir, recorded, config.train)
    check_data(run_dir, data_dir)
    return config.model_copy(update={"train": recorded})
