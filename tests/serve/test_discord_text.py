"""The Discord bot's text rules on plain strings: commands, persona names, splitting at Discord's length,
rate limits with a fake clock (twinlm.serve.discord_text; test_discord_bot.py runs them on discord.py's
messages)."""

from __future__ import annotations

from typing import Any

import pytest
from serve_fakes import FRIEND, ME

from twinlm.config import TwinConfig
from twinlm.identities import Identities
from twinlm.serve.discord_text import (
    Ask,
    Help,
    ListPersonas,
    RateLimits,
    SetPersona,
    match_persona,
    parse_command,
    split_message,
)

BOT_ID = 999


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# ------------------------------------------------------------------------------- commands


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"<@{BOT_ID}> as Sam: are we on for sunday?", Ask("Sam", "are we on for sunday?")),
        (f"<@!{BOT_ID}> as alex rivera:hi\nsecond line", Ask("alex rivera", "hi\nsecond line")),
        (f"  <@{BOT_ID}>  AS Sam :  x: y", Ask("Sam", "x: y")),
        (f"<@{BOT_ID}> as Sam:", Ask("Sam", "")),  # Sam speaks next, with nothing new said
        (f"<@{BOT_ID}> persona Sam", SetPersona("Sam")),
        (f"<@{BOT_ID}> persona  sam l ", SetPersona("sam l")),
        (f"<@{BOT_ID}> persona off", SetPersona(None)),
        (f"<@{BOT_ID}> Persona", ListPersonas()),
        (f"<@{BOT_ID}> personas", ListPersonas()),
        (f"<@{BOT_ID}> help", Help()),
        (f"<@{BOT_ID}>", Help()),
        (f"<@{BOT_ID}> what do you think?", Ask(None, "what do you think?")),
        (f"<@{BOT_ID}> help me pick a film", Ask(None, "help me pick a film")),
        (f"so <@{BOT_ID}> what do you think?", Ask(None, "so what do you think?")),
        (f"<@{BOT_ID}> as Sam: ask <@{BOT_ID}> later", Ask("Sam", "ask later")),
        ("<@123> as Sam: hi", None),  # someone else
        (f"<@{BOT_ID}0> as Sam: hi", None),  # another id that starts with the bot's
        ("as Sam: hi", None),
        ("hello everyone", None),
    ],
)
def test_parse_command(content: str, expected: Any) -> None:
    assert parse_command(content, BOT_ID) == expected


def test_a_reply_to_the_bot_is_a_message_to_the_channel_persona() -> None:
    # A reply pings the bot without writing its mention: discord.py lists it in message.mentions only.
    assert parse_command("and then?", BOT_ID, mentioned=True) == Ask(None, "and then?")
    assert parse_command("and then?", BOT_ID) is None


def test_persona_names_case_aliases_and_first_names() -> None:
    personas = [ME, FRIEND, "Sam Lee", "Priya Patel"]
    ids = Identities(TwinConfig(me=[ME, "alexr"], people={"Priya Patel": ["pp", "priya_p"]}))

    def person_of(alias: str) -> str | None:
        found = ids.person_of(alias)
        return ME if found == "me" else found

    assert match_persona("SAM", personas, person_of) == (FRIEND, [])  # an exact name wins over "Sam Lee"
    assert match_persona("sam lee", personas, person_of) == ("Sam Lee", [])
    assert match_persona("AlexR", personas, person_of) == (ME, [])  # an alias of me
    assert match_persona("PRIYA_P", personas, person_of) == ("Priya Patel", [])  # an alias of a person
    assert match_persona("priya", personas, person_of) == ("Priya Patel", [])  # the one whose name starts so
    assert match_persona("alex", personas, person_of) == (ME, [])
    assert match_persona("nobody", personas, person_of) == (None, [])
    assert match_persona("s", personas, person_of) == (None, [])  # a word must end where the name's does
    two = ["Sam Lee", "Sam Ortiz"]
    assert match_persona("sam", two, person_of) == (None, two)


# ------------------------------------------------------------------------------- splitting


def test_split_exact_limit() -> None:
    assert split_message("a" * 2000) == ["a" * 2000]
    assert split_message("a" * 2001) == ["a" * 2000, "a"]
    assert split_message("") == []
    assert split_message("  \n ") == []
    assert split_message("short reply") == ["short reply"]


