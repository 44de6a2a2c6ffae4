"""Document chunking: sizes, seams, overlap and coverage, by example and by property."""

from __future__ import annotations

import itertools
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from twinlm.prepare.documents import (
    DocumentsConfig,
    chunk,
    chunk_spans,
    document_samples,
    normalize,
)
from twinlm.prepare.sample import Sample

CJK_SEAMS = "。！？，、；："


def _nonspace(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _check_spans(text: str, chunk_chars: int, overlap_chars: int) -> list[tuple[int, int]]:
    """Every documented invariant of chunk_spans, asserted; returns the spans."""
    text = normalize(text)
    spans = chunk_spans(text, chunk_chars, overlap_chars)
    pieces = chunk(text, chunk_chars, overlap_chars)
    assert pieces == [text[s:e] for s, e in spans]
    if not text.strip():
        assert spans == []
        return spans
    for piece in pieces:
        assert piece and piece == piece.strip()
        assert len(piece) <= chunk_chars
    # Coverage: first and last non-space characters, no gap between chunks, starts increase.
    assert spans[0][0] == len(text) - len(text.lstrip())
    assert spans[-1][1] == len(text.rstrip())
    for (s1, e1), (s2, _) in itertools.pairwise(spans):
        assert s2 > s1
        assert not text[e1:s2].strip(), "a gap between chunks lost text"
        assert e1 - s2 <= overlap_chars, "more overlap than allowed"
    # Joined without their overlap, the chunks are the text, modulo whitespace.
    rebuilt = text[spans[0][0] : spans[0][1]] + "".join(
        text[max(prev_end, s) : e] for (_, prev_end), (s, e) in itertools.pairwise(spans)
    )
    assert _nonspace(rebuilt) == _nonspace(text)
    # A chunk ends inside a run of non-space characters only at CJK punctuation, or when that run
    # (a "word") is longer than a chunk.
    for _, e in spans[:-1]:
        if e < len(text) and not text[e].isspace() and text[e - 1] not in CJK_SEAMS:
            left = len(text[:e]) - len(re.split(r"\s", text[:e])[-1])
            right = re.match(r"\S*", text[e:])
            assert right is not None
            word = text[left : e + right.end()]
            assert len(word) > chunk_chars, f"cut inside the word {word!r}"
    return spans


# ------------------------------------------------------------------------------------------ examples


def test_short_text_is_one_trimmed_chunk() -> None:
    assert chunk("  \n Hello world. \n\n", 64, 8) == ["Hello world."]
    assert chunk(" \n\t \r\n", 64, 8) == []
    assert chunk("", 64, 8) == []


def test_sentence_ends_win_over_word_boundaries() -> None:
    sentence = "The quick brown fox jumps over the lazy dog. "
    pieces = chunk(sentence * 10, 100, 0)
    assert all(p.endswith("dog.") for p in pieces)
    assert all(len(p) <= 100 for p in pieces)
    assert _nonspace("".join(pieces)) == _nonspace(sentence * 10)


def test_paragraph_break_wins_over_a_later_sentence_end() -> None:
    text = "First para sentence one. Sentence two here.\n\nSecond para one. Two. Three. Four. Five and more"
    first = chunk(text, 80, 0)[0]
    assert first == "First para sentence one. Sentence two here."


def test_hard_wrapped_lines_end_chunks_at_sentences_not_wraps() -> None:
    # PDF-style text: a line break every ~40 characters in the middle of sentences.
    text = (
        "This sentence was wrapped by a PDF\n"
        "tool at a fixed width and goes on. Then\n"
        "another sentence follows it right here\n"
        "and ends only now. Short one."
    )
    pieces = chunk(text, 90, 0)
    assert pieces[0] == "This sentence was wrapped by a PDF\ntool at a fixed width and goes on."


def test_markdown_headings_stay_with_their_text_and_fences_break_at_blank_lines() -> None:
    text = (
        "# Guide\n\nIntro sentence here. Another one follows.\n\n"
        "## Install\n\nRun the installer and wait.\n\n"
        "```python\nimport os\n\nprint(os.getcwd())\n\nprint('done')\n```\n\nAfter the code.\n"
    )
    pieces = chunk(text, 72, 0)
    for piece in pieces:
        last_line = piece.splitlines()[-1]
        assert not last_line.startswith("#"), f"chunk ends with a heading: {piece!r}"
    assert pieces[0] == "# Guide\n\nIntro sentence here. Another one follows."
    assert pieces[1].startswith("## Install")
    # Inside the code fence the cuts fall on its blank lines, never mid-line.
    lines = set(text.splitlines())
    for piece in pieces:
        assert piece.splitlines()[0] in lines and piece.splitlines()[-1] in lines


def test_crlf_is_normalised() -> None:
    assert chunk("One line.\r\nTwo line.\rThree.", 64, 0) == ["One line.\nTwo line.\nThree."]


def test_long_word_is_cut_only_when_it_cannot_fit() -> None:
    word = "x" * 150
    pieces = chunk(f"short words first {word} tail", 64, 16)
    assert pieces == ["short words first", "x" * 64, "x" * 64, "x" * 22 + " tail"]
    # A 60-character word fits a 64-character chunk: never cut, even after an overlap.
    fits = "y" * 60
    text = " ".join(["alpha beta gamma delta"] * 3 + [fits, "omega"])
    assert any(fits in p for p in chunk(text, 64, 32))


def test_overlap_starts_at_a_seam_and_is_about_the_asked_size() -> None:
    words = " ".join(f"w{i:03d}" for i in range(200))  # 5-character words, no sentences
    spans = _check_spans(words, 100, 30)
    overlaps = [e1 - s2 for (_, e1), (s2, _) in itertools.pairwise(spans)]
    assert all(25 <= o <= 30 for o in overlaps), overlaps
    for s, _ in spans[1:]:
        assert words[s - 1] == " "  # starts on a word
    # With no sentence start in the window, the next chunk starts at the earliest word in it.
    text = "Aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm. Next sentence goes on and on."
    assert chunk(text, 80, 40) == [
        "Aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm.",
        "ffff gggg hhhh iiii jjjj kkkk llll mmmm. Next sentence goes on and on.",
    ]


def test_sentence_start_preferred_in_overlap() -> None:
    text = "One two three four five six. Seven eight nine ten eleven twelve. " * 4
    spans = chunk_spans(text, 96, 48)
    for s, _ in spans[1:]:
        assert text[s - 2] == ".", f"next chunk starts mid-sentence: {text[s : s + 20]!r}"


def test_cjk_text_breaks_after_its_punctuation() -> None:
    text = "日本語の文章です。これは二番目の文です。" * 10
    pieces = chunk(text, 64, 16)
    assert all(p.endswith("。") for p in pieces)
    assert all(len(p) <= 64 for p in pieces)
    _check_spans(text, 64, 16)


def test_deterministic() -> None:
    text = "Lorem ipsum dolor sit amet. " * 200
    assert chunk(text, 128, 32) == chunk(text, 128, 32)


# ------------------------------------------------------------------------------------------ property

_alphabet = st.sampled_from([*list("abcdefghij ABC    \n\n\t.!?,:#-`。、\r\"')"), "```", "## ", "- "])
_texts = st.lists(st.one_of(_alphabet, st.text("xyz", min_size=10, max_size=200)), max_size=400).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_texts, chunk_chars=st.integers(64, 200), overlap_ratio=st.floats(0, 0.99))
def test_chunk_properties(text: str, chunk_chars: int, overlap_ratio: float) -> None:
    overlap = min(int(chunk_chars * overlap_ratio), chunk_chars - 1)
    _check_spans(text, chunk_chars, overlap)


