"""Optional live dashboards: TensorBoard or Weights & Biases, only when `train.report_to` asks.

metrics.jsonl and loss.png are always written; these are extra views of the same numbers. Both
libraries are imported only when chosen (neither is a dependency), and W&B sends data to its
service unless WANDB_MODE=offline: it is never on by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twinlm.errors import TwinError


class Reporter:
    """Sends each logged value to the configured dashboard."""

    def __init__(self, kind: str, run_dir: Path, config: dict[str, Any]) -> None:
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
            self._run = wandb.init(project="twinlm", name=run_dir.name, dir=str(run_dir), config=config)

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
