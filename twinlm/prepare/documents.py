"""Documents for continued pre-training: overlapping chunks cut where the text has seams.

A document (one `Kind.DOCUMENT` message from `twinlm.sources.documents`) becomes chunks of at most
`chunk_chars` characters, each trained as plain completion text. Decisions:

- Chunks are whitespace-trimmed slices of the text (line endings normalised to "\\n"); nothing is
  rewritten inside a chunk, so a chunk reads exactly like the document.
- Where a chunk ends is chosen among the seams of the text, best first: a paragraph break (a blank
  line, or a line break before a Markdown heading), a line break, a sentence end (. ! ? … and the
  CJK 。！？, after closing quotes or brackets), a word boundary (whitespace, or a CJK comma). A line
  break inside a hard-wrapped sentence (the next line starts in lower case and the line does not end
  a sentence) counts as a word boundary only, so PDF text with a break every 80 characters still
  ends chunks at sentence ends. Among the clean seams (all but word boundaries) in the second half
  of the new text (what follows the overlap) the best kind wins, the latest of that kind; failing
  that, the same from a quarter of the way on; only then the latest word boundary. A shorter chunk
  that ends a sentence trains better than a full one cut mid-sentence. A word is cut only when it
  alone is longer than `chunk_chars`.
- Markdown needs no parser: headings and blank lines are paragraph seams (the break after a heading
  line only a word boundary, so a heading stays with its text), list items are lines, and code
  fences are broken at their blank lines first.
- The next chunk starts inside the last `overlap_chars` characters of the previous one, at a seam
  (a paragraph, line or sentence start that repeats at least half the overlap, else the earliest
  word start in the window), so consecutive chunks share about `overlap_chars` characters and never
  more. With no seam there (one long word) there is no overlap.
- All chunks of one document share its conversation id, so the train/eval split never separates them.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from twinlm.prepare.sample import Sample, Turn

SOURCE = "documents"

# Seam ranks: higher is a better place to end a chunk.
PARAGRAPH, LINE, SENTENCE, WORD = 4, 3, 2, 1

_SENTENCE_END = frozenset(".!?…。！？‼⁇⁈⁉")
_CLOSERS = frozenset("\"'”’)]}»」』）")
_CJK_SENTENCE_END = "。！？"
_CJK_PAUSE = "，、；："
# A whitespace run that follows text, or CJK punctuation directly followed by more text (CJK has no
# spaces, so its punctuation is the only seam). Lookbehind sees before `pos`, so scanning a window
# classifies its first run correctly.
_SEAM = re.compile(rf"(?<=\S)\s+|(?<=[{_CJK_SENTENCE_END}{_CJK_PAUSE}])(?=\S)")
_HEADING = re.compile(r"#{1,6}\s")


class DocumentsConfig(BaseModel):
    """How documents become training text (continued pre-training on overlapping chunks)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Train on the text of ingested documents.")
    chunk_chars: int = Field(
        512,
        ge=64,
        description="Largest chunk in characters. Chunks end at a paragraph, line or sentence end where "
        "the text has one, else between words.",
    )
    overlap_chars: int = Field(
        64,
        ge=0,
        description="Characters each chunk repeats from the end of the previous one (at most), so no "
        "sentence loses its context at a chunk border. 0: no overlap.",
    )

    @field_validator("overlap_chars")
    @classmethod
    def _overlap_below_chunk(cls, value: int, info: ValidationInfo) -> int:
        chunk_chars = info.data.get("chunk_chars")
        if chunk_chars is not None and value >= chunk_chars:
            raise ValueError(
                f"must be smaller than chunk_chars ({chunk_chars}), got {value}; lower it "
                "(a tenth to a quarter of chunk_chars is typical) or raise chunk_chars"
            )
        return value


def document_samples(
    doc_id: str, title: str, text: str, config: DocumentsConfig, *, source: str = SOURCE
) -> list[Sample]:
    """One trained, speakerless turn per chunk. `doc_id` is the conversation id ("documents:<id>").

    The title (a file name for documents) is not put into the trained text: file names teach the
    model nothing about the content and would repeat in every chunk.
    """
    del title  # kept in the signature so callers need not know that; see the docstring
    if not config.enabled:
        return []
    return [
        Sample(
            id=f"{doc_id}:{index}",
            conversation=doc_id,
            source=source,
            kind="document",
            turns=(Turn(speaker="", text=piece, trained=True),),
        )
        for index, piece in enumerate(chunk(text, config.chunk_chars, config.overlap_chars))
    ]


def chunk(text: str, chunk_chars: int, overlap_chars: int) -> list[str]:
    """The chunks of `text` (line endings normalised), each at most `chunk_chars` characters."""
    text = normalize(text)
    return [text[start:end] for start, end in chunk_spans(text, chunk_chars, overlap_chars)]


