"""A chat's token ids and where each token lies in its text, for the labels (twinlm.prepare.render)."""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from itertools import chain
from typing import Any, NamedTuple
from unicodedata import is_normalized
from weakref import WeakKeyDictionary

import numpy as np
from tokenizers import pre_tokenizers


class Tokens:
    """A chat's token ids and where each token lies in its text.

    Asked per position: a fast tokenizer's Encoding answers `char_to_token` / `token_to_chars` for the
    few positions labels need, instead of every token's offsets as Python tuples (issue 18: building
    those was a fifth of rendering). An answer is used only where its neighbours confirm it (offsets
    are in order there); anywhere else, and for slow tokenizers, the offsets are bisected as before.
    A byte-level tokenizer's offsets come as arrays worked out from byte lengths (`byte_offsets`).
    """

    __slots__ = ("_ends", "_starts", "array", "encoding", "ids", "shift")

    def __init__(
        self,
        ids: list[int],
        encoding: Any = None,
        offsets: list[tuple[int, int]] | None = None,
        shift: int = 0,
        bounds: Bounds | None = None,
    ) -> None:
        self.ids = ids
        # `ids` as int32 (the dataset's rows), where `bounds` came with them and no BOS was put in front.
        self.array: np.ndarray | None = bounds.ids if bounds is not None and not shift else None
        self.encoding = encoding  # None: `offsets` or `bounds` given
        self.shift = shift  # 1 where BOS was put in front (offsets (0, 0))
        # Starts and ends of the tokens after the shift, in characters: lists, or arrays (`bounds`).
        self._starts: list[int] | np.ndarray | None = None
        self._ends: list[int] | np.ndarray | None = None
        if offsets is not None:
            self._set(offsets[shift:])
        if bounds is not None:
            self._starts, self._ends = bounds.starts, bounds.ends

    def _set(self, offsets: list[tuple[int, int]]) -> None:
        self._starts, self._ends = [a for a, _ in offsets], [b for _, b in offsets]

    def _bisectable(self) -> tuple[list[int] | np.ndarray, list[int] | np.ndarray]:
        if self._starts is None or self._ends is None:
            self._set(list(self.encoding.offsets))
        assert self._starts is not None and self._ends is not None
        return self._starts, self._ends

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """Every token's (start, end) in the text (twinlm.export.ollama_chat cuts the prompt text with it)."""
        starts, ends = self._bisectable()
        return [(0, 0)] * self.shift + [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]

    def chars(self, k: int) -> tuple[int, int]:
        if k < self.shift:
            return 0, 0
        if self._starts is not None and self._ends is not None:
            return int(self._starts[k - self.shift]), int(self._ends[k - self.shift])
        found = self.encoding.token_to_chars(k - self.shift)
        return (0, 0) if found is None else found

    def ending_after(self, a: int) -> int:
        """The first token that ends after character `a` (bisect_right over the ends; a >= 0)."""
        if self._starts is None:
            c = self.encoding.char_to_token(a)
            if c is not None:
                c += self.shift
                if c == 0 or self.chars(c - 1)[1] <= a:
                    return c
        ends = self._bisectable()[1]  # BOS (0, 0) ends at or before any `a`
        found = ends.searchsorted(a, "right") if isinstance(ends, np.ndarray) else bisect_right(ends, a)
        return self.shift + int(found)

    def ending_after_each(self, positions: list[int]) -> list[int]:
        """`ending_after` of each position (a chat's text starts): one search for them all where the
        offsets are arrays, instead of a numpy call per turn (issue 18)."""
        ends = self._ends
        if not isinstance(ends, np.ndarray):
            return [self.ending_after(a) for a in positions]
        return (ends.searchsorted(positions, "right") + self.shift).tolist()

    def starting_from_each(self, positions: list[int]) -> list[int]:
        """`starting_from` of each position (a chat's text ends), as `ending_after_each`."""
        starts = self._starts
        if not isinstance(starts, np.ndarray):
            return [self.starting_from(b) for b in positions]
        found = (starts.searchsorted(positions, "left") + self.shift).tolist()
        return [0 if self.shift and b <= 0 else k for b, k in zip(positions, found, strict=True)]

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
        if self.shift and b <= 0:
            return 0  # BOS starts at 0
        starts = self._bisectable()[0]
        found = starts.searchsorted(b, "left") if isinstance(starts, np.ndarray) else bisect_left(starts, b)
        return self.shift + int(found)


