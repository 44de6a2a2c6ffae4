"""Style fidelity: how close generated replies are to a person's real held-out messages.

A reply (a turn) is a burst of messages, one per line, as the dataset joins them. Per message we measure
its length in characters, the share of its letters in upper case, its emoji and punctuation marks,
whether it asks a question (has a "?") and its language; per reply, the messages in the burst. Words
(lower-cased letters only) give the vocabulary.

Distances, each in [0, 1], 0 for identical samples:

- length, burst, emoji, punctuation: the Wasserstein-1 (earth mover's) distance between the two
  distributions, divided by the larger of the two means (a relative shift: twice as long is 0.5 or
  more), capped at 1;
- casing, questions: Wasserstein-1 of values that are already in [0, 1] (the question flag's is the
  difference of the two question rates);
- language: total variation distance between the two language distributions;
- vocabulary: 1 - Jaccard overlap of the two word sets.

The style score is 1 - the mean distance (1: indistinguishable on every measure). The language is a
documented heuristic: the language whose common function words ("the", "und", "que", ...) a message
uses most; "?" where it has none or a tie (short messages often have none).

Indistinguishability: a classifier (character 1-4-grams, TF-IDF, logistic regression) learns to tell
real from generated messages; its cross-validated accuracy on balanced classes is ~0.5 when they cannot
be told apart and ~1.0 when they are plainly different.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

METRICS = ("length", "burst", "casing", "emoji", "punctuation", "questions", "language", "vocabulary")
# Numeric measures shown as distributions in the report (language and vocabulary are not numbers).
DISTRIBUTIONS = ("length", "burst", "casing", "emoji", "punctuation", "questions")

_EMOJI = re.compile(
    "[\U0001f1e6-\U0001f1ff\U0001f300-\U0001f5ff\U0001f600-\U0001f64f\U0001f680-\U0001f6ff"
    "\U0001f900-\U0001f9ff\U0001fa70-\U0001faff\u2600-\u27bf\u2b50\u2764]"
)
_WORD = re.compile(r"[^\W\d_]+")
_FUNCTION_WORDS = {
    "en": "the and you is are to of it that this what i my me not with have for was be do",
    "de": "der die das und ich du nicht ist ein eine mit auf sie es zu was wie bin hast noch",
    "es": "el la los las que y de en es no por para con una un lo pero muy estoy qué",
    "fr": "le la les et je tu est pas que une un des du pour avec ce ça suis mais très",
    "it": "il lo la gli che e di non è per una un sono con ma anche come questo cosa",
    "pt": "o os as que e de não é um uma para com eu você está mas muito isso tudo",
}
_LANGUAGE_WORDS = {lang: set(words.split()) for lang, words in _FUNCTION_WORDS.items()}


def messages_of(replies: Iterable[str]) -> list[str]:
    """The messages of some replies (a reply is a burst: one message per line), blank lines dropped."""
    return [line.strip() for reply in replies for line in reply.splitlines() if line.strip()]


def language(message: str) -> str:
    """The language whose function words the message uses most ("?" for none or a tie)."""
    words = _WORD.findall(message.lower())
    hits = Counter({lang: sum(w in vocab for w in words) for lang, vocab in _LANGUAGE_WORDS.items()})
    ranked = hits.most_common(2)
    if not ranked or ranked[0][1] == 0 or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
        return "?"
    return ranked[0][0]


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


@dataclass
class Profile:
    """The measures of one sample of replies (a person's real ones, or one model's)."""

    replies: int = 0
    length: list[float] = field(default_factory=list)
    burst: list[float] = field(default_factory=list)
    casing: list[float] = field(default_factory=list)
    emoji: list[float] = field(default_factory=list)
    punctuation: list[float] = field(default_factory=list)
    questions: list[float] = field(default_factory=list)
    languages: Counter[str] = field(default_factory=Counter)
    words: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)


def profile(replies: Sequence[str]) -> Profile:
    """Measure replies (each a newline-joined burst of messages)."""
    result = Profile(replies=len(replies))
    for reply in replies:
        lines = messages_of([reply])
        if lines:
            result.burst.append(float(len(lines)))
        for message in lines:
            result.messages.append(message)
            result.length.append(float(len(message)))
            letters = [ch for ch in message if ch.isalpha()]
            if letters:  # a message of emoji or digits says nothing about casing
                result.casing.append(sum(ch.isupper() for ch in letters) / len(letters))
            result.emoji.append(float(len(_EMOJI.findall(message))))
            result.punctuation.append(float(sum(map(_is_punctuation, message))))
            result.questions.append(1.0 if "?" in message else 0.0)
            result.languages[language(message)] += 1
            result.words.update(_WORD.findall(message.lower()))
    return result


def _wasserstein(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(a, b))


def _relative(a: Sequence[float], b: Sequence[float]) -> float:
    scale = max(sum(a) / len(a), sum(b) / len(b))
    return min(1.0, _wasserstein(a, b) / scale) if scale > 0 else 0.0


def _total_variation(a: Counter[str], b: Counter[str]) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def distances(real: Profile, generated: Profile) -> dict[str, float | None]:
    """Each metric's distance in [0, 1] (None where either side has nothing to measure)."""
    out: dict[str, float | None] = {}
    for name in ("length", "burst", "emoji", "punctuation"):
        a, b = getattr(real, name), getattr(generated, name)
        out[name] = round(_relative(a, b), 4) if a and b else None
    for name in ("casing", "questions"):
        a, b = getattr(real, name), getattr(generated, name)
        out[name] = round(min(1.0, _wasserstein(a, b)), 4) if a and b else None
    ok = real.languages and generated.languages
    out["language"] = round(_total_variation(real.languages, generated.languages), 4) if ok else None
    wa, wb = set(real.words), set(generated.words)
    out["vocabulary"] = round(1 - len(wa & wb) / len(wa | wb), 4) if wa and wb else None
    return out


