"""`twinlm eval --backend mistral-api [RUN]`: a hosted run (runs/RUN/hosted.json) evaluated through the API.

Tuned = the job's fine-tuned model (`ft:...`), base = the model the job fine-tuned (hosted.json's `model`),
both through the same API and the same hosted twin (twinlm.hosted.twin: the chat sent as the messages
training used), greedy through eval's one generation function (`twin_generate`). Replies in held-out
contexts, their style, the document questions and the probes are scored as for a local run (the same
plan and scoring as twinlm.evaluate.evaluate). Perplexity is not available: the chat API returns no
token probabilities for the eval split, so the report and the JSON say so where a number would be.

Nothing is sent unasked: the API key (environment only) and the run are checked first, then what would
be sent (prompts, conversations, characters, to which URL) is said and confirmed (or --yes).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twinlm.errors import TwinError
from twinlm.evaluate.replies import ASSISTANT, twin_generate
from twinlm.evaluate.weights import BASE, FINAL

if TYPE_CHECKING:
    from twinlm.evaluate.evaluate import EvalResult

UNAVAILABLE = "not available for a hosted model"
WHY_UNAVAILABLE = (
    f"Eval loss and perplexity: {UNAVAILABLE} (the Mistral chat API returns no token probabilities for "
    "the eval split). The job's own validation loss, as Mistral measured it on the uploaded eval file, is "
    "the eval curve of the loss plot."
)


def hosted_run(root: Path, name: str | None) -> Path:
    """runs/<name> or the latest hosted run, in eval's words."""
    from twinlm.hosted.job import RECORD

    runs = root / "runs"
    if name is not None:
        if "/" in name or name in (".", "..") or not (runs / name / RECORD).is_file():
            raise TwinError(
                f"{runs / name}: not a hosted run (no {RECORD}); evaluate a local run without "
                "--backend mistral-api"
            )
        return runs / name
    found = sorted(runs.glob(f"*/{RECORD}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise TwinError(
            f"{runs}: no hosted run to evaluate; train one with twinlm train --backend mistral-api"
        )
    return found[-1].parent


def evaluate_hosted(
    workspace: Path,
    run: str | None,
    *,
    pick: str | None,
    yes: bool,
    progress: Any,
    note: Callable[[str], None],
    tell: Callable[[str], None] | None = None,
) -> EvalResult:
    """The hosted counterpart of twinlm.evaluate.evaluate.evaluate (same arguments, same EvalResult);
    `tell` prints the lines of the confirmation (names from the chats in them: the CLI makes them plain)."""
    from twinlm.evaluate import evaluate as local
    from twinlm.hosted.api import api_key
    from twinlm.hosted.backend import MistralAPIBackend
    from twinlm.hosted.job import read_record
    from twinlm.hosted.twin import open_hosted_twin
    from twinlm.workspace import open_workspace

    if pick is not None:
        raise TwinError(
            f"--pick {pick}: picks a checkpoint for twinlm export; a hosted run has one model, at Mistral"
        )
    api_key()  # first: without a key nothing else happens
    ws = open_workspace(Path(workspace))
    settings = ws.config.eval
    run_dir = hosted_run(ws.root, run)
    record = read_record(run_dir)
    tuned_twin = open_hosted_twin(ws.root, ws.config, run_dir.name)  # (no request: a client is made)
    base_model = str(record.get("model") or "")
    if not base_model:
        raise TwinError(f"{run_dir / 'hosted.json'}: no base model recorded; train the hosted run again")
    data_dir = ws.root / "data"
    warnings = [w for w in [_data_warning(run_dir, record, data_dir)] if w]
    info = {"personas": list(tuned_twin.personas), "me": tuned_twin.me}
    plan = local._plan(data_dir, settings, info, tuned_twin.me, warnings)
    _answerable(plan, warnings)
    if not plan.places and not plan.questions and not plan.probes:
        raise TwinError(
            f"{data_dir / 'samples.jsonl'}: no held-out place where a trained person replies, no question, "
            "no probe: nothing to evaluate; set build.eval_fraction (e.g. 0.1), then build and train again"
        )
    points = [_Point(BASE, 0, base_model), _Point(FINAL, _steps(run_dir), tuned_twin.backend.model)]
    local._check_before_work(settings, plan, points, None, yes)
    _confirm(tuned_twin, plan, base_model, yes=yes, say=tell or _echo)

    for extra in (p["persona"] for p in plan.probes):  # friends the job did not train get a prompt too
        tuned_twin.personas.setdefault(extra, None)
    base_twin = dataclasses.replace(
        tuned_twin,
        backend=MistralAPIBackend(tuned_twin.backend.api, base_model),
        personas=dict(tuned_twin.personas),
    )
    sampling = getattr(getattr(ws.config, "chat", None), "sampling", None)
    results: dict[str, dict[str, Any]] = {}
    # The tuned model first: if it cannot answer, nothing is spent on the base model.
    for point, twin in ((points[1], tuned_twin), (points[0], base_twin)):
        started = time.monotonic()
        result: dict[str, Any] = {
            "label": point.label,
            "step": point.step,
            "model": point.model,
            "eval_loss": UNAVAILABLE,
            "perplexity": UNAVAILABLE,
        }
        generate = twin_generate(twin, settings.max_new_tokens, sampling)
        try:
            result.update(local._generated(generate, plan, point.label, True, progress))
        except TwinError as e:
            if point.label != BASE:
                raise
            # "Where possible": the API may not serve the base model for chat (retired, not allowed).
            warnings.append(f"the base model {base_model} could not be asked through the API ({e})")
            result["unavailable"] = str(e)
        result["seconds"] = round(time.monotonic() - started, 1)
        results[point.label] = result
        note(f"{point.label} ({point.model}): " + local._headline(result))

    if settings.judge.enabled and plan.questions:
        local._judge(ws.root, settings.judge, results, yes, progress)
    return _write(ws.root, run_dir, record, tuned_twin, base_model, results, plan, warnings)


@dataclasses.dataclass(frozen=True)
class _Point:
    label: str
    step: int
    model: str


def _steps(run_dir: Path) -> int:
    from twinlm.train.metrics import read_metrics

    return max((int(e.get("step") or 0) for e in read_metrics(run_dir)), default=0)


def _data_warning(run_dir: Path, record: dict[str, Any], data_dir: Path) -> str | None:
    from twinlm.train.run import data_fingerprint

    recorded = record.get("data_fingerprint")
    if isinstance(recorded, dict) and recorded != data_fingerprint(data_dir):
        return (
            f"the dataset changed after hosted run {run_dir.name} was uploaded (built again?): its eval "
            "split may hold training data"
        )
    return None


def _answerable(plan: Any, warnings: list[str]) -> None:
    """A hosted chat must end with someone else's message (consecutive turns are one message, as in the
    training files): a place right after the person's own message is left out, and said."""
    left_out = 0
    for persona, found in list(plan.places.items()):
        kept = [x for x in found if x["context"] and x["context"][-1][0] != persona]
        left_out += len(found) - len(kept)
        if kept:
            plan.places[persona] = kept
        else:
            del plan.places[persona]
    if left_out:
        warnings.append(
            f"{left_out} held-out replies that follow the person's own message were left out (the hosted "
            "model was trained on such messages joined into one)"
        )


def _confirm(twin: Any, plan: Any, base_model: str, *, yes: bool, say: Callable[[str], None]) -> None:
    """Say what would leave the machine (the held-out chats, as prompts to both models), then ask."""
    from twinlm.hosted.dataset import names
    from twinlm.privacy import confirm_remote_send, shown_url

    def chars(persona: str, turns: list[tuple[str, str]], system: str | None) -> int:
        return sum(len(m["content"]) for m in twin.messages(persona, turns, system))

    calls, characters = 0, 0
    speakers: Counter[str] = Counter()
    conversations = set()
    for persona, found in plan.places.items():
        for place in found:
            calls += 1
            characters += chars(persona, list(place["context"]), place.get("system"))
            speakers.update(who for who, _ in place["context"])
            conversations.add(place["sample"])
    for q in plan.questions:
        calls += 1
        characters += chars(ASSISTANT, [("user", q["question"])], None)  # (_plan: only with that persona)
    probe_messages = 0
    for p in plan.probes:
        system = len(twin.system_prompt(p["persona"], [p["partner"]]) or "")
        for k in range(len(p["starters"])):
            calls += 1
            probe_messages += 1
            # Each request: the system prompt, this starter, and the starters before it again.
            characters += system + sum(len(s) for s in p["starters"][: k + 1])
    models = 2
    url = twin.backend.api.base_url
    say(
        f"Evaluating hosted run {twin.source.name} sends held-out chats to the Mistral API "
        f"({shown_url(url)}), each to {twin.backend.model} (tuned) and to {base_model} (base):"
    )
    replies = sum(len(v) for v in plan.places.values())
    say(f"  {replies:,} held-out places to reply in, from {len(conversations):,} eval conversations")
    if plan.questions:
        say(f"  {len(plan.questions):,} held-out document questions")
    if probe_messages:
        say(f"  {probe_messages:,} probe messages in {len(plan.probes):,} probe conversations")
    say(f"  messages sent as context, by: {names(speakers)}")
    say("  (with each request its system prompt; the probes also send back the models' own replies)")
    confirm_remote_send(url, calls * models, characters * models, yes=yes, what="prompts", to="Mistral API")


def _echo(line: str) -> None:
    import typer

    typer.echo(line, err=True)


def _write(
    root: Path,
    run_dir: Path,
    record: dict[str, Any],
    twin: Any,
    base_model: str,
    results: dict[str, dict[str, Any]],
    plan: Any,
    warnings: list[str],
) -> EvalResult:
    from datetime import UTC, datetime

    from twinlm.evaluate.evaluate import EvalResult, best_points
    from twinlm.evaluate.report import write_report
    from twinlm.train.metrics import read_metrics

    points = [results[BASE], results[FINAL]]
    data = {
        "twinlm_eval": 1,
        "run": run_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": base_model,
        "me": twin.me,
        "tuned": FINAL,
        "points": points,
        "real": plan.places,
        "questions": len(plan.questions),
        "best": best_points(points),
        "warnings": warnings,
        "hosted": {
            "backend": "mistral-api",
            "base_url": record.get("base_url"),
            "job_id": record.get("job_id"),
            "fine_tuned_model": twin.backend.model,
            "base_model": base_model,
        },
        "note": f"Hosted run: tuned = {twin.backend.model}, base = {base_model}, both asked through the "
        f"Mistral API. {WHY_UNAVAILABLE}",
        "train_metrics": [
            {"step": e["step"], "split": e.get("split"), "loss": e.get("loss")} for e in read_metrics(run_dir)
        ],
    }
    html, json_path = write_report(root / "reports", data)
    return EvalResult(run_dir.name, html, json_path, data, None)
