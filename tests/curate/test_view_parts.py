"""The review sessions of a conversation, cut in arrays (`twinlm.curate.view._cut`), and the build sessions
each one's messages make (`_sessions_made`, which numbers the samples of later pages), against the
reference: the build's own functions on one object per message (`_in_time_order`, `split_by_gap`), which is
what the view did before it held a chat of millions of messages in a few bytes each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from twinlm.curate.view import NO_TIME, _cut, _sessions_made
from twinlm.prepare.select import _in_time_order
from twinlm.prepare.sessions import split_by_gap


@dataclass
class _Stamp:
    id: int
    timestamp_ms: int | None
    out: bool


def _reference(
    rows: list[tuple[int, int | None, bool]], gap: float, one_session: bool
) -> tuple[list[list[int]], list[int]]:
    """(each session's message ids, the build sessions numbered before each): the view's former code."""
    stamps = _in_time_order([_Stamp(*row) for row in rows])  # type: ignore[arg-type]
    parts = split_by_gap(stamps, gap) if not one_session else [stamps] if stamps else []
    numbered, index = [], 0
    for part in parts:
        numbered.append(index)
        kept = [s for s in part if not s.out]
        index += len(split_by_gap(kept, gap)) if kept else 0
    return [[s.id for s in part] for part in parts], numbered


def _ours(rows: list[tuple[int, int | None, bool]], gap: float, one_session: bool) -> tuple[list, list]:
    array = np.array(
        [(i, NO_TIME if ts is None else ts, out) for i, ts, out in rows], dtype=np.int64
    ).reshape(-1, 3)
    parts = _cut(array, gap, one_session)
    session = np.repeat(np.arange(len(parts)), np.diff(parts.starts))
    read = np.flatnonzero(~parts.out)  # the messages the build reads (here no rule drops one)
    made = _sessions_made(parts.times[read], session[read], len(parts), gap)
    numbered = np.concatenate(([0], np.cumsum(made)))[: len(parts)]
    return [parts.ids_of(n, n + 1) for n in range(len(parts))], numbered.tolist()


_MINUTE = 60_000
# Times on a minute grid (so that a pause of exactly the gap, which does not cut, comes up), some a few ms
# off it, some missing, and in any order (a second export of the same chat, a clock that went back).
_TIME = st.one_of(
    st.none(),
    st.integers(0, 400).map(lambda m: m * _MINUTE),
    st.integers(0, 400 * _MINUTE),
)
_ROWS = st.lists(st.tuples(_TIME, st.booleans()), max_size=60).map(
    lambda rows: [(1000 + i, ts, out) for i, (ts, out) in enumerate(rows)]
)


@settings(max_examples=400, deadline=None)
@given(rows=_ROWS, gap=st.sampled_from([60, 30, 0.5, 1, 240]), one_session=st.booleans())
def test_the_sessions_and_their_numbering_are_the_reference_s(
    rows: list[tuple[int, int | None, bool]], gap: float, one_session: bool
) -> None:
    assert _ours(rows, gap, one_session) == _reference(rows, gap, one_session)


def test_a_left_out_message_that_bridged_a_pause_numbers_two_build_sessions() -> None:
    # One review session (every pause is 40 minutes), but without the excluded message in the middle the
    # build sees an 80-minute pause: two sessions, so the next review session's samples start at #2.
    rows = [(1, 0, False), (2, 40 * _MINUTE, True), (3, 80 * _MINUTE, False), (4, 300 * _MINUTE, False)]
    assert _ours(rows, 60, False) == ([[1, 2, 3], [4]], [0, 2]) == _reference(rows, 60, False)


def test_out_of_order_and_untimed_messages_keep_the_builds_order() -> None:
    # A message without a time stays right after the one before it in row order; the rest go by time.
    rows = [(1, 100 * _MINUTE, False), (2, None, False), (3, 10 * _MINUTE, False), (4, None, False)]
    assert _ours(rows, 60, False) == ([[3, 4], [1, 2]], [0, 1]) == _reference(rows, 60, False)


def test_an_empty_conversation_has_no_session() -> None:
    assert _ours([], 60, False) == ([], []) == _reference([], 60, False)
