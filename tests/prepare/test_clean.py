"""Cleaning rules: each rule's positives, negatives and counts, the session rules, and the config."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from twinlm.prepare.clean import CleanConfig, Msg, clean_message, clean_session, is_conversation_ender

DEFAULT = CleanConfig()


def clean(text: str, kind: str = "text", config: CleanConfig = DEFAULT) -> str | None:
    return clean_message(text, kind, config, Counter())


def session(*texts: str, author: str = "a") -> list[Msg]:
    """Messages alternating between `author` and "b" unless a text is written "name: text"."""
    out = []
    for i, text in enumerate(texts):
        who, sep, body = text.partition(": ")
        if not sep:
            who, body = (author if i % 2 == 0 else "b"), text
        out.append(Msg(who, body, "text", 1_000 * i))
    return out


# ------------------------------------------------------------------------------- config


def test_config_defaults_match_the_documented_rules() -> None:
    assert DEFAULT.conversation_enders == "cut"
    assert (DEFAULT.low_quality_min_messages, DEFAULT.low_quality_short_chars) == (5, 30)
    assert DEFAULT.max_message_chars == 2000 and DEFAULT.long_messages == "drop"
    assert DEFAULT.bots == [] and DEFAULT.languages == ["en", "de", "es", "fr", "it", "pt"]


def test_every_field_is_described() -> None:
    for name, field in CleanConfig.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize(
    "data",
    [
        {"nonreplies": True},
        {"languages": ["xx"]},
        {"conversation_enders": "yes"},
        {"non_replies_extra": ["  "]},
        {"low_quality_min_messages": 0},
    ],
)
def test_bad_config_is_rejected(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CleanConfig.model_validate(data)


# ------------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<@123456789> hey", "hey"),
        ("<@!123456789> hey", "hey"),
        ("thanks <@&42> and <#987> for this", "thanks and for this"),
        ("@everyone meeting now", "meeting now"),
        ("@alice are you there", "alice are you there"),
        ("ask @Bob_99, he knows", "ask Bob_99, he knows"),
        ("write to alice@example.com", "write to alice@example.com"),
        ("see https://medium.com/@alice/post", "see https://medium.com/@alice/post"),
    ],
)
def test_pings_removed_and_at_sign_dropped(text: str, expected: str) -> None:
    assert clean(text) == expected


def test_pings_counted_and_switchable() -> None:
    counts: Counter[str] = Counter()
    assert clean_message("<@1> hi there", "text", DEFAULT, counts) == "hi there"
    assert counts == {"message changed: pings removed": 1}
    assert clean("<@1> hi there", config=CleanConfig(pings=False)) == "<@1> hi there"


def test_a_message_that_was_only_a_ping_is_dropped() -> None:
    counts: Counter[str] = Counter()
    assert clean_message("<@123>", "text", DEFAULT, counts) is None
    assert counts["message dropped: empty after cleaning"] == 1


@pytest.mark.parametrize(
    "text",
    [
        "lol", "lol!!", "LOL 😂", "loool", "lolol", "lmaooooo", "LMFAO", "rofl", "xD", "XDDD", "hahaha",
        "HAHAHAHA!!!", "Ha ha ha", "ahahah", "hehe", "gg", "gg wp", "GGs", "nice nice", "bruh", "+1",
        "krass", "boah 😳", "jajaja", "jejeje", "jsjsjs", "mdr", "ptdr", "MDRRR", "kkkk", "rsrs",
        "lol same", "oh là là",
    ],
)  # fmt: skip
def test_non_replies_are_dropped(text: str) -> None:
    counts: Counter[str] = Counter()
    assert clean_message(text, "text", DEFAULT, counts) is None
    assert counts == {"message dropped: non-reply": 1}


@pytest.mark.parametrize(
    "text",
    ["ok", "k", "yes", "no", "ja", "1", "hi", "ah", "haha that's great", "lol I agree with that", "god",
     "what?", "ja klar", "sure lol why not"],
)  # fmt: skip
def test_replies_are_kept(text: str) -> None:
    assert clean(text) == text


def test_non_reply_lists_follow_languages_and_extras() -> None:
    assert clean("mdr", config=CleanConfig(languages=["en"])) == "mdr"
    assert clean("lol", config=CleanConfig(non_replies=False)) == "lol"
    extra = CleanConfig(non_replies_extra=["yeet", "🙏"], drop_symbol_only=False)
    assert clean("YEET!!", config=extra) is None
    assert clean("yeeeet", config=extra) is None
    assert clean("🙏", config=extra) is None
    assert clean("🎉", config=extra) == "🎉"


@pytest.mark.parametrize("text", ["😂😂😂", "...", "?", "❤️", "!!!", "👍🏽"])
def test_symbol_only_messages_are_dropped(text: str) -> None:
    counts: Counter[str] = Counter()
    assert clean_message(text, "text", DEFAULT, counts) is None
    assert counts == {"message dropped: emoji or punctuation only": 1}
    assert clean(text, config=CleanConfig(drop_symbol_only=False)) == text


def test_media_messages_and_placeholder_lines() -> None:
    counts: Counter[str] = Counter()
    assert clean_message("[photo]", "media", DEFAULT, counts) is None
    assert clean_message("😀", "sticker", DEFAULT, counts) is None
    assert clean_message("[voice message]", "text", DEFAULT, counts) is None
    assert clean_message("[poll: lunch?]\n[GIF]", "text", DEFAULT, counts) is None
    assert clean_message("look at this\n[photo]\n[video]", "text", DEFAULT, counts) == "look at this"
    assert counts == {"message dropped: media": 4, "message changed: media placeholder removed": 1}
    assert clean("[citation needed] that is wrong") == "[citation needed] that is wrong"
    keep = CleanConfig(drop_media_placeholders=False)
    assert clean("[photo]", "media", keep) == "[photo]"


def test_link_only_messages_dropped_and_links_optionally_removed() -> None:
    counts: Counter[str] = Counter()
    for text in ("https://example.com/a?b=c", "<https://example.com>", "www.example.com  http://x.org"):
        assert clean_message(text, "text", DEFAULT, counts) is None
    assert counts == {"message dropped: link only": 3}
    assert clean("look at https://example.com now") == "look at https://example.com now"
    assert clean("look at https://example.com now", config=CleanConfig(remove_urls=True)) == "look at now"
    assert clean("https://example.com", config=CleanConfig(drop_link_only=False)) == "https://example.com"


def test_length_cap_drops_or_cuts_at_a_word_boundary() -> None:
    text = "word " * 500  # 2500 characters
    counts: Counter[str] = Counter()
    assert clean_message(text, "text", DEFAULT, counts) is None
    assert counts == {"message dropped: longer than max_message_chars": 1}
    cut = clean(text, config=CleanConfig(long_messages="cut", max_message_chars=102))
    assert cut == " ".join(["word"] * 20)  # 99 characters: ends on a whole word
    assert clean("x" * 2000) == "x" * 2000


def test_documents_pass_untouched_and_assistant_mode_skips_chat_rules() -> None:
    assert clean("lol <@1>", "document") == "lol <@1>"
    counts: Counter[str] = Counter()
    assert clean_message("lol", "text", DEFAULT, counts, assistant=True) == "lol"
    assert clean_message("a" * 5000, "text", DEFAULT, counts, assistant=True) == "a" * 5000
    assert clean_message("[photo]", "media", DEFAULT, counts, assistant=True) is None


# ------------------------------------------------------------------------------- enders


@pytest.mark.parametrize(
    "text",
    [
        "gtg", "ok gtg", "gtg now guys", "anyway, i'm going to sleep 😴", "gn everyone", "Good night!!",
        "bye", "byeee", "cya tomorrow", "ttyl", "lol ok brb", "Gute Nacht!", "ich muss los, bis morgen",
        "bueno, me voy", "buenas noches", "je vais dormir, bonne nuit", "à demain", "buonanotte",
        "alright see ya 👋",
    ],
)  # fmt: skip
def test_conversation_enders_recognised(text: str) -> None:
    assert is_conversation_ender(text, DEFAULT)


@pytest.mark.parametrize(
    "text",
    [
        "I have to go to the dentist tomorrow", "it was a good night", "see you tomorrow?", "bye the way",
        "will you say bye to him", "the night is young", "a, b or c?", "I'll do it later",
        "ciao, come stai?", "x" * 50 + " anyway gtg " + "y" * 50,
    ],
)  # fmt: skip
def test_not_conversation_enders(text: str) -> None:
    assert not is_conversation_ender(text, DEFAULT)


def test_ender_extras() -> None:
    config = CleanConfig(conversation_enders_extra=["off to the mines"])
    assert is_conversation_ender("ok off to the mines!", config)
    assert not is_conversation_ender("ok off to the mines!", DEFAULT)


# ------------------------------------------------------------------------------- sessions

LONG = "this message is long enough to count as a real one"


def long(n: int) -> str:
    return f"{LONG} (number {n})"


def test_session_cut_before_a_conversation_ender() -> None:
    counts: Counter[str] = Counter()
    msgs = session(long(1), "sounds good, what time?", long(2), "ok gtg", "bye!", "see you")
    kept = clean_session(msgs, DEFAULT, counts)
    assert kept == msgs[:3]
    assert counts == {
        "session cut: conversation ender": 1,
        "message dropped: at or after a conversation ender": 3,
    }


def test_session_with_ender_dropped_or_kept_by_mode() -> None:
    msgs = session(long(1), long(2), long(3), "gn", long(4), long(5))
    counts: Counter[str] = Counter()
    assert clean_session(msgs, CleanConfig(conversation_enders="drop"), counts) is None
    assert counts == {"session dropped: conversation ender": 1}
    assert clean_session(msgs, CleanConfig(conversation_enders="off"), Counter()) == msgs
    assert clean_session(session("gtg", long(1), long(2), long(3), long(4)), DEFAULT, Counter()) is None


def test_low_quality_sessions() -> None:
    counts: Counter[str] = Counter()
    short = session("hey", "hi", "what's up", "nm u")
    assert clean_session(short, DEFAULT, counts) is None
    assert counts == {"session dropped: low quality": 1}
    assert clean_session(session("hey", "hi", "what's up", "nm u", "same"), DEFAULT, Counter()) is not None
    assert clean_session(session("hey", "hi", "x" * 30), DEFAULT, Counter()) is not None
    assert clean_session(short, CleanConfig(low_quality_sessions=False), Counter()) == short
    loose = CleanConfig(low_quality_min_messages=2, low_quality_short_chars=3)
    assert clean_session(session("hey", "hi", "yo"), loose, Counter()) is not None


def test_duplicates() -> None:
    counts: Counter[str] = Counter()
    pasta = "buy cheap followers at my totally legit site now"
    msgs = session(
        "a: good morning everyone here",
        "a: Good  morning everyone here",  # the same author again, right after: dropped
        "b: yes",
        "a: " + LONG,
        "b: yes",  # a short repeat further on: kept ("yes" can answer two questions)
        "c: " + pasta,
        "d: " + pasta,  # a long repeat anywhere, any author: dropped
    )
    kept = clean_session(msgs, DEFAULT, counts)
    assert kept is not None
    assert [m.text for m in kept] == ["good morning everyone here", "yes", LONG, "yes", pasta]
    assert counts == {"message dropped: duplicate": 2}
    assert clean_session(msgs, CleanConfig(drop_duplicates=False), Counter()) == msgs


def test_bots_dropped_by_name_case_insensitively() -> None:
    counts: Counter[str] = Counter()
    msgs = session("a: " + long(1), "MEE6: level up!", "b: " + long(2), "b: " + long(3), "a: " + long(4))
    kept = clean_session(msgs, CleanConfig(bots=["mee6"]), counts)
    assert kept is not None and [m.author for m in kept] == ["a", "b", "b", "a"]
    assert counts == {"message dropped: bot": 1}


# ------------------------------------------------------------------------------- properties


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["text", "media", "sticker"]))
def test_clean_message_never_raises_and_returns_clean_text(text: str, kind: str) -> None:
    counts: Counter[str] = Counter()
    out = clean_message(text, kind, DEFAULT, counts)
    if out is None:
        assert sum(v for k, v in counts.items() if k.startswith("message dropped")) == 1
    else:
        assert out == out.strip() and out and len(out) <= DEFAULT.max_message_chars
        assert not any(k.startswith("message dropped") for k in counts)
