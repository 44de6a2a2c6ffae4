"""Shared property-test pieces: a damaged copy of an export must parse, or raise ExportError.

Damage is what real files suffer: a download cut short, a few bytes overwritten. Nothing but
ExportError (one line, naming the file) may escape a parser, whatever the bytes.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from hypothesis import strategies as st

from twinlm.errors import ExportError
from twinlm.model import ParseOptions, ParseReport


@st.composite
def damaged(draw: st.DrawFn, sources: list[Path]) -> bytes:
    """One of `sources`, with up to 8 bytes overwritten and, half the time, cut short."""
    data = bytearray(draw(st.sampled_from(sources)).read_bytes())
    for _ in range(draw(st.integers(0, 8))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def parses_or_fails_cleanly(parser: ModuleType, path: Path, data: bytes, drop_media: bool) -> None:
    path.write_bytes(data)
    try:
        list(parser.parse(path, ParseOptions(media="drop" if drop_media else "placeholder"), ParseReport()))
    except ExportError as e:
        assert str(path) in str(e) and "\n" not in str(e)