def test_split_prefers_line_breaks_then_spaces() -> None:
    text = "\n".join(f"line {i} " + "x" * 50 for i in range(100))  # ~5,800 characters
    chunks = split_message(text)
    assert len(chunks) == 3
    assert all(utf16(c) <= 2000 for c in chunks)
    assert "\n".join(chunks) == text  # cut only at line breaks, each dropped once
    early = "hi\n" + " ".join(["word"] * 600)  # a line break too early to cut at: spaces are used
    chunks = split_message(early)
    assert len(chunks) == 2 and chunks[0].startswith("hi\nword") and utf16(chunks[0]) > 1990
    words = " ".join(["word"] * 1000)  # 4,999 characters, no line break
    chunks = split_message(words)
    assert all(utf16(c) <= 2000 for c in chunks)
    assert all(set(c.split(" ")) == {"word"} for c in chunks)  # never inside a word
    assert " ".join(chunks) == words


def test_split_long_words_and_small_limits() -> None:
    assert split_message("y" * 5000) == ["y" * 2000, "y" * 2000, "y" * 1000]
    assert split_message("ab cd " + "e" * 10, limit=6) == ["ab cd", "eeeeee", "eeee"]
    assert split_message("ab cd" + "e" * 10, limit=6) == ["ab", "cdeeee", "eeeeee"]
    # A separator right after a full chunk is a clean cut.
    assert split_message("a" * 2000 + " " + "b" * 5) == ["a" * 2000, "b" * 5]


def test_split_counts_what_discord_counts_and_keeps_characters_whole() -> None:
    assert split_message("😀" * 1000) == ["😀" * 1000]  # 2,000 UTF-16 units
    assert split_message("😀" * 1001) == ["😀" * 1000, "😀"]
    accented = "e\u0301" * 1500  # é as e + a combining accent: 3,000 code points
    chunks = split_message(accented)
    assert "".join(chunks) == accented
    assert all(utf16(c) <= 2000 and not c.startswith("\u0301") for c in chunks)
    family = "ab" + "👨\u200d👩\u200d👧" * 400  # emoji joined by zero-width joiners (8 units each)
    chunks = split_message(family)
    assert "".join(chunks) == family
    assert all(utf16(c) <= 2000 and c.endswith("👧") for c in chunks)
    assert all(c.startswith("👨") for c in chunks[1:])
    flags = "🇫🇷" * 600  # a flag is two regional indicators
    chunks = split_message(flags)
    assert "".join(chunks) == flags and all(len(c) % 2 == 0 for c in chunks)


def test_split_closes_and_reopens_a_code_block() -> None:
    code = "\n".join(f"print({i})  # " + "z" * 40 for i in range(80))
    text = f"Here it is:\n```python\n{code}\n```\nThat's all."
    chunks = split_message(text)
    assert len(chunks) >= 2
    assert all(utf16(c) <= 2000 for c in chunks)
    for chunk in chunks:
        assert sum(line.startswith("```") for line in chunk.split("\n")) % 2 == 0  # each block closed
    assert all(c.startswith("```python\n") for c in chunks[1:])
    kept = [line for c in chunks for line in c.split("\n") if line.startswith("print(")]
    assert kept == code.split("\n")  # every line of code once, in order
    assert chunks[-1].endswith("```\nThat's all.")


# ------------------------------------------------------------------------------- rate limits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_buckets_per_user_and_per_channel() -> None:
    clock = Clock()
    limits = RateLimits(user=(2, 6), channel=(3, 60), clock=clock)  # 2 in a row, then one per 10 s
    assert limits.take(1, 10) == 0
    assert limits.take(1, 10) == 0
    assert limits.take(1, 10) == pytest.approx(10)  # user 1 must wait
    assert limits.take(2, 10) == 0  # another user may still talk: the channel has room for one more
    assert limits.take(3, 10) == pytest.approx(1)  # the channel's 3 are used up (one a second back)
    clock.now += 1
    assert limits.take(3, 10) == 0
    assert limits.take(3, 11) == 0  # another channel is not limited by this one
    clock.now += 8
    assert limits.take(1, 10) == pytest.approx(1)  # 9 s: not yet
    clock.now += 1
    assert limits.take(1, 10) == 0
    clock.now += 3600
    assert [limits.take(1, 12) for _ in range(3)] == [0, 0, pytest.approx(10)]  # refills to its burst only


def test_a_refused_message_uses_up_nothing() -> None:
    clock = Clock()
    limits = RateLimits(user=(1, 60), channel=(1, 6), clock=clock)
    assert limits.take(1, 10) == 0
    clock.now += 1  # the user's bucket is full again, the channel's is not
    assert limits.take(1, 10) > 0
    assert limits.take(1, 11) == 0  # the refusal in channel 10 took nothing from user 1
