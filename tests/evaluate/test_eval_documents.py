"""Document answers scored with known answers (exact match and token F1 as SQuAD defines them), the
judge's grade read from its reply, its cache read past a torn line, and plain http to another machine
refused before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from twinlm.errors import TwinError
from twinlm.evaluate.documents import _grade, exact_match, judge, read_cache, score, token_f1
from twinlm.evaluate.settings import JudgeConfig


def test_exact_match_ignores_case_punctuation_and_articles() -> None:
    assert exact_match("The Landlord.", "landlord") == 1.0
    assert exact_match("the tenant", "the landlord") == 0.0


def test_token_f1_known_values() -> None:
    assert token_f1("three months", "three months") == 1.0
    assert token_f1("about three months", "three months") == pytest.approx(0.8)  # p 2/3, r 1
    assert token_f1("months", "three months") == pytest.approx(2 / 3)  # p 1, r 1/2
    assert token_f1("no idea", "three months") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "x") == 0.0


def test_score_means() -> None:
    questions = [{"question": "q1", "answer": "three months"}, {"question": "q2", "answer": "the landlord"}]
    result = score(questions, ["three months", "the tenant"])
    assert result["exact_match"] == 0.5
    assert result["f1"] == 0.5
    assert result["items"][1]["prediction"] == "the tenant"


def test_grade_is_the_first_number_out_of_ten() -> None:
    assert _grade("7") == 0.7
    assert _grade("Grade: 10/10") == 1.0
    assert _grade("I'd say 8.5") == 0.85
    assert _grade("no number") is None
    assert _grade("42") is None


def test_cache_skips_a_torn_last_line(tmp_path: Path) -> None:
    cache = tmp_path / "judge_cache.jsonl"
    cache.write_text('{"key": "a", "grade": 0.5}\n{"key": "b", "grade": null}\n{"key": "c", "gr')
    assert read_cache(cache) == {"a": 0.5}  # an ungraded answer is asked again


def test_plain_http_to_another_machine_is_refused_before_sending(tmp_path: Path) -> None:
    config = JudgeConfig(enabled=True, base_url="http://judge.example.com/v1", model="m")
    sent = []
    item = {"question": "q", "answer": "a", "prediction": "p"}
    with pytest.raises(TwinError, match=r"eval\.judge\.base_url: http://judge\.example\.com/v1 is plain"):
        judge(config, [item], tmp_path / "c.jsonl", post=lambda *a: sent.append(a) or "5")
    assert sent == []


def test_judge_config_needs_url_and_model_when_enabled() -> None:
    with pytest.raises(ValueError, match="base_url is empty"):
        JudgeConfig(enabled=True, model="m")