# ---------------------------------------------------------------------------- config + samples


def test_config_defaults_and_overlap_validation() -> None:
    config = DocumentsConfig()
    assert (config.chunk_chars, config.overlap_chars, config.enabled) == (512, 64, True)
    with pytest.raises(ValidationError) as err:
        DocumentsConfig(chunk_chars=128, overlap_chars=128)
    first = err.value.errors()[0]
    assert first["loc"] == ("overlap_chars",)
    assert "must be smaller than chunk_chars (128)" in first["msg"]
    with pytest.raises(ValidationError):
        DocumentsConfig(chunk_chars=63)
    with pytest.raises(ValidationError):
        DocumentsConfig(chunk_size=100)  # type: ignore[call-arg]
    assert all(f.description for f in DocumentsConfig.model_fields.values())


def test_document_samples() -> None:
    text = "A sentence about cats. " * 40
    config = DocumentsConfig(chunk_chars=200, overlap_chars=40)
    samples = document_samples("documents:abc", "notes.txt", text, config)
    assert len(samples) == len(chunk(text, 200, 40)) > 1
    for index, sample in enumerate(samples):
        assert sample.id == f"documents:abc:{index}"
        assert sample.conversation == "documents:abc"
        assert sample.source == "documents"
        assert sample.kind == "document"
        assert sample.system is None
        (turn,) = sample.turns
        assert turn.speaker == "" and turn.trained
        assert "notes.txt" not in turn.text
        assert Sample.from_json(sample.to_json()) == sample
    assert [s.turns[0].text for s in samples] == chunk(text, 200, 40)
    assert document_samples("documents:abc", "t", text, DocumentsConfig(enabled=False)) == []
    assert document_samples("documents:abc", "t", "  \n", config) == []


def test_text_without_seams_is_chunked_in_linear_time() -> None:
    # A scan to the end of the text for every chunk would take minutes here.
    started = time.perf_counter()
    pieces = chunk("x" * 1_000_000 + " end", 512, 64)
    assert time.perf_counter() - started < 5
    assert len(pieces) == 1_000_000 // 512 + 1
    assert pieces[-1].endswith(" end")


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap_chars < chunk_chars"):
        chunk("text", 64, 64)
