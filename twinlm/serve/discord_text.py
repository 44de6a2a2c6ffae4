"""The Discord bot's pure text rules: what a message asks, replies cut to Discord's length, rate limits.

No discord.py and no model here, so each rule is tested on plain strings and a fake clock
(twinlm.serve.discord_bot uses them on discord.py's messages).
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Discord refuses a message over 2,000 characters. Counted in UTF-16 code units (an emoji outside the
# Basic Multilingual Plane is two), which is never less than Discord's own count: a chunk that fits
# here fits there.
DISCORD_LIMIT = 2000

_FENCE = re.compile(r"^[ \t]*```")  # a line that opens or closes a Markdown code block
_ZWJ = "\u200d"


# ------------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Ask:
    """Reply to `text` as `persona` (None: the channel's persona)."""

    persona: str | None
    text: str


@dataclass(frozen=True, slots=True)
class SetPersona:
    """Make `name` the channel's persona (None: switch it off)."""

    name: str | None


@dataclass(frozen=True, slots=True)
class ListPersonas:
    """Say who the twin can be, and who it is in this channel."""


@dataclass(frozen=True, slots=True)
class Help:
    """Say how to talk to the bot."""


Command = Ask | SetPersona | ListPersonas | Help

_AS = re.compile(r"as\s+([^:\n]{1,100}?)\s*:\s?(.*)", re.DOTALL | re.IGNORECASE)
_PERSONA = re.compile(r"persona(?:\s+(.*))?", re.DOTALL | re.IGNORECASE)
_OFF = frozenset({"off", "none", "stop", "reset"})


def parse_command(content: str, bot_id: int, *, mentioned: bool = False) -> Command | None:
    """What a message says to the bot (user id `bot_id`), or None where it is not meant for the bot.

    A message that starts with the bot's mention (<@id> or <@!id>) is a command: `as NAME: message`,
    `persona NAME`, `persona off`, `persona` or `personas`, `help`, or else a message to the channel's
    persona. `mentioned`: the bot is mentioned elsewhere (in the text, or by a reply to its message):
    the text without the bot's mentions goes to the channel's persona.
    """
    mention = re.compile(rf"[ \t]?<@!?{bot_id}>")  # with the space before it: "so <@1> what" -> "so what"
    lead = re.match(rf"\s*<@!?{bot_id}>\s*", content)
    if lead is None:
        if not (mentioned or mention.search(content)):
            return None
        return Ask(None, mention.sub("", content).strip())
    rest = mention.sub("", content[lead.end() :]).strip()
    word = rest.split(maxsplit=1)[0].casefold() if rest else ""
    if not rest or rest.casefold() == "help":
        return Help()
    if rest.casefold() == "personas":
        return ListPersonas()
    persona = _PERSONA.fullmatch(rest)
    if persona is not None and word == "persona":
        name = (persona.group(1) or "").strip()
        if not name:
            return ListPersonas()
        return SetPersona(None if name.casefold() in _OFF else name)
    ask = _AS.fullmatch(rest)
    if ask is not None:
        return Ask(ask.group(1).strip(), ask.group(2).strip())
    return Ask(None, rest)


def match_persona(
    name: str, personas: Iterable[str], person_of: Callable[[str], str | None]
) -> tuple[str | None, list[str]]:
    """(the persona `name` means, or None; the candidates where it is ambiguous).

    Case-insensitive: a persona's name; else an alias of twin.yaml (`person_of`: alias -> that persona's
    name); else the one persona whose name starts with `name` as a word ("sam" for "Sam Lee").
    """
    names = list(personas)
    folded = name.strip().casefold()
    exact = [p for p in names if p.casefold() == folded]
    if exact:
        return exact[0], []
    person = person_of(name.strip())
    if person is not None:
        hit = [p for p in names if p.casefold() == person.casefold()]
        if hit:
            return hit[0], []
    starts = [p for p in names if folded and p.casefold().startswith(folded + " ")]
    if len(starts) == 1:
        return starts[0], []
    return None, starts


# ------------------------------------------------------------------------------- splitting


def _units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def _fits(text: str, start: int, budget: int) -> int:
    """The end index of the longest text[start:end] of at most `budget` UTF-16 units."""
    used = 0
    end = start
    for ch in text[start:]:
        used += _units(ch)
        if used > budget:
            break
        end += 1
    return end


def _joined(text: str, i: int) -> bool:
    """Whether a cut before text[i] would split a character from its accents or an emoji sequence."""
    ch = text[i]
    return (
        unicodedata.combining(ch) != 0
        or unicodedata.category(ch) in ("Mn", "Me")
        or ch == _ZWJ
        or text[i - 1] == _ZWJ
        or "\ufe00" <= ch <= "\ufe0f"
        or "\U0001f3fb" <= ch <= "\U0001f3ff"  # skin tones
        or (_regional(ch) and _regional(text[i - 1]) and _regionals_before(text, i) % 2 == 1)
    )


def _regional(ch: str) -> bool:
    """A regional indicator letter: two of them make one flag."""
    return "\U0001f1e6" <= ch <= "\U0001f1ff"


def _regionals_before(text: str, i: int) -> int:
    """How many regional indicators run up to text[i] (an odd count: text[i] ends a flag)."""
    n = 0
    while i - n - 1 >= 0 and _regional(text[i - n - 1]):
        n += 1
    return n


def _cut(text: str, start: int, end: int) -> tuple[int, int]:
    """Where to end a chunk of text[start:end] (the whole rest does not fit), and where the next starts.

    At the last line break of the chunk's second half, else its last space, else the last line break
    or space anywhere, else within a word (never inside one character's accents or an emoji).
    """
    half = start + (end - start) // 2
    for lowest in (half, start + 1):
        for sep in ("\n", " "):
            at = text.rfind(sep, lowest, end + 1)  # a separator right after the chunk is a clean cut too
            if at >= lowest:
                return at, at + 1
    at = end
    while at > start + 1 and _joined(text, at):
        at -= 1
    return at, at


def _open_fence(text: str) -> str | None:
    """The opening line of the code block `text` ends inside, or None."""
    opened: str | None = None
    for line in text.split("\n"):
        if _FENCE.match(line):
            opened = None if opened is not None else line.strip()
    return opened


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """`text` as messages of at most `limit` UTF-16 units each (Discord's 2,000 characters).

    Cut at line breaks, else spaces, else inside a long word; the separator at a cut is dropped. A code
    block open at a cut is closed there and opened again (same language) in the next message, so each
    message shows as code. Blank chunks are left out (Discord refuses an empty message).
    """
    close = "\n```"
    chunks: list[str] = []
    prefix = ""  # the reopened code block's first line
    rest = text
    while rest:
        body = prefix + rest
        if sum(map(_units, body)) <= limit:
            chunks.append(body)
            break
        floor = len(prefix)  # never cut inside the reopened fence line
        end, resume = _cut(body, floor, _fits(body, 0, limit))
        fence = _open_fence(body[:end])
        if fence is not None:  # room for the closing fence
            end, resume = _cut(body, floor, _fits(body, 0, limit - len(close)))
            fence = _open_fence(body[:end])
        head = body[:end]
        if fence is not None:
            head += close
            prefix = fence + "\n"
            if len(prefix) * 2 >= limit:  # a fence line too long to repeat: leave the block as it falls
                prefix = ""
        else:
            prefix = ""
        chunks.append(head)
        rest = body[resume:]
        if prefix and rest.startswith("\n"):
            rest = rest[1:]
    # Blank chunks, and a reopened block holding nothing (the cut fell right before its closing fence).
    return [c for c in chunks if any(line.strip() and not _FENCE.match(line) for line in c.split("\n"))]


# ------------------------------------------------------------------------------- rate limits


@dataclass(slots=True)
class TokenBucket:
    """`capacity` replies in a row, refilled at `per_second`: the usual token bucket."""

    capacity: float
    per_second: float
    tokens: float
    updated: float

    def wait(self, now: float) -> float:
        """Seconds until a reply may be taken (0: now)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.per_second

    @property
    def full(self) -> bool:
        return self.tokens >= self.capacity


class RateLimits:
    """Per-person and per-channel token buckets. `clock`: seconds, monotonic (injectable for tests)."""

    def __init__(
        self,
        user: tuple[int, float],
        channel: tuple[int, float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`user` and `channel`: (burst, replies per minute)."""
        self._shapes = {"user": user, "channel": channel}
        self._buckets: dict[tuple[str, int], TokenBucket] = {}
        self.clock = clock

    def _bucket(self, kind: str, key: int, now: float) -> TokenBucket:
        found = self._buckets.get((kind, key))
        if found is None:
            if len(self._buckets) > 10_000:  # forget the idle ones (full buckets hold no state worth keeping)
                for k in [k for k, b in self._buckets.items() if b.wait(now) == 0 and b.full]:
                    del self._buckets[k]
            burst, per_minute = self._shapes[kind]
            found = self._buckets[(kind, key)] = TokenBucket(burst, per_minute / 60, burst, now)
        return found

    def take(self, user_id: int, channel_id: int) -> float:
        """0 and one reply counted against both buckets when both allow one; else the seconds to wait
        (nothing counted: a refused message does not use up the person's replies)."""
        now = self.clock()
        buckets = (self._bucket("user", user_id, now), self._bucket("channel", channel_id, now))
        wait = max(b.wait(now) for b in buckets)
        if wait > 0:
            return wait
        for bucket in buckets:
            bucket.tokens -= 1
        return 0.0
