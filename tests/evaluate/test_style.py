"""Style metrics with known answers: zero distance for identical samples, growing with known shifts;
the classifier at chance on two halves of one person's messages and near 100% on two different writers."""

from __future__ import annotations

import random

import pytest

from twinlm.evaluate.style import (
    METRICS,
    compare,
    distances,
    indistinguishability,
    language,
    profile,
    style_score,
)

OPENERS = ["ok", "yeah", "lol", "haha", "sure", "omg", "nah", "yep", "hmm", "wait"]
MIDDLES = ["see you at 8", "pizza again", "call me later", "that was fun", "running late", "on my way"]
ENDINGS = ["", " 😂", " 🍕", "!!", "", " :)"]


def casual(n: int, seed: int) -> list[str]:
    """One writer: lower-case, short, emoji, bursts of one or two messages."""
    rng = random.Random(seed)
    replies = []
    for _ in range(n):
        lines = [
            f"{rng.choice(OPENERS)} {rng.choice(MIDDLES)}{rng.choice(ENDINGS)}"
            for _ in range(rng.choice((1, 1, 2)))
        ]
        replies.append("\n".join(lines))
    return replies


FORMAL = [
    "Dear colleague, I would appreciate your feedback on the attached quarterly report.",
    "Thank you for your message. I shall respond in detail by Friday afternoon.",
    "Please find the revised agenda for Monday's meeting enclosed herewith.",
    "Kindly confirm your availability for the board review next Wednesday.",
    "With regard to your enquiry, the invoice was settled on the fifteenth.",
    "I remain at your disposal should any further questions arise.",
]


def formal(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(FORMAL) for _ in range(n)]


def test_identical_samples_have_zero_distance_and_a_perfect_score() -> None:
    replies = casual(80, 1)
    d = distances(profile(replies), profile(list(replies)))
    assert set(d) == set(METRICS)
    assert all(value == 0 for value in d.values()), d
    assert style_score(d) == 1


@pytest.mark.parametrize(
    ("metric", "shift"),
    [
        ("length", lambda s, k: "\n".join(line + " blah" * 3 * k for line in s.splitlines())),
        ("burst", lambda s, k: "\n".join([s, *["also"] * k])),
        ("casing", lambda s, k: [s.capitalize(), s.title(), s.upper()][k - 1]),
        ("emoji", lambda s, k: "\n".join(line + " 😀" * k for line in s.splitlines())),
        ("punctuation", lambda s, k: "\n".join(line + "." * k for line in s.splitlines())),
        (
            "questions",
            lambda s, k: "\n".join(line + "?" * (len(line) % 4 < k) for line in s.splitlines()),
        ),
        ("language", lambda s, k: s + ("\nund das ist nicht gut, ich bin müde" * k)),
        (
            "vocabulary",
            lambda s, k: " ".join(f"q{w}q" if i % (4 - k) == 0 else w for i, w in enumerate(s.split(" "))),
        ),
    ],
)
def test_distances_grow_with_a_known_shift(metric: str, shift) -> None:  # type: ignore[no-untyped-def]
    real = casual(60, 2)
    real_profile = profile(real)
    found = [distances(real_profile, profile([shift(r, k) for r in real]))[metric] for k in (1, 2, 3)]
    assert found[0] is not None and found[0] > 0, found
    assert found[0] < found[1] < found[2], (metric, found)
    # and the overall score falls as the shift grows
    scores = [style_score(distances(real_profile, profile([shift(r, k) for r in real]))) for k in (1, 3)]
    assert scores[0] > scores[1]


def test_classifier_is_at_chance_on_one_person_and_near_perfect_on_two_writers() -> None:
    one = [m for r in casual(400, 3) for m in r.splitlines()]
    half = len(one) // 2
    same = indistinguishability(one[:half], one[half:])
    assert same is not None and 0.35 <= same <= 0.65, same
    other = [m for r in formal(200, 4) for m in r.splitlines()]
    different = indistinguishability(one[:200], other)
    assert different is not None and different >= 0.95, different


def test_too_few_messages_give_no_classifier_score() -> None:
    assert indistinguishability(["a", "b"], ["c", "d"]) is None


def test_language_heuristic() -> None:
    assert language("what is the plan for tonight, are you coming?") == "en"
    assert language("ich bin noch nicht zu hause, und du?") == "de"
    assert language("no sé, pero la fiesta es muy tarde") == "es"
    assert language("ok 👍") == "?"


def test_compare_reports_every_part() -> None:
    result = compare(casual(40, 5), formal(40, 6))
    assert result["score"] is not None and result["score"] < 0.8
    assert result["indistinguishability"] is not None and result["indistinguishability"] > 0.9
    assert result["distinctive_words"]["real"] and result["distinctive_words"]["generated"]
    assert result["messages"]["generated"] == 40
