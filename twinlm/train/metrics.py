"""The run folder's training records: `metrics.jsonl` (one JSON object per event) and `loss.png`.

`metrics.jsonl` is appended one flushed line at a time, so a kill loses at most the line being
written. On resume the entries after the resumed step are dropped, so the file of a killed-and-resumed
run reads exactly like that of an uninterrupted one (apart from wall-clock times).

`loss.png` is drawn by a small pure-Python PNG writer (zlib + struct, a 5x7 bitmap font for labels):
matplotlib is not a dependency of twinlm, and a line chart of two series does not need it.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
import time
import zlib
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

_W, _H = 720, 420
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 20, 50
_BG = (255, 255, 255)
_AXIS = (60, 60, 60)
_GRID = (225, 225, 225)
_TRAIN = (31, 119, 180)
_EVAL = (255, 127, 14)

# 5x7 glyphs, one string of 7 rows of 5 bits each: enough for numbers and the labels drawn here.
_FONT = {
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11110 00001 00001 01110 00001 00001 11110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    "+": "00000 00100 00100 11111 00100 00100 00000",
    "e": "00000 00000 01110 10001 11111 10000 01110",
    "a": "00000 00000 01110 00001 01111 10001 01111",
    "i": "00100 00000 01100 00100 00100 00100 01110",
    "l": "01100 00100 00100 00100 00100 00100 01110",
    "n": "00000 00000 10110 11001 10001 10001 10001",
    "o": "00000 00000 01110 10001 10001 10001 01110",
    "p": "00000 00000 11110 10001 11110 10000 10000",
    "r": "00000 00000 10110 11001 10000 10000 10000",
    "s": "00000 00000 01111 10000 01110 00001 11110",
    "t": "01000 01000 11100 01000 01000 01001 00110",
    "v": "00000 00000 10001 10001 10001 01010 00100",
    " ": "00000 00000 00000 00000 00000 00000 00000",
}


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(_BG) * (width * height))

    def dot(self, x: int, y: int, color: tuple[int, int, int], size: int = 1) -> None:
        for dy in range(size):
            for dx in range(size):
                px, py = x + dx - size // 2, y + dy - size // 2
                if 0 <= px < self.width and 0 <= py < self.height:
                    i = 3 * (py * self.width + px)
                    self.pixels[i : i + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int], size: int = 1) -> None:
        # Bresenham: integer steps along the longer axis.
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, color, size)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, s: str, color: tuple[int, int, int], anchor: str = "left") -> None:
        width = 6 * len(s) - 1
        if anchor == "right":
            x -= width
        elif anchor == "center":
            x -= width // 2
        for k, ch in enumerate(s):
            rows = _FONT.get(ch, _FONT[" "]).split()
            for r, bits in enumerate(rows):
                for c, bit in enumerate(bits):
                    if bit == "1":
                        self.dot(x + 6 * k + c, y + r, color)

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.pixels[3 * self.width * y : 3 * self.width * (y + 1)])
            for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def _ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.1e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{value:.4g}"


def render_loss_png(train: Sequence[tuple[int, float]], evals: Sequence[tuple[int, float]]) -> bytes:
    """A PNG line chart of train loss (blue) and eval loss (orange, with markers) against step."""
    canvas = _Canvas(_W, _H)
    x0, x1, y0, y1 = _LEFT, _W - _RIGHT, _H - _BOTTOM, _TOP  # plot box; y grows downwards
    points = [*train, *evals]
    steps = [s for s, _ in points] or [0, 1]
    losses = [v for _, v in points] or [0.0, 1.0]
    smin, smax = min(steps), max(max(steps), min(steps) + 1)
    lmin, lmax = min(losses), max(losses)
    pad = (lmax - lmin) * 0.05 or max(abs(lmax) * 0.05, 0.05)
    lmin, lmax = lmin - pad, lmax + pad

    def px(step: float) -> int:
        return round(x0 + (step - smin) / (smax - smin) * (x1 - x0))

    def py(loss: float) -> int:
        return round(y0 - (loss - lmin) / (lmax - lmin) * (y0 - y1))

    for tick in _ticks(lmin, lmax):
        canvas.line(x0, py(tick), x1, py(tick), _GRID)
        canvas.text(x0 - 6, py(tick) - 3, _label(tick), _AXIS, anchor="right")
    for tick in _ticks(smin, smax):
        if tick == int(tick):  # steps are whole numbers
            canvas.line(px(tick), y0, px(tick), y0 + 4, _AXIS)
            canvas.text(px(tick), y0 + 8, str(int(tick)), _AXIS, anchor="center")
    canvas.line(x0, y0, x1, y0, _AXIS)
    canvas.line(x0, y0, x0, y1, _AXIS)
    canvas.text((x0 + x1) // 2, _H - 16, "step", _AXIS, anchor="center")
    canvas.text(8, y1, "loss", _AXIS)

    for series, color in ((train, _TRAIN), (evals, _EVAL)):
        pts = [(px(s), py(v)) for s, v in series]
        for (ax, ay), (bx, by) in itertools.pairwise(pts):
            canvas.line(ax, ay, bx, by, color, size=2)
        if color == _EVAL or len(pts) == 1:
            for x, y in pts:
                canvas.dot(x, y, color, size=6)

    # Legend, top right.
    for row, (name, color) in enumerate((("train", _TRAIN), ("eval", _EVAL))):
        ly = y1 + 8 + 14 * row
        canvas.line(x1 - 70, ly + 3, x1 - 50, ly + 3, color, size=3)
        canvas.text(x1 - 44, ly, name, _AXIS)
    return canvas.png()


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
