"""Sessions and turns: a chat is cut where the conversation paused, and one author's run of messages
becomes one turn, so the model learns the several-messages-in-a-row flow."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, TypeVar


class Timed(Protocol):
    @property
    def timestamp_ms(self) -> int | None: ...


T = TypeVar("T", bound=Timed)


def split_by_gap(lines: Sequence[T], gap_minutes: float) -> list[list[T]]:
    """Consecutive runs of `lines` with no pause longer than `gap_minutes` between two of them.

    A line without a timestamp stays in the session it appears in.
    """
    return list(iter_by_gap(lines, gap_minutes))


def iter_by_gap(lines: Iterable[T], gap_minutes: float) -> Iterator[list[T]]:
    """`split_by_gap` one session at a time, reading `lines` as it goes (a chat of any length)."""
    gap_ms = gap_minutes * 60_000
    current: list[T] = []
    last: int | None = None
    for line in lines:
        ts = line.timestamp_ms
        if current and ts is not None and last is not None and ts - last > gap_ms:
            yield current
            current = []
        current.append(line)
        if ts is not None:
            last = ts
    if current:
        yield current


def merge_turns(lines: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(speaker, text) turns from (speaker, text) lines: one speaker's consecutive lines newline-joined."""
    turns: list[tuple[str, list[str]]] = []
    for speaker, text in lines:
        if turns and turns[-1][0] == speaker:
            turns[-1][1].append(text)
        else:
            turns.append((speaker, [text]))
    return [(speaker, "\n".join(texts)) for speaker, texts in turns]
