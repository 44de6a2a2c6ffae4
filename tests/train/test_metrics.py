"""metrics.jsonl: a flushed line per event, cut back to the resumed step on resume; loss.png: a valid
PNG (drawn by matplotlib) with both curves."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from twinlm.train.metrics import EVAL_COLOR, TRAIN_COLOR, MetricsLog, plot_loss, read_metrics, render_loss_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _log_steps(log: MetricsLog, start: int, end: int) -> None:
    for step in range(start, end + 1):
        log.log(step, "train", 2.0 / step, lr=1e-3, tokens_per_s=1000.0, tokens=10 * step)
        if step % 3 == 0:
            log.log(step, "eval", 3.0 / step)


def _comparable(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "time"} for e in events]  # wall clock differs


def test_each_event_is_one_flushed_json_line(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    event = log.log(1, "train", 1.5, lr=2e-4, tokens_per_s=1234.56, tokens=80)
    # Readable before any close or flush by the caller: the line is already in the file.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == event
    assert {k: v for k, v in event.items() if k != "time"} == {
        "step": 1,
        "split": "train",
        "loss": 1.5,
        "lr": 2e-4,
        "tokens_per_s": 1234.6,
        "tokens": 80,
    }
    assert isinstance(event["time"], float)
    log.log(2, "eval", float("nan"))
    assert read_metrics(tmp_path)[1]["loss"] is None  # JSON has no NaN


def test_resume_truncates_to_match_an_uninterrupted_run(tmp_path: Path) -> None:
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    _log_steps(MetricsLog(straight), 1, 10)

    # Killed after logging step 7 (and half a line of step 8); the last checkpoint is step 6.
    log = MetricsLog(cut)
    _log_steps(log, 1, 7)
    with (cut / "metrics.jsonl").open("a") as f:
        f.write('{"step": 8, "split": "tr')
    resumed = MetricsLog(cut, resume_step=6)
    assert max(e["step"] for e in read_metrics(cut)) == 6
    assert [e["split"] for e in read_metrics(cut) if e["step"] == 6] == ["train", "eval"]
    _log_steps(resumed, 7, 10)

    assert _comparable(read_metrics(cut)) == _comparable(read_metrics(straight))
    text = (cut / "metrics.jsonl").read_text()
    assert text.endswith("\n") and '"tr\n' not in text  # the torn line is gone


def test_fresh_log_empties_an_old_file(tmp_path: Path) -> None:
    _log_steps(MetricsLog(tmp_path), 1, 4)
    MetricsLog(tmp_path)
    assert read_metrics(tmp_path) == []


def _pixels(data: bytes) -> np.ndarray:
    """The PNG's pixels as 0-255 RGB, decoded by matplotlib's own PNG reader (a valid PNG or it raises)."""
    from matplotlib.image import imread

    assert data[:8] == PNG_MAGIC
    return (imread(io.BytesIO(data), format="png")[..., :3] * 255).round().astype(int)


def _count(pixels: np.ndarray, hex_color: str) -> int:
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).sum(axis=-1) <= 6).sum())


def test_plot_loss_writes_a_valid_png_with_both_curves(tmp_path: Path) -> None:
    _log_steps(MetricsLog(tmp_path), 1, 30)
    path = plot_loss(tmp_path)
    assert path == tmp_path / "loss.png"
    pixels = _pixels(path.read_bytes())
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 600
    assert _count(pixels, TRAIN_COLOR) > 100  # the train curve (blue)
    assert _count(pixels, EVAL_COLOR) > 100  # the eval curve and markers (orange)
    assert not list(tmp_path.glob(".loss.png.*"))  # written through a temp file


def test_eval_only_plot_has_no_train_curve() -> None:
    pixels = _pixels(render_loss_png([], [(0, 3.0), (10, 2.0)]))
    assert _count(pixels, EVAL_COLOR) > 50
    assert _count(pixels, TRAIN_COLOR) == 0


def test_plot_of_empty_or_single_point_metrics_is_still_a_png() -> None:
    for train, evals in (([], []), ([(1, 2.0)], []), ([(5, 1.0), (5, 1.0)], [(5, 1.0)])):
        assert _pixels(render_loss_png(train, evals)).size > 0
