"""Offsets worked out from byte lengths are the tokenizer's own (issue 18).

A byte-level BPE's tokens are the bytes of the text, so the rendering asks the tokenizer for ids only
(`encode_batch_fast`) and adds up the tokens' byte lengths for the offsets the labels need. That is
right only where the tokenizer changes nothing in the text: these tests hold the worked-out offsets to
the tokenizer's own on texts with emoji, combining marks, special-token strings and odd whitespace, and
check that the tokenizers for which it would be wrong are refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from unicodedata import is_normalized

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from twinlm.models.tiny import build_tiny_tokenizer
from twinlm.prepare import render
from twinlm.prepare.render import render_many
from twinlm.prepare.sample import Sample, Turn
from twinlm.prepare.tokens import Tokens, _byte_lengths, _description, byte_lengths, byte_offsets

from tiny_tokenizers import FAMILIES

BYTE_LEVEL = sorted(f for f, fam in FAMILIES.items() if fam.kind == "bytelevel")
PIECES = [
    "a", "b c", " ", "  ", "\n", "\t", "\r\n", "hello", " world", "don't", "123", "!?", "é", "ñ", "ß",
    "İ", "ǅ", "😂", "👍🏽", "❤️", "中文", "e\u0301", "\u2060", "привет", "<|im_start|>", "<|im_end|>",
    "<|endoftext|>", "<|eot_id|>", "</s>", "<s>", "[INST]",
]  # fmt: skip
TEXTS = st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=30).map("".join)


def _variant(tokenizer: Any, change: Callable[[Tokenizer], None]) -> PreTrainedTokenizerFast:
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    change(backend)
    return PreTrainedTokenizerFast(tokenizer_object=backend)


@pytest.fixture(scope="module")
def byte_level(
    tokenizer_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The tokenizers the byte-length offsets are for: the tiny preset's, the byte-level families',
    and one with Qwen2's NFC normalizer."""
    found = {f: AutoTokenizer.from_pretrained(tokenizer_dir(f)) for f in BYTE_LEVEL}
    found["tiny"] = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path_factory.mktemp("tiny")))

    def nfc(backend: Tokenizer) -> None:
        backend.normalizer = normalizers.NFC()

    found["nfc"] = _variant(found["qwen2.5"], nfc)
    return found


@pytest.fixture(scope="module")
def every_family(byte_level: dict[str, Any], tokenizer_dir: Callable[[str], Path]) -> dict[str, Any]:
    """The byte-level tokenizers and every other family's (SentencePiece ones, the plain one)."""
    found = dict(byte_level)
    found.update({f: AutoTokenizer.from_pretrained(tokenizer_dir(f)) for f in FAMILIES if f not in found})
    return found


def _check(tokenizer: Any, texts: list[str]) -> list[bool]:
    """Per text of one batch, whether the worked-out offsets were used; where they were, they are the
    tokenizer's own."""
    table = byte_lengths(tokenizer)
    assert table is not None
    backend = tokenizer.backend_tokenizer
    id_lists = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    wanted = backend.encode_batch(texts, add_special_tokens=False)
    used = []
    for text, ids, bounds, want in zip(
        texts, id_lists, byte_offsets(id_lists, texts, table), wanted, strict=True
    ):
        used.append(bounds is not None)
        if bounds is None:
            continue
        assert ids == want.ids
        offsets = [tuple(o) for o in want.offsets]
        got = Tokens(ids, bounds=bounds)
        assert got.offsets == offsets, text
        assert got.array is not None and got.array.dtype == np.int32 and got.array.tolist() == want.ids
        assert [got.chars(k) for k in range(len(ids))] == offsets
        with_bos = Tokens([7, *ids], shift=1, bounds=bounds)
        assert with_bos.offsets == [(0, 0), *offsets]
        assert [with_bos.chars(k) for k in range(len(ids) + 1)] == [(0, 0), *offsets]
        # The positions the labels ask for, against bisecting the tokenizer's offsets.
        every = range(len(text) + 2)
        for fast in (got, with_bos):
            slow = Tokens(fast.ids, offsets=fast.offsets)  # bisected lists, BOS as a (0, 0) token
            assert [fast.ending_after(at) for at in every] == [slow.ending_after(at) for at in every], text
            assert [fast.starting_from(at) for at in every] == [slow.starting_from(at) for at in every], text
            # All at once (what rendering asks, a turn's start and end each), as one at a time.
            positions = [*every, *reversed(every), 0, 0]
            assert fast.ending_after_each(positions) == [slow.ending_after(at) for at in positions], text
            assert fast.starting_from_each(positions) == [slow.starting_from(at) for at in positions], text
    return used


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS, min_size=1, max_size=6))
def test_offsets_from_byte_lengths_are_the_tokenizers_own(
    byte_level: dict[str, Any], texts: list[str]
) -> None:
    for name, tokenizer in byte_level.items():
        used = _check(tokenizer, texts)
        for text, fast in zip(texts, used, strict=True):
            # Only a text the normalizer would change is left to the tokenizer's offsets.
            assert fast or (name == "nfc" and not is_normalized("NFC", text)), (name, text)