def style_score(metric_distances: dict[str, float | None]) -> float | None:
    """1 - the mean of the distances that could be measured (1: the same style on every measure)."""
    known = [d for d in metric_distances.values() if d is not None]
    return round(1 - sum(known) / len(known), 4) if known else None


def distinctive_words(real: Profile, generated: Profile, top: int = 10) -> dict[str, list[str]]:
    """Words most typical of each side: smoothed log-odds of a word's share in one sample against the
    other's (words used at least twice in all)."""
    na, nb = sum(real.words.values()) or 1, sum(generated.words.values()) or 1
    vocab = [w for w in set(real.words) | set(generated.words) if real.words[w] + generated.words[w] >= 2]

    def odds(w: str) -> float:
        return math.log((real.words[w] + 0.5) / na) - math.log((generated.words[w] + 0.5) / nb)

    ranked = sorted(vocab, key=lambda w: (odds(w), w))
    return {
        "real": [w for w in reversed(ranked) if odds(w) > 0][:top],
        "generated": [w for w in ranked if odds(w) < 0][:top],
    }


MIN_PER_CLASS = 6  # fewer messages per side than this: no indistinguishability score


def indistinguishability(real: Sequence[str], generated: Sequence[str], seed: int = 0) -> float | None:
    """Cross-validated accuracy of telling `real` from `generated` messages (0.5: indistinguishable).

    Classes are balanced by a seeded subsample of the larger one, so chance is exactly 0.5; None where
    either side has fewer than MIN_PER_CLASS messages."""
    import random

    n = min(len(real), len(generated))
    if n < MIN_PER_CLASS:
        return None
    rng = random.Random(seed)
    a, b = rng.sample(list(real), n), rng.sample(list(generated), n)
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), lowercase=False, sublinear_tf=True),
        LogisticRegression(max_iter=1000),
    )
    folds = StratifiedKFold(n_splits=min(5, n // 2), shuffle=True, random_state=seed)
    scores: Any = cross_val_score(model, [*a, *b], [1] * n + [0] * n, cv=folds, scoring="accuracy")
    return round(float(scores.mean()), 4)


def compare(real_replies: Sequence[str], generated_replies: Sequence[str]) -> dict[str, Any]:
    """Everything the report shows for one person and one model: distances, score, classifier, words."""
    real, generated = profile(real_replies), profile(generated_replies)
    metric_distances = distances(real, generated)
    return {
        "distances": metric_distances,
        "score": style_score(metric_distances),
        "indistinguishability": indistinguishability(real.messages, generated.messages),
        "distinctive_words": distinctive_words(real, generated),
        "messages": {"real": len(real.messages), "generated": len(generated.messages)},
    }
