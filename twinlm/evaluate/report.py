"""The evaluation report: one self-contained HTML file (plots as base64 PNGs drawn with matplotlib, no
script, no outside resource: readable offline, and on a phone) and the same numbers as JSON.

The report is a function of the JSON alone, so it can be drawn again from reports/eval-RUN.json.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from twinlm.evaluate.style import DISTRIBUTIONS, profile
from twinlm.files import write_atomic

COLORS = {"real": "#2ca02c", "base": "#7f7f7f", "tuned": "#d62728"}
METRIC_TITLES = {
    "eval_loss": "eval loss (lower is better)",
    "perplexity": "perplexity (lower is better)",
    "style_score": "style score (1 = same style)",
    "indistinguishability": "real-vs-generated classifier accuracy (0.5 = indistinguishable)",
    "doc_f1": "document answers: token F1",
    "judge": "document answers: judge grade",
}
BEST_KEY = {
    "eval_loss": "eval_loss",
    "perplexity": "eval_loss",
    "style_score": "style",
    "doc_f1": "doc_f1",
    "judge": "judge",
}
UNITS = {
    "length": "characters per message",
    "burst": "messages per reply",
    "casing": "share of letters upper case",
    "emoji": "emoji per message",
    "punctuation": "punctuation marks per message",
    "questions": "message asks a question (0/1)",
}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> str:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def loss_plot(data: dict[str, Any]) -> str | None:
    """The run's loss curves (train line, eval points) as base64 PNG."""
    from twinlm.train.metrics import render_loss_png

    train = [
        (e["step"], e["loss"])
        for e in data.get("train_metrics", [])
        if e["split"] == "train" and e["loss"] is not None
    ]
    evals = [
        (e["step"], e["loss"])
        for e in data.get("train_metrics", [])
        if e["split"] == "eval" and e["loss"] is not None
    ]
    if not train and not evals:
        return None
    return base64.b64encode(render_loss_png(train, evals)).decode("ascii")