def test_the_byte_level_tokenizers_take_the_fast_path_on_every_kind_of_text(
    byte_level: dict[str, Any],
) -> None:
    # NFC makes "e\u0301" "é" (fewer bytes) and puts the marks after "q" in another order (as many
    # bytes): neither is its own bytes there; the chats after them in the batch still are.
    changed = ["e\u0301 combining", "q\u0301\u0323 reordered"]
    texts = ["", "plain ascii", "emoji 😂👍🏽 and é", *changed, "<|im_end|> typed", "中文 \r\n\t x"]
    for name, tokenizer in byte_level.items():
        used = _check(tokenizer, texts)
        assert used == [name != "nfc" or t not in changed for t in texts], name


def test_tokenizers_whose_tokens_are_not_the_texts_bytes_are_refused(
    byte_level: dict[str, Any], tokenizer_dir: Callable[[str], Path]
) -> None:
    base = byte_level["qwen2.5"]

    def trimmed(backend: Tokenizer) -> None:
        backend.post_processor = processors.ByteLevel(trim_offsets=True)

    def prefix_space(backend: Tokenizer) -> None:
        spec = json.loads(backend.to_str())
        spec["pre_tokenizer"]["pretokenizers"][-1]["add_prefix_space"] = True
        backend.pre_tokenizer = Tokenizer.from_str(json.dumps(spec)).pre_tokenizer

    def lowercased(backend: Tokenizer) -> None:
        backend.normalizer = normalizers.Lowercase()

    def spaces_dropped(backend: Tokenizer) -> None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )

    def spaces_removed(backend: Tokenizer) -> None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(" ", "removed"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )

    # Each of these gives offsets the byte lengths do not: shown on the tokenizer itself.
    for change in (trimmed, prefix_space, lowercased, spaces_dropped, spaces_removed):
        tokenizer = _variant(base, change)
        assert byte_lengths(tokenizer) is None, change.__name__
    text = " hello world"
    (trim,) = _variant(base, trimmed).backend_tokenizer.encode_batch([text], add_special_tokens=False)
    (kept,) = base.backend_tokenizer.encode_batch([text], add_special_tokens=False)
    assert trim.ids == kept.ids and trim.offsets != kept.offsets  # trimmed: spaces left out of offsets

    spaced = json.loads(base.backend_tokenizer.to_str())
    spaced["added_tokens"].append(
        {
            "id": len(base),
            "content": "<x>",
            "single_word": False,
            "lstrip": True,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    )
    assert (
        byte_lengths(PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spaced)))) is None
    )

    for family, fam in FAMILIES.items():  # SentencePiece's "▁" is not the space's byte
        if fam.kind != "bytelevel":
            assert byte_lengths(AutoTokenizer.from_pretrained(tokenizer_dir(family))) is None, family


def test_the_table_follows_added_tokens(byte_level: dict[str, Any], tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path))
    assert byte_lengths(tokenizer) is not None
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|new_token|>"]})
    assert _check(tokenizer, ["say <|new_token|> now"]) == [True]


