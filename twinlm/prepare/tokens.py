"""A chat's token ids and where each token lies in its text, for the labels (twinlm.prepare.render)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any


class Tokens:
    """A chat's token ids and where each token lies in its text.

    Asked per position: a fast tokenizer's Encoding answers `char_to_token` / `token_to_chars` for the
    few positions labels need, instead of every token's offsets as Python tuples (issue 18: building
    those was a fifth of rendering). An answer is used only where its neighbours confirm it (offsets
    are in order there); anywhere else, and for slow tokenizers, the offsets are bisected as before.
    """

    __slots__ = ("_ends", "_starts", "encoding", "ids", "shift")

    def __init__(
        self,
        ids: list[int],
        encoding: Any = None,
        offsets: list[tuple[int, int]] | None = None,
        shift: int = 0,
    ) -> None:
        self.ids = ids
        self.encoding = encoding  # None: `offsets` given
        self.shift = shift  # 1 where BOS was put in front (offsets (0, 0))
        self._starts: list[int] | None = None
        self._ends: list[int] | None = None
        if offsets is not None:
            self._set(offsets)

    def _set(self, offsets: list[tuple[int, int]]) -> None:
        self._starts, self._ends = [a for a, _ in offsets], [b for _, b in offsets]

    def _bisectable(self) -> tuple[list[int], list[int]]:
        if self._starts is None or self._ends is None:
            self._set([(0, 0)] * self.shift + list(self.encoding.offsets))
        assert self._starts is not None and self._ends is not None
        return self._starts, self._ends

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """Every token's (start, end) in the text (twinlm.export.ollama_chat cuts the prompt text with it)."""
        starts, ends = self._bisectable()
        return list(zip(starts, ends, strict=True))

    def chars(self, k: int) -> tuple[int, int]:
        if self._starts is not None and self._ends is not None:
            return self._starts[k], self._ends[k]
        if k < self.shift:
            return 0, 0
        found = self.encoding.token_to_chars(k - self.shift)
        return (0, 0) if found is None else found

    def ending_after(self, a: int) -> int:
        """The first token that ends after character `a` (bisect_right over the ends)."""
        if self._starts is None:
            c = self.encoding.char_to_token(a)
            if c is not None:
                c += self.shift
                if c == 0 or self.chars(c - 1)[1] <= a:
                    return c
        return bisect_right(self._bisectable()[1], a)

    def starting_from(self, b: int) -> int:
        """The first token that starts at or after character `b` (bisect_left over the starts)."""
        if self._starts is None:
            c = self.encoding.char_to_token(b)
            if c is not None:
                c += self.shift
                start = self.chars(c)[0]
                if start == b and (c == 0 or self.chars(c - 1)[0] < b):
                    return c
                if start < b and (c + 1 == len(self.ids) or self.chars(c + 1)[0] >= b):
                    return c + 1
        return bisect_left(self._bisectable()[0], b)