def normalize(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def chunk_spans(text: str, chunk_chars: int, overlap_chars: int) -> list[tuple[int, int]]:
    """(start, end) of each chunk in `text` (already normalised): trimmed, in order, covering all text.

    Invariants (tested): end - start <= chunk_chars; text[start] and text[end - 1] are not whitespace;
    starts strictly increase; a chunk starts at or before the first non-space character after the
    previous chunk's end (no gaps) and at most `overlap_chars` before that end.
    """
    if chunk_chars < 1 or not 0 <= overlap_chars < chunk_chars:
        raise ValueError(f"need 0 <= overlap_chars < chunk_chars, got {overlap_chars} and {chunk_chars}")
    text_end = len(text.rstrip())
    start = _skip_space(text, 0)
    frontier = start  # first character no chunk has covered yet
    spans: list[tuple[int, int]] = []
    while frontier < text_end:
        if text_end - start <= chunk_chars:
            spans.append((start, text_end))
            break
        end = _choose_end(text, start, frontier, chunk_chars)
        if end is None:  # the overlap pushed a word that fits on its own past the window
            start = frontier
            continue
        spans.append((start, end))
        frontier = _skip_space(text, end)
        start = _choose_start(text, start, end, overlap_chars) if overlap_chars else frontier
    return spans


def _choose_end(text: str, start: int, frontier: int, chunk_chars: int) -> int | None:
    """End of the chunk beginning at `start`, past `frontier`; None: try again without the overlap."""
    limit = start + chunk_chars
    seams = [(end, rank) for end, _, rank in _seams(text, frontier + 1, limit)]
    if not seams:
        # Cut inside a word only when that word alone is longer than a chunk.
        return None if start < frontier else limit
    # Measured over the new text only (after the overlap), so every chunk adds a fair share.
    fresh = limit - frontier
    for floor in (frontier + fresh // 2, frontier + fresh // 4):
        clean = [(rank, end) for end, rank in seams if end >= floor and rank > WORD]
        if clean:
            return max(clean)[1]
    return seams[-1][0]  # the latest word boundary (or whatever seam there is)


def _choose_start(text: str, start: int, end: int, overlap_chars: int) -> int:
    """Where the chunk after (start, end) begins: a seam inside the last `overlap_chars` characters."""
    lowest = max(end - overlap_chars, start + 1)
    candidates = [
        (nxt, rank)
        for _, nxt, rank in _seams(text, max(lowest - 1, start + 1), end - 1)
        if lowest <= nxt < end
    ]
    half = end - overlap_chars // 2
    strong = [(-rank, nxt) for nxt, rank in candidates if rank > WORD and nxt <= half]
    if strong:
        return min(strong)[1]  # best kind of seam, and of those the longest overlap
    if candidates:
        return min(nxt for nxt, _ in candidates)
    return _skip_space(text, end)


def _seams(text: str, low: int, high: int) -> list[tuple[int, int, int]]:
    """(end of the text before the seam, start of the text after it, rank) for seams ending in [low, high]."""
    found: list[tuple[int, int, int]] = []
    # endpos bounds the scan (a text without seams must not be searched to its end for every chunk);
    # a whitespace run cut short by it is measured to its real end below.
    for match in _SEAM.finditer(text, max(low, 1), min(len(text), high + 2)):
        cut = match.start()
        if cut > high:
            break
        after = _skip_space(text, cut)
        found.append((cut, after, _rank(text, cut, after)))
    return found


def _rank(text: str, cut: int, after: int) -> int:
    gap = text[cut:after]
    if not gap:  # CJK punctuation with text straight after it
        return SENTENCE if text[cut - 1] in _CJK_SENTENCE_END else WORD
    newlines = gap.count("\n")
    if newlines and _after_heading(text, cut):
        return WORD  # a heading belongs to the text below it, never at the end of a chunk
    if newlines >= 2:
        return PARAGRAPH
    if newlines == 1:
        if _HEADING.match(text, after):
            return PARAGRAPH
        ends_sentence = _ends_sentence(text, cut) or text[cut - 1] == ":"
        if not ends_sentence and after < len(text) and text[after].islower():
            return WORD  # a hard-wrapped sentence continues on the next line
        return LINE
    return SENTENCE if _ends_sentence(text, cut) else WORD


def _after_heading(text: str, cut: int) -> bool:
    """Whether the line ending at `cut` is a Markdown heading (headings are short: look back 300)."""
    floor = max(0, cut - 300)
    line_start = text.rfind("\n", floor, cut) + 1
    if line_start == 0 and floor > 0:
        return False
    return _HEADING.match(text, line_start) is not None


def _ends_sentence(text: str, cut: int) -> bool:
    i = cut - 1
    while i >= 0 and text[i] in _CLOSERS and cut - i <= 3:
        i -= 1
    return i >= 0 and text[i] in _SENTENCE_END


def _skip_space(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i].isspace():
        i += 1
    return i