def metrics_plot(data: dict[str, Any]) -> str | None:
    """Each metric against the step (base model at step 0), the best trained point marked with a star."""
    shown = [m for m in METRIC_TITLES if any(isinstance(p.get(m), (int, float)) for p in data["points"])]
    if not shown:
        return None
    figure = _figure(7.2, 2.6 * len(shown))
    best = data.get("best", {})
    for row, metric in enumerate(shown):
        axes = figure.add_subplot(len(shown), 1, row + 1)
        pts = [p for p in data["points"] if isinstance(p.get(metric), (int, float)) and "same_as" not in p]
        axes.plot([p["step"] for p in pts], [p[metric] for p in pts], marker="o", color="#1f77b4")
        for p in pts:
            axes.annotate(
                p["label"], (p["step"], p[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        chosen = best.get(BEST_KEY.get(metric, ""))
        mark = [p for p in pts if p["label"] == chosen]
        if mark:
            axes.plot(
                [mark[0]["step"]], [mark[0][metric]], marker="*", markersize=16, color="#d62728", label="best"
            )
            axes.legend(loc="best", fontsize=8)
        axes.set_title(METRIC_TITLES[metric], fontsize=9)
        axes.set_xlabel("step", fontsize=8)
        axes.grid(True, color="#e1e1e1")
    return _png(figure)


def _samples(data: dict[str, Any], persona: str) -> dict[str, list[str]]:
    points = {p["label"]: p for p in data["points"]}
    out = {"real": [x["real"] for x in data["real"].get(persona, [])]}
    for name, label in (("base", "base"), ("tuned", data["tuned"])):
        replies = points.get(label, {}).get("replies", {}).get(persona)
        if replies is not None:
            out[name] = replies
    return out


def style_plot(data: dict[str, Any], persona: str) -> str | None:
    """Histograms of each style measure: the person's real replies vs the base and tuned models'."""
    samples = _samples(data, persona)
    if len(samples) < 2:
        return None
    profiles = {name: profile(replies) for name, replies in samples.items()}
    figure = _figure(7.2, 7.5)
    for k, metric in enumerate(DISTRIBUTIONS):
        axes = figure.add_subplot(3, 2, k + 1)
        values = {name: getattr(p, metric) for name, p in profiles.items() if getattr(p, metric)}
        everything = [v for vs in values.values() for v in vs]
        if not everything:
            continue
        low, high = min(everything), max(everything)
        bins = 12 if high > low else 1
        for name, vs in values.items():
            axes.hist(
                vs,
                bins=bins,
                range=(low, high if high > low else low + 1),
                density=True,
                histtype="step",
                linewidth=2,
                color=COLORS[name],
                label=name,
            )
        axes.set_title(UNITS[metric], fontsize=8)
        axes.tick_params(labelsize=7)
        if k == 0:
            axes.legend(fontsize=7)
    return _png(figure)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, str):  # said instead of a number (a hosted model's perplexity)
        return _e(value)
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "–"


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return f"<p class=note>No data for: {_e(alt)}</p>"
    return f'<img class=plot alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<div class=scroll><table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table></div>"


def _turns(turns: Sequence[Sequence[str]]) -> str:
    return "".join(f"<div class=turn><b>{_e(who)}:</b> {_e(text)}</div>" for who, text in turns)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:60rem;
padding:0.75rem;line-height:1.4;color:#222}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1rem}
img.plot{width:100%;height:auto;max-width:720px;display:block}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:0.9rem}
td,th{border:1px solid #ddd;padding:0.3rem 0.5rem;vertical-align:top;text-align:left}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:0.75rem}
@media (max-width:640px){.pair{grid-template-columns:1fr}}
.box{border:1px solid #ddd;border-radius:6px;padding:0.5rem}.turn{white-space:pre-wrap;margin:0.2rem 0}
.note{color:#666;font-size:0.9rem}.warn{color:#a15c00}
"""


def render_html(data: dict[str, Any]) -> str:
    run, tuned = data["run"], data["tuned"]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width, initial-scale=1">',
        f"<title>twinlm eval: {_e(run)}</title><style>{CSS}</style></head><body>",
        f"<h1>Evaluation of run {_e(run)}</h1>",
        f"<p class=note>Base model {_e(data.get('base_model'))}; tuned = {_e(tuned)}; "
        f"made {_e(data['created'])}.</p>",
    ]
    if data.get("note"):  # a hosted run: which models, and why some numbers are not there
        parts.append(f"<p class=note>{_e(data['note'])}</p>")
    parts += [f"<p class=warn>{_e(w)}</p>" for w in data.get("warnings", [])]
    head = ["weights", "step", "eval loss", "perplexity", "style", "classifier", "doc F1", "doc EM", "judge"]
    rows = [
        [
            _e(p["label"]) + (f" (= {_e(p['same_as'])})" if p.get("same_as") else ""),
            _e(p["step"]),
            _number(p.get("eval_loss")),
            _number(p.get("perplexity"), 2),
            _number(p.get("style_score"), 3),
            _number(p.get("indistinguishability"), 3),
            _number(p.get("doc_f1"), 3),
            _number(p.get("doc_exact_match"), 3),
            _number(p.get("judge"), 3),
        ]
        for p in data["points"]
    ]
    parts.append("<h2>Scores</h2>" + _table(head, rows))
    best = ", ".join(f"{_e(k)}: {_e(v)}" for k, v in data.get("best", {}).items() if v)
    parts.append(f"<p>Best checkpoint by {best or 'no metric'}.</p>")
    if data.get("picked"):
        picked = data["picked"]
        parts.append(
            f"<p>Picked for export: <b>{_e(picked['checkpoint'] or 'final')}</b> "
            f"by {_e(picked['metric'])}.</p>"
        )
    parts.append("<h2>Loss</h2>" + _img(loss_plot(data), "loss curves"))
    parts.append("<h2>Metrics per checkpoint</h2>" + _img(metrics_plot(data), "metrics per checkpoint"))
    points = {p["label"]: p for p in data["points"]}
    for persona, places in data["real"].items():
        parts.append(f"<h2>Style of {_e(persona)}</h2>")
        parts.append(_img(style_plot(data, persona), f"style distributions of {persona}"))
        scored = [
            (label, points[label].get("style", {}).get(persona))
            for label in ("base", tuned)
            if label in points
        ]
        rows = []
        for label, s in scored:
            if s:
                words = s["distinctive_words"]
                rows.append(
                    [
                        _e(label),
                        _number(s["score"], 3),
                        _number(s["indistinguishability"], 3),
                        _e(", ".join(f"{k} {v}" for k, v in s["distances"].items() if v is not None)),
                        _e(" ".join(words["real"][:6])),
                        _e(" ".join(words["generated"][:6])),
                    ]
                )
        parts.append(
            _table(
                [
                    "weights",
                    "style",
                    "classifier",
                    "distances",
                    "typical of the person",
                    "typical of the model",
                ],
                rows,
            )
        )
        parts.append(f"<h3>Replies in context ({len(places)})</h3>")
        replies = {
            label: points.get(label, {}).get("replies", {}).get(persona, []) for label in ("base", tuned)
        }
        rows = []
        for i, place in enumerate(places[:15]):
            rows.append(
                [
                    _turns(place["context"][-3:]),
                    _e(place["real"]),
                    _e(replies["base"][i] if i < len(replies["base"]) else ""),
                    _e(replies[tuned][i] if i < len(replies[tuned]) else ""),
                ]
            )
        parts.append(_table(["context", "real", "base", "tuned"], rows))
    probes = {label: points.get(label, {}).get("probes", []) for label in ("base", tuned)}
    if probes[tuned] or probes["base"]:
        parts.append("<h2>Probe conversations</h2>")
        for i, plan in enumerate(probes[tuned] or probes["base"]):
            parts.append(
                f"<h3>As {_e(plan['persona'])}, talking to {_e(plan['partner'])} "
                f"({_e(plan['language'])})</h3>"
            )
            boxes = []
            for label, name in (("base", "base"), (tuned, "tuned")):
                found = probes[label][i]["transcript"] if i < len(probes[label]) else []
                boxes.append(f"<div class=box><b>{name}</b>{_turns(found)}</div>")
            parts.append("<div class=pair>" + "".join(boxes) + "</div>")
    tuned_docs = points.get(tuned, {}).get("documents")
    if tuned_docs:
        base_items = points.get("base", {}).get("documents", {}).get("items", [])
        parts.append(f"<h2>Document questions ({tuned_docs['questions']})</h2>")
        rows = [
            [
                _e(item["question"]),
                _e(item["answer"]),
                _e(base_items[i]["prediction"] if i < len(base_items) else ""),
                _e(item["prediction"]),
                _number(item["f1"], 2),
            ]
            for i, item in enumerate(tuned_docs["items"][:30])
        ]
        parts.append(_table(["question", "reference", "base", "tuned", "tuned F1"], rows))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(folder: Path, data: dict[str, Any]) -> tuple[Path, Path]:
    """reports/eval-RUN.html and reports/eval-RUN.json, each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"eval-{data['run']}"
    json_path = folder / f"{stem}.json"
    write_atomic(json_path, orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    html_path = folder / f"{stem}.html"
    write_atomic(html_path, render_html(data))
    return html_path, json_path
