"""The run folder's training records: `metrics.jsonl` (one JSON object per event) and `loss.png`.

`metrics.jsonl` is appended one flushed line at a time, so a kill loses at most the line being
written. On resume the entries after the resumed step are dropped, so the file of a killed-and-resumed
run reads exactly like that of an uninterrupted one (apart from wall-clock times).

`loss.png` is drawn with matplotlib (imported only when a plot is drawn).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from twinlm.files import atomic_open, write_atomic

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"

Split = Literal["train", "eval"]


def _finite(value: float | None) -> float | None:
    # JSON has no NaN/Infinity; a diverged loss is written as null (the trainer reports it itself).
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The events of `metrics.jsonl`, in order. A torn last line (a kill mid-write) is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("step"), int):
            events.append(event)
    return events


class MetricsLog:
    """Appends training and eval events to `run_dir/metrics.jsonl`.

    `resume_step=None` starts a new record (an existing file is emptied); an int keeps the events of
    steps up to and including it and drops the rest, which a resumed run will write again.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [] if resume_step is None else [e for e in read_metrics(run_dir) if e["step"] <= resume_step]
        write_atomic(self.path, "".join(json.dumps(e) + "\n" for e in kept))

    def log(
        self,
        step: int,
        split: Split,
        loss: float | None,
        *,
        lr: float | None = None,
        tokens_per_s: float | None = None,
        tokens: int | None = None,
        **extra: float | int | str | None,
    ) -> dict[str, Any]:
        """Append one event and flush it; `tokens` is the running count of trained tokens."""
        event: dict[str, Any] = {"step": step, "split": split, "loss": _finite(loss)}
        if lr is not None:
            event["lr"] = lr
        if tokens_per_s is not None:
            event["tokens_per_s"] = round(tokens_per_s, 1)
        if tokens is not None:
            event["tokens"] = tokens
        event.update(extra)
        event["time"] = round(time.time(), 3)
        # One open/write/close per event: the line is in the OS's hands before the next step begins,
        # and no handle is left open across a crash or a test.
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
        return event


# --- loss.png ------------------------------------------------------------------------------------

TRAIN_COLOR = "#1f77b4"  # matplotlib's first two default colours: train blue, eval orange
EVAL_COLOR = "#ff7f0e"


def render_loss_png(train: Sequence[tuple[int, float]], evals: Sequence[tuple[int, float]]) -> bytes:
    """A PNG line chart of train loss (blue) and eval loss (orange, with markers) against step.

    matplotlib is imported here, not at module level: training imports this module, and only the plot
    needs it. The figure is drawn on its own Agg canvas (no pyplot), so no global backend or figure
    state is touched and a headless machine needs no display.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.2, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for series, color, label, marker in (
        (train, TRAIN_COLOR, "train", "o" if len(train) == 1 else None),
        (evals, EVAL_COLOR, "eval", "o"),
    ):
        if series:
            steps, losses = zip(*series, strict=True)
            axes.plot(steps, losses, color=color, label=label, marker=marker, linewidth=2)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(True, color="#e1e1e1")
    if train or evals:
        axes.legend(loc="upper right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_loss(run_dir: Path) -> Path:
    """Write `run_dir/loss.png` (train and eval loss against step) from `metrics.jsonl`; return its path."""
    events = read_metrics(run_dir)
    series: dict[str, list[tuple[int, float]]] = {"train": [], "eval": []}
    for e in events:
        if e.get("split") in series and isinstance(e.get("loss"), (int, float)):
            series[e["split"]].append((e["step"], float(e["loss"])))
    path = Path(run_dir) / PLOT_FILE
    with atomic_open(path, "wb") as f:
        f.write(render_loss_png(series["train"], series["eval"]))
    return path