class Bounds(NamedTuple):
    """A text's tokens: where each starts and ends in the text, in characters, and their ids (int32)."""

    starts: np.ndarray
    ends: np.ndarray
    ids: np.ndarray


def byte_offsets(id_lists: list[list[int]], texts: list[str], table: ByteLengths) -> list[Bounds | None]:
    """Per text, the `Bounds` of its tokens `id_lists`, with the tokenizer's own offsets; None where the
    tokens' bytes are not the text's (then ask the tokenizer for its offsets).

    Worked out for the whole batch at once: a few numpy calls a batch, not a few a chat (issue 18)."""
    n = len(texts)
    counts = np.fromiter(map(len, id_lists), dtype=np.intp, count=n)
    ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.intp, count=int(counts.sum()))
    lengths = table.lengths
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= len(lengths)):
        return [None] * n
    sizes = lengths.take(ids)
    if not sizes.all():  # a token that is not bytes of the text (unk): never seen
        return [None] * n
    token_bounds = np.zeros(n + 1, dtype=np.intp)
    np.cumsum(counts, out=token_bounds[1:])
    char_bounds = np.zeros(n + 1, dtype=np.intp)
    np.cumsum(np.fromiter(map(len, texts), dtype=np.intp, count=n), out=char_bounds[1:])
    tokens_end = np.zeros(ids.size + 1, dtype=np.intp)  # bytes of the batch's tokens up to each token
    np.cumsum(sizes, out=tokens_end[1:])
    bytes_done = tokens_end[token_bounds]  # at each chat's first token
    joined = "".join(texts)
    raw = joined.encode()
    if joined.isascii():
        byte_bounds = char_bounds
        lead = None
    else:
        b = np.frombuffer(raw, dtype=np.uint8)
        lead = (b < 0x80) | (b >= 0xC0)  # the first byte of a character
        byte_bounds = np.append(np.flatnonzero(lead), len(raw))[char_bounds]
    fits = np.diff(bytes_done) == np.diff(byte_bounds)  # a chat's tokens are as many bytes as its text
    # Each token's byte range in the joined text (a chat that does not fit cannot shift the next one).
    ends = tokens_end[1:] + np.repeat(byte_bounds[:-1] - bytes_done[:-1], counts)
    starts = ends - sizes
    if lead is not None:
        # Bytes to characters: a token holding part of a character covers that whole character, as
        # the tokenizer's offsets do.
        char_of = np.cumsum(lead) - 1
        last = len(raw) - 1
        starts, ends = char_of[starts.clip(0, last)], char_of[(ends - 1).clip(0, last)] + 1
    base = np.repeat(char_bounds[:-1], counts)
    starts, ends = starts - base, ends - base
    as_int32 = ids.astype(np.int32)
    out: list[Bounds | None] = []
    for k in range(n):
        if not fits[k] or (table.nfc and not texts[k].isascii() and not is_normalized("NFC", texts[k])):
            out.append(None)  # (NFC: the normalizer changes this text)
            continue
        i, j = token_bounds[k], token_bounds[k + 1]
        out.append(Bounds(starts[i:j], ends[i:j], as_int32[i:j]))
    return out


class ByteLengths(NamedTuple):
    lengths: np.ndarray  # per token id, its length in UTF-8 bytes (0: not a token of bytes, e.g. unk)
    nfc: bool  # the tokenizer normalizes to NFC: only a text already in NFC is its own bytes


# Per tokenizer: (its size with added tokens, `_byte_lengths` of it).
_BYTE_LENGTHS: WeakKeyDictionary[Any, tuple[int, ByteLengths | None]] = WeakKeyDictionary()
_BYTE_ALPHABET = frozenset(pre_tokenizers.ByteLevel.alphabet())
_OFFSET_KEEPING_PROCESSORS = ("TemplateProcessing", "ByteLevel", "BertProcessing", "RobertaProcessing")


