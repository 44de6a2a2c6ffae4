"""`twinlm eval`: the base model against the tuned one, and across the run's checkpoints.

At every point (base, each checkpoint, final): perplexity on the eval split's target tokens. At the
points `eval.checkpoints` names (all, or base and final): replies in held-out contexts for each trained
person (style fidelity against what they really wrote) and the held-out document questions; at base and
the tuned weights only: the probe conversations. The judge, when enabled, grades every point's document
answers at the end (one confirmation for all of them). Results: reports/eval-RUN.json and .html;
`pick` writes runs/RUN/picked.json: the checkpoint for `twinlm export` to take by default.
"""

from __future__ import annotations

import gc
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from twinlm.errors import TwinError
from twinlm.evaluate import documents, style
from twinlm.evaluate.replies import ASSISTANT, Generate, contexts, eval_samples, in_context, probe
from twinlm.evaluate.weights import BASE, FINAL, base_folder, device, load, points
from twinlm.files import write_atomic

PICK_FILE = "picked.json"
# --pick METRIC: (key in a point's results, True where higher is better)
PICK_METRICS = {
    "eval_loss": ("eval_loss", False),
    "style": ("style_score", True),
    "doc_f1": ("doc_f1", True),
    "judge": ("judge", True),
}
Progress = Callable[[str, int], Callable[[], None]]  # (what, total) -> tick
MakeGenerate = Callable[[Any, Any], Generate]  # (loaded model, weights.Point) -> generate


@dataclass
class EvalResult:
    run: str
    html: Path
    json: Path
    data: dict[str, Any]
    picked: dict[str, Any] | None = None


def _quiet(_: str, __: int) -> Callable[[], None]:
    return lambda: None


def find_run(root: Path, name: str | None) -> Path:
    """runs/<name>, or the latest run: export's rule, with eval's words where there is no run at all."""
    from twinlm.export.pipeline import find_run as find

    runs = root / "runs"
    hosted = "; a hosted run (hosted.json) is evaluated with twinlm eval --backend mistral-api"
    if (
        name is not None
        and (runs / name / "hosted.json").is_file()
        and not (runs / name / "config.json").is_file()
    ):
        raise TwinError(f"{runs / name}: not a local run{hosted}")
    if name is None and not [p for p in runs.glob("*/config.json") if not p.parent.name.startswith(".")]:
        also = hosted if any(runs.glob("*/hosted.json")) else ""
        raise TwinError(f"{runs}: no trained run to evaluate; train one first with `twinlm train`{also}")
    return find(root, name)


def _eval_rows(data_dir: Path) -> list[Any]:
    from twinlm.train.data import load_split

    rows = load_split(data_dir, "eval")
    if not rows or not any(r.trained_tokens for r in rows):
        raise TwinError(
            f"{data_dir / 'eval.parquet'}: the eval split is empty, so there is nothing held out to "
            "evaluate on; set build.eval_fraction (e.g. 0.1) in twin.yaml, then build and train again"
        )
    return rows


def _check_tokenizer(run_dir: Path, data_dir: Path) -> None:
    """The eval split's token ids mean something only to the tokenizer the run trained with."""
    ours, theirs = data_dir / "tokenizer", run_dir / "tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        a, b = ours / name, theirs / name
        if a.is_file() and b.is_file() and a.read_bytes() != b.read_bytes():
            raise TwinError(
                f"{a}: the dataset was built with another tokenizer than run {run_dir.name} trained with "
                "(another build.model?); build again with the run's model, or evaluate a run trained on this "
                "dataset"
            )


def _data_warning(run_dir: Path, data_dir: Path) -> str | None:
    from twinlm.train.run import check_data

    try:
        check_data(run_dir, data_dir)
    except TwinError as err:
        return f"the dataset changed after this run started: its eval split may hold training data ({err})"
    return None