def test_rendering_with_an_nfc_tokenizer_equals_rendering_with_its_own_offsets(
    tokenizer_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Qwen2's tokenizer normalizes to NFC: a chat typed with decomposed accents (macOS input) is not
    its own bytes there and is tokenized again with offsets; the rows are those of the tokenizer's own."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir("qwen2.5"))
    tokenizer.backend_tokenizer.normalizer = normalizers.NFC()
    table = byte_lengths(tokenizer)
    assert table is not None and table.nfc
    texts = [
        "cafe\u0301 tomorrow?",
        "q\u0301\u0323 odd marks",
        "sure 😂",
        "plain text",
        "ok <|im_end|> typed",
    ]
    batch = [
        Sample(
            id=f"c#{k}",
            conversation="c",
            source="telegram",
            kind="chat",
            turns=tuple(
                Turn(s, texts[(k + i) % len(texts)], s == "Me")
                for i, s in enumerate(["Sam", "Me", "Sam", "Me"])
            ),
            system="You are me." if k % 2 else None,
        )
        for k in range(len(texts))
    ]
    got = list(render_many(batch, tokenizer, 4096, batch_size=3)), list(render_many(batch, tokenizer, 24))
    monkeypatch.setattr(render, "byte_lengths", lambda _: None)
    want = list(render_many(batch, tokenizer, 4096, batch_size=3)), list(render_many(batch, tokenizer, 24))
    assert got == want
    assert any(row.labels.count(-100) < len(row.labels) for row in got[0])  # something is trained


def test_the_description_read_is_the_tokenizer_json(
    byte_level: dict[str, Any], every_family: dict[str, Any]
) -> None:
    """The parts of the tokenizer read without its merges decide as its whole tokenizer.json would."""
    found = dict(every_family)

    def trimmed(backend: Tokenizer) -> None:
        backend.post_processor = processors.ByteLevel(trim_offsets=True)

    found["trimmed"] = _variant(byte_level["llama3"], trimmed)
    for name, tokenizer in found.items():
        backend = tokenizer.backend_tokenizer
        read, whole = _byte_lengths(_description(backend)), _byte_lengths(json.loads(backend.to_str()))
        assert (read is None) == (whole is None), name
        if read is not None and whole is not None:
            assert read.nfc == whole.nfc and np.array_equal(read.lengths, whole.lengths), name
    # No post-processor at all (transformers' wrapper always adds one, a tokenizer read otherwise may not).
    bare = _description(byte_level["llama3"].backend_tokenizer) | {"post_processor": None}
    assert _byte_lengths(bare) is not None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS, min_size=1, max_size=4))
def test_an_encodings_answers_are_the_bisected_offsets(
    every_family: dict[str, Any], texts: list[str]
) -> None:
    """Where the offsets are not worked out (SentencePiece and the rest), the Encoding is asked for the
    few positions the labels need: its answers are those of bisecting all its offsets."""
    for name, tokenizer in every_family.items():
        for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
            for shift in (0, 1):
                ids = [7] * shift + e.ids
                slow = Tokens(ids, offsets=[(0, 0)] * shift + [tuple(o) for o in e.offsets])
                every = range(max((end for _, end in e.offsets), default=0) + 2)

                # A fresh one per question: a bisect fallback fills in all the offsets for later ones.
                asked = partial(Tokens, ids, e, shift=shift)

                assert [asked().ending_after(at) for at in every] == [
                    slow.ending_after(at) for at in every
                ], name
                assert [asked().starting_from(at) for at in every] == [
                    slow.starting_from(at) for at in every
                ], name
                assert asked().ending_after_each(list(every)) == [slow.ending_after(at) for at in every], name
                assert asked().starting_from_each(list(every)) == [slow.starting_from(at) for at in every], (
                    name
                )
                assert [asked().chars(k) for k in range(len(ids))] == [
                    slow.chars(k) for k in range(len(ids))
                ], name
                assert asked().offsets == slow.offsets, name


def test_ids_that_are_not_the_texts_bytes_are_refused_and_leave_the_rest(byte_level: dict[str, Any]) -> None:
    """A chat whose ids are more or fewer bytes than its text gets None and does not shift the chats
    after it; an id outside the table, or one that is not bytes (unk), refuses the batch."""
    tokenizer = byte_level["tiny"]
    table = byte_lengths(tokenizer)
    assert table is not None
    backend = tokenizer.backend_tokenizer
    texts = ["hello there", "emoji 😂 é", "plain"]
    ids = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    offsets = [[tuple(o) for o in e.offsets] for e in backend.encode_batch(texts, add_special_tokens=False)]

    def offsets_of(found: Any) -> list[tuple[int, int]]:
        return list(zip(found.starts.tolist(), found.ends.tolist(), strict=True))

    for wrong in (0, 1, 2):
        for changed in (ids[wrong] + ids[wrong], ids[wrong][:-1]):  # more bytes, fewer bytes
            given_ids = [changed if k == wrong else x for k, x in enumerate(ids)]
            found = byte_offsets(given_ids, texts, table)
            assert found[wrong] is None
            for k, bounds in enumerate(found):
                if k != wrong:
                    assert bounds is not None and offsets_of(bounds) == offsets[k], (wrong, k)
    for outside in (len(table.lengths), -1):
        assert byte_offsets([ids[0], [outside], ids[2]], texts, table) == [None] * 3
    unknown = table._replace(lengths=table.lengths.copy())
    unknown.lengths[ids[1][0]] = 0  # as the table marks a token that is not bytes
    assert byte_offsets(ids, texts, unknown) == [None] * 3
