"""`twinlm eval` as a user runs it, on a tiny trained run: every checkpoint scored, the report and its
JSON written, --pick marks the best checkpoint for export; bad input is one line each (no eval split, a
run with no checkpoints, a judge endpoint failing mid-way, with its grades kept and the rerun resuming)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from eval_helpers import QUESTIONS, RUN
from tiny_workspace import error_lines, invoke

from twinlm.config import load_config, render_config
from twinlm.evaluate.evaluate import PICK_FILE, read_pick
from twinlm.prepare.outputs import write_tokenized


def test_every_checkpoint_is_scored_and_the_report_written(trained_ws: Path, evaluated: dict) -> None:  # type: ignore[type-arg]
    labels = [p["label"] for p in evaluated["points"]]
    assert labels == ["base", "step-2", "step-4", "final"]
    final = evaluated["points"][-1]
    assert final["same_as"] == "step-4"  # the final weights are the last checkpoint's: scored once
    result = orjson.loads((trained_ws / "runs" / RUN / "result.json").read_bytes())
    step4 = evaluated["points"][2]
    # Perplexity is computed the way training computes its eval loss: the same number at the same step.
    assert step4["eval_loss"] == pytest.approx(result["last_eval_loss"], rel=1e-4)
    assert evaluated["points"][0]["eval_loss"] == pytest.approx(result["first_eval_loss"], rel=1e-4)
    assert evaluated["best"]["eval_loss"] == "step-4"

    report = json.loads(Path(evaluated["json"]).read_text())
    assert Path(evaluated["report"]) == trained_ws / "reports" / f"eval-{RUN}.html"
    points = {p["label"]: p for p in report["points"]}
    assert report["real"]["Alex Rivera"], "held-out replies of the person"
    for label in ("base", "step-2", "step-4"):
        replies = points[label]["replies"]["Alex Rivera"]
        assert len(replies) == len(report["real"]["Alex Rivera"])
        assert 0 <= points[label]["style_score"] <= 1
        assert points[label]["documents"]["questions"] == len(QUESTIONS)
    for label in ("base", "step-4"):  # probes: base and tuned
        probes = points[label]["probes"]
        assert probes[0]["persona"] == "Alex Rivera"
        assert len(probes) >= 2  # me, and friends talking to me
        transcript = probes[0]["transcript"]
        assert [t[1] for t in transcript[::2]] == ["hey", "what's up?"]
        assert all(t[0] == "Alex Rivera" for t in transcript[1::2])
    assert "probes" not in points["step-2"]


def test_pick_marks_the_best_checkpoint_for_export(trained_ws: Path, evaluated: dict) -> None:  # type: ignore[type-arg]
    picked = json.loads((trained_ws / "runs" / RUN / PICK_FILE).read_text())
    assert picked["checkpoint"] == "step-4" and picked["metric"] == "eval_loss" and picked["step"] == 4
    assert picked["value"] == pytest.approx(evaluated["points"][2]["eval_loss"])
    assert read_pick(trained_ws / "runs" / RUN) == "step-4"
    code, _, stderr = invoke("eval", "-w", str(trained_ws), "--pick", "loss")
    assert code == 1
    assert error_lines(stderr) == ["error: --pick loss: expected one of eval_loss, style, doc_f1, judge"]
    code, _, stderr = invoke("eval", "-w", str(trained_ws), "--pick", "judge")
    assert code == 1
    assert error_lines(stderr) == [
        "error: --pick judge: eval.judge is not enabled, so no checkpoint gets a judge score"
    ]


def test_eval_without_an_eval_split_is_one_line(copy_ws: Path) -> None:
    write_tokenized(copy_ws / "data" / "eval.parquet", [])  # as a build with eval_fraction 0 writes it
    code, _, stderr = invoke("eval", "-w", str(copy_ws))
    assert code == 1
    lines = error_lines(stderr)
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {copy_ws / 'data' / 'eval.parquet'}: the eval split is empty")
    assert "build.eval_fraction" in lines[0]


def test_a_run_without_checkpoints_is_one_line(copy_ws: Path) -> None:
    empty = copy_ws / "runs" / "empty"
    empty.mkdir()
    (empty / "config.json").write_bytes((copy_ws / "runs" / RUN / "config.json").read_bytes())
    code, _, stderr = invoke("eval", "empty", "-w", str(copy_ws))
    assert code == 1
    assert error_lines(stderr) == [
        f"error: {empty}: the run has no checkpoints and no final weights to evaluate (killed before its "
        "first save?); resume it with `twinlm train --resume` or train again"
    ]
    code, _, stderr = invoke("eval", "nope", "-w", str(copy_ws))
    assert error_lines(stderr) == [f"error: {copy_ws / 'runs' / 'nope'}: no such run (runs: {RUN}, empty)"]
    shutil.rmtree(copy_ws / "runs")
    code, _, stderr = invoke("eval", "-w", str(copy_ws))
    assert error_lines(stderr) == [
        f"error: {copy_ws / 'runs'}: no trained run to evaluate; train one first with `twinlm train`"
    ]


def test_a_dataset_built_with_another_tokenizer_is_one_line(copy_ws: Path) -> None:
    config = copy_ws / "data" / "tokenizer" / "tokenizer_config.json"
    config.write_text(config.read_text().replace("{", '{"model_max_length": 7, ', 1))
    code, _, stderr = invoke("eval", "-w", str(copy_ws))
    assert code == 1
    assert error_lines(stderr) == [
        f"error: {config}: the dataset was built with another tokenizer than run {RUN} trained with (another "
        "build.model?); build again with the run's model, or evaluate a run trained on this dataset"
    ]


class _Judge:
    """A loopback OpenAI-compatible endpoint that grades 7, failing (HTTP 500) after `fail_after` requests."""

    def __init__(self) -> None:
        self.requests = 0
        self.fail_after: int | None = None
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                judge.requests += 1
                if judge.fail_after is not None and judge.requests > judge.fail_after:
                    self.send_response(500)
                    self.end_headers()
                    return
                body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "7"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def judge_server() -> Iterator[_Judge]:
    judge = _Judge()
    thread = threading.Thread(target=judge.server.serve_forever, daemon=True)
    thread.start()
    yield judge
    judge.server.shutdown()
    judge.server.server_close()


def test_a_judge_failing_mid_way_keeps_its_grades_and_the_rerun_resumes(
    copy_ws: Path, judge_server: _Judge
) -> None:
    config = load_config(copy_ws / "twin.yaml")
    judge = {"enabled": True, "base_url": judge_server.url, "model": "grader", "max_retries": 0}
    settings = config.eval.model_copy(
        update={"checkpoints": "final", "judge": config.eval.judge.model_validate(judge)}
    )
    (copy_ws / "twin.yaml").write_text(render_config(config.model_copy(update={"eval": settings})))
    total = 2 * len(QUESTIONS)  # base and tuned answer every question

    # No terminal and no --yes: nothing is sent, and nothing is generated first.
    code, _, stderr = invoke("eval", "-w", str(copy_ws))
    assert code == 1 and judge_server.requests == 0
    host = judge_server.url.split("/")[2]
    assert error_lines(stderr) == [
        f"error: eval.judge is enabled: grading sends up to {total} answers to the judge at {host}, and "
        "nobody is here to confirm: run again with --yes to send them, or set eval.judge.enabled: false"
    ]
    assert not (copy_ws / "reports" / "eval-r.json").exists()

    judge_server.fail_after = 2
    code, _, stderr = invoke("eval", "-w", str(copy_ws), "--yes")
    assert code == 1
    cache = copy_ws / "reports" / "judge_cache.jsonl"
    lines = error_lines(stderr)
    assert len(lines) == 1
    assert lines[0].startswith(
        f"error: the judge {judge_server.url}/chat/completions (model 'grader') answered HTTP 500"
    )
    assert lines[0].endswith(
        f"the 2 grade(s) it gave are kept in {cache}: run `twinlm eval` again to ask only for the rest"
    )
    assert len(cache.read_text().splitlines()) == 2

    judge_server.fail_after, judge_server.requests = None, 0
    code, stdout, stderr = invoke("eval", "-w", str(copy_ws), "--yes", "--json")
    assert code == 0, stderr
    assert judge_server.requests == total - 2  # only the missing grades were asked for
    points = {p["label"]: p for p in json.loads(stdout)["points"]}
    assert points["base"]["judge"] == points["step-4"]["judge"] == pytest.approx(0.7)
    assert "judge" not in points["step-2"]  # eval.checkpoints: final
    assert json.loads(stdout)["best"]["judge"] == "step-4"


def test_a_twin_that_replies_exactly_like_the_person_has_a_perfect_style_score(copy_ws: Path) -> None:
    """evaluate() with a fake generation (the one function all generation goes through) that answers
    each held-out place with what the person really wrote: every style distance 0, the score 1."""
    from twinlm.evaluate.evaluate import evaluate
    from twinlm.evaluate.replies import contexts, eval_samples

    real = {
        repr(place["context"]): place["real"]
        for place in contexts(eval_samples(copy_ws / "data"), "Alex Rivera", 100)
    }

    def make(model: object, point: object):  # type: ignore[no-untyped-def]
        return lambda persona, turns, system: real.get(repr(list(turns)), "the landlord")

    result = evaluate(copy_ws, make_generate=make)
    for point in result.data["points"]:
        style = point["style"]["Alex Rivera"]
        assert set(style["distances"].values()) == {0.0}, point["label"]
        assert point["style_score"] == 1.0
        assert point["documents"]["items"][1]["f1"] == 1.0  # "the landlord" is the second reference answer
    assert result.html.is_file() and result.json.is_file()