def byte_lengths(tokenizer: Any) -> ByteLengths | None:
    """Each token id's length in UTF-8 bytes, where the tokenizer's tokens are exactly the bytes of the
    text they come from; else None.

    So it is for a byte-level BPE (GPT-2, Llama 3, Qwen2, the tiny preset) with no normalizer but NFC,
    no prefix space and no offset trimming: each token's offsets are then the running sum of these
    lengths, and the tokenizer can skip tracking offsets (`encode_batch_fast`, ~1.4x faster on chats,
    issue 18). Read from the tokenizer's own description, not from a table of model names."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    size = backend.get_vocab_size(with_added_tokens=True)
    cached = _BYTE_LENGTHS.get(tokenizer)
    if cached is None or cached[0] != size:
        cached = (size, _byte_lengths(_description(backend)))
        _BYTE_LENGTHS[tokenizer] = cached
    return cached[1]


def _description(backend: Any) -> dict[str, Any]:
    """What `_byte_lengths` reads of the tokenizer, in tokenizer.json's shape but without the merges:
    parsing the whole JSON of a tokenizer of 128k tokens took 0.36 s and 57 MiB."""

    def part(component: Any) -> dict[str, Any] | None:
        return None if component is None else json.loads(component.__getstate__())

    model = backend.model
    return {
        "normalizer": part(backend.normalizer),
        "pre_tokenizer": part(backend.pre_tokenizer),
        "post_processor": part(backend.post_processor),
        "model": {
            "type": type(model).__name__,
            **{key: getattr(model, key, None) for key in _MODEL_KEYS},
            "vocab": backend.get_vocab(with_added_tokens=False),
        },
        "added_tokens": [
            {"id": i, "content": t.content, "lstrip": t.lstrip, "rstrip": t.rstrip}
            for i, t in backend.get_added_tokens_decoder().items()
        ],
    }


_MODEL_KEYS = ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix")


def _byte_lengths(spec: dict[str, Any]) -> ByteLengths | None:
    model = spec.get("model") or {}
    normalizer = spec.get("normalizer")
    if (
        (normalizer is not None and normalizer.get("type") != "NFC")
        or not _byte_level(spec.get("pre_tokenizer"))
        or not _keeps_offsets(spec.get("post_processor"))
        or model.get("type") != "BPE"
        or model.get("byte_fallback")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
    ):
        return None
    added = spec.get("added_tokens") or []
    if any(t.get("lstrip") or t.get("rstrip") for t in added):  # the token's span takes in spaces
        return None
    vocab: dict[str, int] = model.get("vocab") or {}
    ids = [*vocab.values(), *(t["id"] for t in added)]
    lengths = np.zeros(max(ids, default=-1) + 1, dtype=np.int64)  # 0: not a token of bytes (unk)
    for piece, i in vocab.items():
        if _BYTE_ALPHABET.issuperset(piece):  # one character of the byte alphabet a byte
            lengths[i] = len(piece)
    for t in added:  # matched in the text as written (or as NFC leaves it: the same, where used)
        lengths[t["id"]] = len(t["content"].encode())
    return ByteLengths(lengths, nfc=normalizer is not None)


def _byte_level(pre: dict[str, Any] | None) -> bool:
    """A ByteLevel pre-tokenizer without a prefix space, maybe after splits that keep every character."""
    steps = (pre or {}).get("pretokenizers", [pre]) if (pre or {}).get("type") == "Sequence" else [pre]
    levels = [p for p in steps if p and p.get("type") == "ByteLevel"]
    return (
        len(levels) == 1
        and not levels[0].get("add_prefix_space")
        and all(
            p
            and (
                p.get("type") == "ByteLevel" or (p.get("type") == "Split" and p.get("behavior") != "Removed")
            )
            for p in steps
        )
    )


def _keeps_offsets(post: dict[str, Any] | None) -> bool:
    """No post-processor, or ones that leave the offsets as they are (no trim_offsets)."""
    if post is None:
        return True
    if post.get("type") == "Sequence":
        return all(_keeps_offsets(p) for p in post.get("processors", []))
    return post.get("type") in _OFFSET_KEEPING_PROCESSORS and not post.get("trim_offsets", False)
