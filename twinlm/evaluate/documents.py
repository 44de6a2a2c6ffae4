"""Documents: the held-out questions (data/heldout_questions.jsonl, written by build's teacher step)
answered by each model, scored by exact match and token F1 against the reference answers (SQuAD's
normalisation: lower case, no punctuation, no articles, single spaces), and optionally by a judge model
behind an OpenAI-compatible endpoint.

The judge is opt-in (eval.judge.enabled) and says what it will send before sending (like the teacher).
Its grades are appended to a cache file one flushed line each, keyed by the question, reference, answer
and judge model: a judge that fails mid-way leaves every grade it gave on disk, and the next run asks
only for the missing ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twinlm.errors import TwinError
from twinlm.evaluate.settings import JudgeConfig
from twinlm.privacy import check_endpoint_url, shown_url

QUESTIONS = "heldout_questions.jsonl"
JUDGE_CACHE = "judge_cache.jsonl"
JUDGE_PROMPT_VERSION = 1
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def load_questions(data_dir: Path) -> list[dict[str, str]]:
    """[{"question", "answer"}] from the build's held-out list (empty where there is none)."""
    path = data_dir / QUESTIONS
    if not path.is_file():
        return []
    found = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise TwinError(f"{path}: line {n}: not JSON ({err.msg}); run `twinlm build` again") from None
        if (
            isinstance(item, dict)
            and isinstance(item.get("question"), str)
            and isinstance(item.get("answer"), str)
        ):
            found.append({"question": item["question"], "answer": item["answer"]})
    return found


def normalize(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (1 for two empty texts)."""
    got, want = normalize(prediction).split(), normalize(reference).split()
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def score(questions: Sequence[dict[str, str]], answers: Sequence[str]) -> dict[str, Any]:
    """Mean exact match and token F1, and each answer with its scores."""
    items = [
        {
            **q,
            "prediction": a,
            "exact_match": exact_match(a, q["answer"]),
            "f1": round(token_f1(a, q["answer"]), 4),
        }
        for q, a in zip(questions, answers, strict=True)
    ]
    n = len(items) or 1
    return {
        "questions": len(items),
        "exact_match": round(sum(i["exact_match"] for i in items) / n, 4),
        "f1": round(sum(i["f1"] for i in items) / n, 4),
        "items": items,
    }


# --- the judge --------------------------------------------------------------------------------------


def _key(config: JudgeConfig, item: dict[str, str]) -> str:
    material = json.dumps(
        [
            JUDGE_PROMPT_VERSION,
            config.model,
            config.prompt,
            item["question"],
            item["answer"],
            item["prediction"],
        ],
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def read_cache(path: Path) -> dict[str, float]:
    """Grades by key; a torn last line (a kill mid-write) is ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    grades = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("key"), str)
            and isinstance(entry.get("grade"), (int, float))
        ):
            grades[entry["key"]] = float(entry["grade"])
    return grades


def _grade(text: str) -> float | None:
    """The first number of the judge's reply, as a share of 10 (None: no number in 0..10)."""
    match = re.search(r"\d+(?:\.\d+)?", text)
    if match is None or not 0 <= float(match.group()) <= 10:
        return None
    return float(match.group()) / 10


def pending(config: JudgeConfig, items: Sequence[dict[str, Any]], cache: Path) -> list[dict[str, Any]]:
    """The items the cache holds no grade for (what a run would send)."""
    have = read_cache(cache)
    return [i for i in items if _key(config, i) not in have]


def judge(
    config: JudgeConfig,
    items: Sequence[dict[str, Any]],
    cache: Path,
    *,
    tick: Callable[[], None] | None = None,
    post: Callable[[str, dict[str, Any], dict[str, str]], Any] | None = None,
) -> float | None:
    """The judge's mean grade (0..1) of `items` (question, answer = reference, prediction), asking only
    for grades the cache lacks. A failure is one TwinError line that says how many grades are kept."""
    assert config.base_url and config.model  # JudgeConfig guarantees both when enabled
    check_endpoint_url(config.base_url, config.allow_insecure_http, setting="eval.judge")
    grades = read_cache(cache)
    key = os.environ.get(config.api_key_env, "").strip()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"{config.base_url}/chat/completions"
    send = post or _post(config)
    cache.parent.mkdir(parents=True, exist_ok=True)
    results = []
    with cache.open("a", encoding="utf-8") as out:
        for item in items:
            k = _key(config, item)
            if k not in grades:
                prompt = config.prompt.format(
                    question=item["question"], reference=item["answer"], answer=item["prediction"]
                )
                body = {
                    "model": config.model,
                    "messages": [{"role": "user", "content": prompt}],
                    "temperature": 0,
                    "max_tokens": 16,
                }
                try:
                    reply = send(url, body, headers)
                except TwinError as err:
                    kept = len(read_cache(cache))
                    raise TwinError(
                        f"{err}; the {kept} grade(s) it gave are kept in {cache}: run `twinlm eval` again "
                        "to ask only for the rest"
                    ) from None
                grade = _grade(reply)
                out.write(
                    json.dumps({"key": k, "model": config.model, "grade": grade, "reply": reply[:200]}) + "\n"
                )
                out.flush()
                grades[k] = grade  # type: ignore[assignment]
            if grades[k] is not None:
                results.append(grades[k])
            if tick is not None:
                tick()
    return round(sum(results) / len(results), 4) if results else None


def _post(config: JudgeConfig) -> Callable[[str, dict[str, Any], dict[str, str]], str]:
    import httpx

    def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> str:
        where = f"judge {shown_url(url)} (model {config.model!r})"
        for attempt in range(config.max_retries + 1):
            try:
                response = httpx.post(url, json=body, headers=headers, timeout=config.timeout_s)
            except httpx.TransportError as err:
                problem = f"cannot reach the {where} ({type(err).__name__})"
            else:
                if response.status_code == 200:
                    try:
                        content = response.json()["choices"][0]["message"]["content"]
                    except (ValueError, KeyError, IndexError, TypeError):
                        content = ""
                    return content if isinstance(content, str) else ""
                problem = f"the {where} answered HTTP {response.status_code}"
                if response.status_code in (401, 403):
                    problem += f": check the API key in ${config.api_key_env}"
                    break
                if response.status_code != 429 and response.status_code < 500:
                    break
            if attempt < config.max_retries:
                time.sleep(min(8.0, 0.5 * 2**attempt))
        raise TwinError(problem)

    return post
