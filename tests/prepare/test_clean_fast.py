"""The fast paths of the cleaning and redaction rules (issue 18) give what the plain rules give.

Each shortcut is compared with the rule it skips, written here as it was before: a text's words with
one regex, the duplicate key with split() and join(), redaction's "nothing to find" check against
running every rule, the farewell prefilter against a bounded memory, trained-label runs in numpy.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np
import pytest

from twinlm.prepare import clean
from twinlm.prepare.clean import CleanConfig, Msg, clean_session, is_conversation_ender, words
from twinlm.prepare.redact import KINDS, _may_change, _once
from twinlm.prepare.sample import IGNORE_INDEX
from twinlm.prepare.whose import _runs

_WORD = re.compile(r"[^\W_]+")
_APOSTROPHES = str.maketrans("", "", "'’‘`´ʼ")

# Every kind of whitespace, apostrophes (U+02BC is also a letter), casefold() expanders ("ß", "ŉ",
# "ﬁ", "İ"), digits that are not ASCII, combining and invisible characters, emoji, "_".
TRICKY = [
    *(chr(c) for c in range(0x110000) if chr(c).isspace()),
    *"aAß_'’‘`´ʼ-.,!?😂1٣²½ǅŉﬁİ\u0345\u0301\u200d\u00ad",
]


def _plain_words(text: str) -> list[str]:
    return _WORD.findall(text.casefold().translate(_APOSTROPHES))


def _samples(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(TRICKY) for _ in range(rng.randint(0, 10))) for _ in range(n)]


@pytest.mark.parametrize(
    "text", ["ŉ", "can ŉ go", "Hello World", "dont", "don't", "hi  there", "a\u00a0b", "x_y", "١٢٣ go", "²"]
)
def test_words_are_the_regex_words(text: str) -> None:
    assert words(text) == _plain_words(text)


def test_words_are_the_regex_words_on_generated_text() -> None:
    for text in _samples(1, 20_000):
        assert words(text) == _plain_words(text), repr(text)


def test_duplicate_key_is_the_split_and_joined_casefold() -> None:
    texts = [
        "Same  text",
        " lead",
        "trail ",
        "tab\there",
        "nbsp\u00a0x",
        "line\u2028sep",
        "ok",
        "",
        *_samples(2, 20_000),
    ]
    for text in texts:
        assert clean._duplicate_key(text) == " ".join(text.casefold().split()), repr(text)


def test_duplicates_with_other_whitespace_are_still_found() -> None:
    session = [Msg("a", "Hello\u00a0there", "text", 1), Msg("a", "hello there", "text", 2)]
    counts: Counter[str] = Counter()
    assert clean._without_duplicates(session, 20, counts) == session[:1]
    assert counts["message dropped: duplicate"] == 1


def test_clean_session_keeps_the_message_objects() -> None:
    """The curation view finds survivors by identity: the rules must not copy messages."""
    session = [Msg("a", f"message number {i} about climbing", "text", i) for i in range(6)]
    kept = clean_session(session, CleanConfig(), Counter())
    assert kept is not None and all(any(k is m for m in session) for k in kept)


@pytest.mark.parametrize(
    "text",
    [
        "call me at 5",
        "mail sam@example.com",
        "x=1",
        "a" * 16,
        "key abcdefghijklmnop here",
        "password: hunter22",
        "PW: hunter22",
        "-----BEGIN RSA PRIVATE KEY----- abc",
    ],
)
def test_texts_with_a_candidate_go_through_the_rules(text: str) -> None:
    assert _may_change(text)


def test_a_text_said_to_hold_nothing_is_left_as_it_is_by_every_rule() -> None:
    rng = random.Random(3)
    pieces = [*TRICKY, "password", "PW", "mdp", "contraseña", "mot de passe", "://", "sk-", "token", ":", "ſ"]
    skipped = 0
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        if not _may_change(text):
            skipped += 1
            counts: Counter[str] = Counter()
            for region in (None, "US", "DE"):
                assert _once(text, list(KINDS), counts, region) == text, repr(text)
            assert not counts
    assert skipped > 1000  # the shortcut is taken


def test_farewells_are_found_whatever_the_prefilter_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clean, "_SEEN_WORDS_MAX", 4)  # the word memory is cleared again and again
    config = CleanConfig(conversation_enders_extra=["see you at the crag"])
    texts = ["ok gtg", "byeee all", "lunch at the crag", "good night guys", "i have to go to the dentist"]
    texts += [f"word{i} filler text" for i in range(20)] + ["see you at the crag!", "ok gtg"]
    expected = [True, True, False, True, False, *[False] * 20, True, True]
    assert [is_conversation_ender(t, config) for t in texts] == expected


X = IGNORE_INDEX  # not trained


@pytest.mark.parametrize(
    ("labels", "runs"),
    [([], []), ([X, X, X], []), ([5, 6], [2]), ([X, 5, 6, X, 7, X, X, 8, 9, 10], [2, 1, 3]), ([4, X], [1])],
)
def test_trained_runs_are_the_same_from_a_list_or_an_array(labels: list[int], runs: list[int]) -> None:
    assert _runs(labels) == runs
    assert _runs(np.array(labels, dtype=np.int32)) == runs


@pytest.mark.parametrize("mode", ["cut", "drop"])
def test_clean_session_cuts_at_the_first_message_is_conversation_ender_names(mode: str) -> None:
    """clean_session's farewell search (length test inline, rules looked up once) stops where a plain
    loop over is_conversation_ender stops: farewells at and past enders_max_chars, unicode, empty text."""
    config = CleanConfig(conversation_enders=mode, enders_max_chars=12, drop_duplicates=False)
    texts = [
        "",
        "gtg",
        "ok gtg lol",
        "ok gtg now guys",  # a farewell over 12 characters: not one
        "gute nacht 😴",
        "à demain!",
        "bye?",
        "gtg\u3000 ",
        "x" * 5000,
        "I have to go",
        "well…",
    ]
    rng = random.Random(18)
    for _ in range(300):
        picked = rng.sample(texts, rng.randint(1, 6))
        messages = [Msg(rng.choice(["me", "Ann", "", "😀 Bo"]), t, "text", None) for t in picked]
        at = next((i for i, m in enumerate(messages) if is_conversation_ender(m.text, config)), None)
        counts: Counter[str] = Counter()
        kept = clean_session(messages, config.model_copy(update={"low_quality_sessions": False}), counts)
        if at is None:
            assert kept == messages
        elif mode == "drop" or at == 0:
            assert kept is None
        else:
            assert kept == messages[:at]


def _plain_non_reply(text: str, config: CleanConfig) -> str | None:
    """`_non_reply` as it was before its first-word shortcut."""
    rules = clean._rules(config)
    found = words(text)
    if not found:
        return clean._non_reply(text, config, rules)  # unchanged: no words
    if not config.non_replies:
        return None
    if (
        all(map(rules.is_non_reply_word, found))
        or (len(text) <= rules.raw_max and text.casefold() in rules.non_reply_raw)
        or (
            len(found) <= rules.longest_phrase
            and " ".join(map(clean._squeeze, found)) in rules.non_reply_phrases
        )
    ):
        return "message dropped: non-reply"
    return None


@pytest.mark.parametrize(
    "config",
    [
        CleanConfig(),
        CleanConfig(languages=["de"], non_replies_extra=["+1", "thank you so much", "Ñoño!", "k thx bye"]),
        CleanConfig(enders_max_chars=4),  # nearly every text read to its first word only
    ],
)
def test_non_replies_found_by_their_first_word_are_the_plain_rules_non_replies(config: CleanConfig) -> None:
    rules = clean._rules(config)
    entries = sorted(rules.non_reply_raw)
    rng = random.Random(7)
    texts = [*entries, *_samples(3, 5_000)]
    for entry in entries:
        stretched = "".join(c * rng.randint(1, 3) for c in entry)
        other = rng.choice(entries)
        texts += [
            entry.upper(),
            stretched,
            f"{entry}!!",
            f"{entry} 😂",
            f"ok {entry}",
            f"{entry} lol",
            f"{entry} {other}",
            f"{entry} then we go",
            f"we {entry}",
            f"'{entry}'",
            f"  {entry.title()}  ",
            f"{entry} " * 30,
            "\u3000 \n" * 40 + entry,
            "🙂 " * 60 + f"{entry} {other}",
        ]
    dropped = 0
    for text in texts:
        expected = _plain_non_reply(text, config)
        assert clean._non_reply(text, config, rules) == expected, repr(text)
        dropped += expected is not None
    assert 0 < dropped < len(texts)  # both outcomes were checked


def test_a_rows_trained_runs_from_its_ranges_are_the_runs_of_its_labels() -> None:
    """render's Row counts its trained runs from the labelled ranges (empty, touching, overlapping, out of
    order) instead of scanning the labels; both give the same runs and trained tokens."""
    from twinlm.prepare.render import _Piece

    rng = random.Random(5)
    for _ in range(3_000):
        n = rng.randint(0, 40)
        ranges = []
        for _ in range(rng.randint(0, 6)):
            i = rng.randint(0, n)
            ranges.append((i, rng.randint(i, min(n, i + rng.choice([0, 1, 3, 10])))))
        row = _Piece("s", [rng.randint(0, 99) for _ in range(n)], ranges, "", ()).row()
        assert row.runs == _runs(row.labels), ranges
        assert row.trained_tokens == int(np.count_nonzero(row.labels != IGNORE_INDEX))


def test_the_first_word_read_alone_is_the_first_of_all_the_words() -> None:
    texts = [*_samples(11, 20_000), "", "   ", "😂 … \u3000", " 😂 don't go", "'' ʼx", "a" * 500]
    for text in texts:
        assert clean._first_word(text) == next(iter(words(text)), None), repr(text)
