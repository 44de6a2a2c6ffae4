"""Optional live dashboards: TensorBoard or Weights & Biases, only when `train.report_to` asks.

metrics.jsonl and loss.png are always written; these are extra views of the same numbers. Both
libraries are imported only when chosen (neither is a dependency), and W&B sends data to its
service unless WANDB_MODE=offline: it is never on by default.

A tracker gets the metrics and an allow-list of settings that say nothing about anyone: never the
twin's name, the `me`/`people` aliases (names, phone numbers, emails), prompts, local paths or text.
A setting not on the list is left out, so a new personal one cannot leak by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twinlm.errors import TwinError
from twinlm.models.presets import PRESETS

# train.*: numbers and choices only (each checked to be one below).
TRAIN_SETTINGS = (
    "method", "learning_rate", "epochs", "max_steps", "batch_tokens", "grad_accum", "lr_scheduler",
    "warmup_ratio", "weight_decay", "max_grad_norm", "eval_every", "save_every", "keep_last", "log_every",
    "seed", "precision", "attention", "packing", "gradient_checkpointing", "compile", "liger_kernels",
    "distributed", "report_to",
)  # fmt: skip
LORA_SETTINGS = ("r", "alpha", "dropout", "target_modules", "rslora")
BUILD_SETTINGS = ("max_length", "eval_fraction", "session_gap_minutes")
# build.targets when it is one of these words (a list of targets is a list of people's names).
_TARGET_WORDS = ("auto", "me", "assistant", "everyone")
_PUBLIC_MODELS = set(PRESETS) | {p.hub_id for p in PRESETS.values() if p.hub_id}


def tracker_config(config: dict[str, Any]) -> dict[str, Any]:
    """The settings (a TwinConfig as JSON) a dashboard may show: the allow-lists above, scalars only."""
    train = config.get("train") or {}
    build = config.get("build") or {}
    lora = train.get("lora") or {}
    shown_train = _scalars(train, TRAIN_SETTINGS)
    shown_train["lora"] = _scalars(lora, LORA_SETTINGS)
    shown_build = _scalars(build, BUILD_SETTINGS)
    model = str(build.get("model") or "")
    # A folder's path names the user (/home/NAME/...); a hub id outside the presets may be theirs.
    shown_build["model"] = model if model in _PUBLIC_MODELS else "a local model"
    if build.get("targets") in _TARGET_WORDS:
        shown_build["targets"] = build["targets"]
    return {"train": shown_train, "build": shown_build}


def _scalars(section: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    def public(value: Any) -> bool:
        if isinstance(value, list):  # LoRA target module names
            return all(isinstance(v, str) for v in value)
        return value is None or isinstance(value, (bool, int, float, str))

    return {name: section[name] for name in names if name in section and public(section[name])}


class Reporter:
    """Sends each logged value to the configured dashboard."""

    def __init__(self, kind: str, run_dir: Path, config: dict[str, Any]) -> None:
        """`config`: the run's TwinConfig as JSON; only tracker_config(config) is passed on."""
        self.kind = kind
        self._writer: Any = None
        self._run: Any = None
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise TwinError(
                    "train.report_to: tensorboard is not installed; `pip install tensorboard` "
                    "(or twinlm[tensorboard]), or set report_to: none"
                ) from None
            self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        elif kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise TwinError(
                    "train.report_to: wandb is not installed; `pip install wandb`, or set report_to: none"
                ) from None
            self._run = wandb.init(
                project="twinlm", name=run_dir.name, dir=str(run_dir), config=tracker_config(config)
            )

    def log(self, step: int, split: str, values: dict[str, float | None]) -> None:
        for name, value in values.items():
            if value is None:
                continue
            if self._writer is not None:
                self._writer.add_scalar(f"{split}/{name}", value, step)
            if self._run is not None:
                self._run.log({f"{split}/{name}": value}, step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._run is not None:
            self._run.finish()