def _run_info(run_dir: Path, base: Path) -> dict[str, Any]:
    from datetime import UTC, datetime

    from twinlm.export.provenance import provenance
    from twinlm.train.run import read_record

    record = read_record(run_dir)
    info = provenance(run_dir, record, FINAL, base, "run", "float32")
    info["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    return info


def _friends(samples: list[Any], me: str, wanted: list[str], limit: int) -> list[str]:
    if wanted:
        return list(wanted)
    counts: Counter[str] = Counter()
    for sample in samples:
        if sample.kind == "chat":
            counts.update(t.speaker for t in sample.turns if t.speaker not in (me, ASSISTANT, "user"))
    return [name for name, _ in counts.most_common(limit)]


def _starters(probes: dict[str, list[str]], real: list[str]) -> tuple[str, list[str]]:
    languages = style.profile(real).languages
    known = [lang for lang, _ in languages.most_common() if lang != "?" and lang in probes]
    lang = known[0] if known else ("en" if "en" in probes else next(iter(probes)))
    return lang, [s for s in probes[lang] if s.strip()]


def default_make_generate(
    info: dict[str, Any], tokenizer: Any, max_new_tokens: int, sampling: Any, extra: list[str]
) -> MakeGenerate:
    """Generation through the Use layer: a Twin around the loaded model (the training rendering)."""
    from twinlm.evaluate.replies import twin_generate
    from twinlm.serve.backends import TransformersBackend
    from twinlm.serve.twin import Twin

    personas = {str(k): v for k, v in (info.get("personas") or {}).items()}
    for name in extra:  # friends the run did not train still get a prompt to speak in
        personas.setdefault(name, None)

    def make(model: Any, _: Any) -> Generate:
        twin = Twin(
            backend=TransformersBackend(model, tokenizer),
            source=Path("."),
            personas=personas,
            me=str(info.get("me") or ""),
            provenance=info,
        )
        return twin_generate(twin, max_new_tokens, sampling)

    return make


def evaluate(
    workspace: Path,
    run: str | None = None,
    *,
    pick: str | None = None,
    yes: bool = False,
    progress: Progress | None = None,
    make_generate: MakeGenerate | None = None,
    note: Callable[[str], None] | None = None,
    backend: str = "local",
    tell: Callable[[str], None] | None = None,
) -> EvalResult:
    """Evaluate run `run` (default: the latest) of `workspace`; see the module docstring. With backend
    "mistral-api": the hosted run's fine-tuned model and its base model through the API
    (twinlm.evaluate.hosted; `tell` prints what would be sent, before the confirmation)."""
    from twinlm.evaluate.perplexity import perplexity
    from twinlm.workspace import open_workspace

    if pick is not None and pick not in PICK_METRICS:
        raise TwinError(f"--pick {pick}: expected one of {', '.join(PICK_METRICS)}")
    if backend not in ("local", "mistral-api"):
        raise TwinError(f"--backend {backend!r}: use one of local, mistral-api")
    if backend == "mistral-api":
        from twinlm.evaluate.hosted import evaluate_hosted

        return evaluate_hosted(
            workspace,
            run,
            pick=pick,
            yes=yes,
            progress=progress or _quiet,
            note=note or (lambda _: None),
            tell=tell,
        )
    ws = open_workspace(Path(workspace))
    settings = ws.config.eval
    progress = progress or _quiet
    say = note or (lambda _: None)
    run_dir = find_run(ws.root, run)
    data_dir = ws.root / "data"
    rows = _eval_rows(data_dir)
    pts = points(run_dir)
    _check_tokenizer(run_dir, data_dir)
    warnings = [w for w in [_data_warning(run_dir, data_dir)] if w]
    base = base_folder(run_dir)
    info = _run_info(run_dir, base)
    me = str(info.get("me") or "me")
    plan = _plan(data_dir, settings, info, me, warnings)
    _check_before_work(settings, plan, pts, pick, yes)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = getattr(getattr(ws.config, "chat", None), "sampling", None)
    extra = [p["persona"] for p in plan.probes]
    make = make_generate or default_make_generate(info, tokenizer, settings.max_new_tokens, sampling, extra)
    tuned = pts[-1].same_as or pts[-1].label  # final weights equal to a checkpoint: that one
    where = device()
    results: dict[str, dict[str, Any]] = {}
    for point in pts:
        if point.same_as is not None and point.same_as in results:
            results[point.label] = {**results[point.same_as], "label": point.label, "same_as": point.same_as}
            say(f"{point.label}: the same weights as {point.same_as}")
            continue
        started = time.monotonic()
        model = load(base, point, where)
        ppl = perplexity(model, rows, int(pad_id), progress=progress(f"{point.label}: perplexity", len(rows)))
        result: dict[str, Any] = {"label": point.label, "step": point.step, **(ppl.to_json() if ppl else {})}
        if settings.checkpoints == "all" or point.label in (BASE, tuned):
            with_probes = point.label in (BASE, tuned)
            result.update(_generated(make(model, point), plan, point.label, with_probes, progress))
        result["seconds"] = round(time.monotonic() - started, 1)
        results[point.label] = result
        del model
        _free_memory()
        say(f"{point.label}: " + _headline(result))

    if settings.judge.enabled and plan.questions:
        _judge(ws.root, settings.judge, results, yes, progress)

    data = {
        "twinlm_eval": 1,
        "run": run_dir.name,
        "created": info["created"],
        "base_model": info.get("base_model"),
        "me": me,
        "tuned": tuned,
        "points": [results[p.label] for p in pts],
        "real": plan.places,
        "questions": len(plan.questions),
        "best": best_points(list(results.values())),
        "warnings": warnings,
    }
    from twinlm.train.metrics import read_metrics

    data["train_metrics"] = [
        {"step": e["step"], "split": e.get("split"), "loss": e.get("loss")} for e in read_metrics(run_dir)
    ]
    picked = None
    if pick is not None:
        picked = write_pick(run_dir, data, pick)
        data["picked"] = picked
    from twinlm.evaluate.report import write_report

    html, json_path = write_report(ws.root / "reports", data)
    return EvalResult(run_dir.name, html, json_path, data, picked)


@dataclass
class _Plan:
    """What each point is asked: held-out places per persona, document questions, probe conversations."""

    places: dict[str, list[dict[str, Any]]]
    questions: list[dict[str, str]]
    probes: list[dict[str, Any]]


def _plan(data_dir: Path, settings: Any, info: dict[str, Any], me: str, warnings: list[str]) -> _Plan:
    samples = eval_samples(data_dir)
    personas = [p for p in (info.get("personas") or {}) if isinstance(p, str)]
    places = {p: contexts(samples, p, settings.max_replies) for p in personas}
    places = {p: found for p, found in places.items() if found}
    friends = _friends(samples, me, settings.friends, settings.max_friends)
    questions = documents.load_questions(data_dir)
    if questions and ASSISTANT not in personas:
        warnings.append(
            f"{len(questions)} held-out questions, but the run trained no assistant persona to ask"
        )
        questions = []

    def plan(persona: str, partner: str, real: list[str]) -> dict[str, Any]:
        lang, starters = _starters(settings.probes, real)
        return {"persona": persona, "partner": partner, "language": lang, "starters": starters}

    probes = []
    if me in personas or not personas:
        probes.append(plan(me, friends[0] if friends else "someone", [x["real"] for x in places.get(me, [])]))
    if ASSISTANT in personas and me not in personas:  # an assistant twin (a ChatGPT export): asked by a user
        probes.append(plan(ASSISTANT, "user", [x["real"] for x in places.get(ASSISTANT, [])]))
    for friend in friends:
        probes.append(plan(friend, me, [t.text for s in samples for t in s.turns if t.speaker == friend]))
    return _Plan(places, questions, probes)


def _check_before_work(settings: Any, plan: _Plan, pts: list[Any], pick: str | None, yes: bool) -> None:
    """What would fail only at the end, said before the models run."""
    if pick == "judge" and not (settings.judge.enabled and plan.questions):
        why = "eval.judge is not enabled" if not settings.judge.enabled else "there are no held-out questions"
        raise TwinError(f"--pick judge: {why}, so no checkpoint gets a judge score")
    if pick in ("doc_f1",) and not plan.questions:
        raise TwinError(
            "--pick doc_f1: no held-out document questions (data/heldout_questions.jsonl, made by the "
            "build's teacher step with build.teacher.heldout_fraction)"
        )
    if (
        settings.judge.enabled
        and plan.questions
        and not yes
        and not (sys.stdin.isatty() and sys.stderr.isatty())
    ):
        from twinlm.privacy import endpoint_host

        most = (len(pts) if settings.checkpoints == "all" else 2) * len(plan.questions)
        host = endpoint_host(settings.judge.base_url)
        raise TwinError(
            f"eval.judge is enabled: grading sends up to {most} answers to the judge at {host}, and nobody "
            "is here to confirm: run again with --yes to send them, or set eval.judge.enabled: false"
        )


def _mean(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def _generated(
    generate: Generate, plan: _Plan, label: str, with_probes: bool, progress: Progress
) -> dict[str, Any]:
    """One point's generated metrics: replies in context and their style, documents, probes."""
    out: dict[str, Any] = {"replies": {}, "style": {}}
    tick = progress(f"{label}: replies", sum(len(v) for v in plan.places.values()))
    for persona, found in plan.places.items():
        replies = in_context(generate, found, persona, tick)
        out["replies"][persona] = replies
        out["style"][persona] = style.compare([x["real"] for x in found], replies)
    out["style_score"] = _mean([s["score"] for s in out["style"].values()])
    out["indistinguishability"] = _mean([s["indistinguishability"] for s in out["style"].values()])
    if plan.questions:
        tick = progress(f"{label}: documents", len(plan.questions))
        answers = []
        for q in plan.questions:
            answers.append(generate(ASSISTANT, [("user", q["question"])], None))
            tick()
        scored = documents.score(plan.questions, answers)
        out["documents"] = scored
        out["doc_f1"], out["doc_exact_match"] = scored["f1"], scored["exact_match"]
    if with_probes:
        tick = progress(f"{label}: probes", sum(len(p["starters"]) for p in plan.probes))
        out["probes"] = [
            {**p, "transcript": probe(generate, p["persona"], p["partner"], p["starters"], tick)}
            for p in plan.probes
        ]
    return out


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _headline(result: dict[str, Any]) -> str:
    parts = []
    if isinstance(result.get("eval_loss"), (int, float)):  # (a hosted model has none: a sentence)
        parts.append(f"eval loss {result['eval_loss']:.4f} (perplexity {result['perplexity']:.2f})")
    if result.get("style_score") is not None:
        parts.append(f"style {result['style_score']:.3f}")
    if result.get("doc_f1") is not None:
        parts.append(f"doc F1 {result['doc_f1']:.3f}")
    return ", ".join(parts) or "no score"


def _judge(
    root: Path, config: Any, results: dict[str, dict[str, Any]], yes: bool, progress: Progress
) -> None:
    from twinlm.privacy import check_endpoint_url, confirm_remote_send

    assert config.base_url
    check_endpoint_url(config.base_url, config.allow_insecure_http, setting="eval.judge")
    cache = root / "reports" / documents.JUDGE_CACHE
    scored = [r for r in results.values() if "documents" in r and "same_as" not in r]
    todo = [i for r in scored for i in documents.pending(config, r["documents"]["items"], cache)]
    if todo:
        chars = sum(len(i["question"]) + len(i["answer"]) + len(i["prediction"]) for i in todo)
        confirm_remote_send(config.base_url, len(todo), chars, yes=yes, what="answers to grade", to="judge")
    for r in scored:
        tick = progress(f"{r['label']}: judge", len(r["documents"]["items"]))
        r["judge"] = documents.judge(config, r["documents"]["items"], cache, tick=tick)
    for r in results.values():
        if "same_as" in r and r["same_as"] in results:
            r["judge"] = results[r["same_as"]].get("judge")


def best_points(points_: list[dict[str, Any]]) -> dict[str, str | None]:
    """Per metric, the label of the best trained point (the base model is the yardstick, not a choice)."""
    best: dict[str, str | None] = {}
    trained = [p for p in points_ if p["label"] != BASE and "same_as" not in p]
    for metric, (key, higher) in PICK_METRICS.items():
        scored = [p for p in trained if isinstance(p.get(key), (int, float))]
        if not scored:
            best[metric] = None
            continue
        # Ties go to the later point (more training at the same score).
        chosen = max(scored, key=lambda p: (p[key] if higher else -p[key], p["step"]))
        best[metric] = chosen["label"]
    return best


def write_pick(run_dir: Path, data: dict[str, Any], metric: str) -> dict[str, Any]:
    """runs/RUN/picked.json: the best point by `metric`, in the form `twinlm export` reads."""
    key, _ = PICK_METRICS[metric]
    label = data["best"].get(metric)
    if label is None:
        raise TwinError(
            f"--pick {metric}: no checkpoint of run {run_dir.name} has a {metric} score "
            + (
                "(enable eval.judge)"
                if metric == "judge"
                else "(no held-out data for it)"
                if metric != "eval_loss"
                else ""
            )
        )
    point = next(p for p in data["points"] if p["label"] == label)
    picked = {
        "twinlm_pick": 1,
        "checkpoint": None if label == FINAL else label,
        "step": point["step"],
        "metric": metric,
        "value": point[key],
        "picked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomic(run_dir / PICK_FILE, orjson.dumps(picked, option=orjson.OPT_INDENT_2).decode() + "\n")
    return picked


def read_pick(run_dir: Path) -> str | None:
    """The checkpoint `twinlm eval --pick` chose ("step-N"), None for the final weights or no pick."""
    try:
        data = orjson.loads((run_dir / PICK_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    value = data.get("checkpoint") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None
