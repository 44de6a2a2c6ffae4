"""The weights a run can be evaluated at: the base model, each checkpoint, the final weights; loaded
with transformers (the base model as training read it, with the adapter of that point where it has one).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from twinlm.errors import TwinError

BASE = "base"
FINAL = "final"


@dataclass(frozen=True, slots=True)
class Point:
    label: str  # "base", "step-N" or "final"
    step: int  # 0 for the base model; the final weights' step from result.json
    folder: Path | None  # None: the base model alone
    same_as: str | None = None  # final weights equal to this checkpoint's: evaluated once


def _digest(folder: Path) -> dict[str, str]:
    """The weights' fingerprint (export's: adapters hashed, files over 256 MiB by size and time)."""
    from twinlm.export.pipeline import folder_fingerprint

    return {k: v for k, v in folder_fingerprint(folder).items() if k.endswith(".safetensors")}


def _loadable(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file()


def points(run_dir: Path) -> list[Point]:
    """base, then each checkpoint that holds loadable weights (oldest first), then final (if any).

    A run with neither checkpoints nor final weights is one error line."""
    from twinlm.train.checkpoint import list_checkpoints

    found = [(step, folder) for step, folder in list_checkpoints(run_dir) if _loadable(folder)]
    final = run_dir / FINAL
    if not found and not (final.is_dir() and _loadable(final)):
        raise TwinError(
            f"{run_dir}: the run has no checkpoints and no final weights to evaluate (killed before its "
            "first save?); resume it with `twinlm train --resume` or train again"
        )
    out = [Point(BASE, 0, None)]
    out += [Point(f"step-{step}", step, folder) for step, folder in found]
    if final.is_dir() and _loadable(final):
        try:
            step = int(orjson.loads((run_dir / "result.json").read_bytes())["steps"])
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            step = found[-1][0] if found else 1
        digest = _digest(final)
        twin = next((f"step-{s}" for s, folder in found if s == step and _digest(folder) == digest), None)
        out.append(Point(FINAL, step, final, same_as=twin))
    return out


def base_folder(run_dir: Path) -> Path:
    """The base model's folder as training read it (export's rule: a hub id is looked up, not fetched)."""
    from twinlm.export.merge import _base_folder
    from twinlm.train.run import read_record

    record = read_record(run_dir)
    adapter_config: dict[str, Any] = {}
    for config in sorted(run_dir.glob("*/adapter_config.json")) + sorted(
        run_dir.glob("checkpoints/*/adapter_config.json")
    ):
        try:
            adapter_config = orjson.loads(config.read_bytes())
            break
        except (OSError, orjson.JSONDecodeError):
            continue
    return _base_folder(run_dir, record, adapter_config)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load(base: Path, point: Point, where: str) -> Any:
    """The model of `point`: the base model, with the point's adapter, or the point's full weights."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    dtype = torch.float32 if where == "cpu" else "auto"  # CPU: f32 (bf16 matmuls are slow there)
    full = point.folder is not None and not (point.folder / "adapter_config.json").is_file()
    folder = point.folder if full and point.folder is not None else base
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError) as err:
        raise TwinError(f"{folder}: cannot load the model ({str(err).splitlines()[0]})") from None
    if point.folder is not None and not full:
        from peft import PeftModel

        try:
            with warnings.catch_warnings():  # transformers' deprecation notes, not the user's business
                warnings.simplefilter("ignore", FutureWarning)
                model = PeftModel.from_pretrained(model, point.folder).merge_and_unload()
        except (OSError, ValueError) as err:
            raise TwinError(f"{point.folder}: cannot load the adapter ({str(err).splitlines()[0]})") from None
    model.to(where)
    model.eval()
    return model
