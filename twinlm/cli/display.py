"""Showing user data on the terminal: names, titles, file names and texts come from exports, which anyone
who wrote in a chat controls.

Two dangers: rich markup (a speaker named "Mallory [/]" crashed `twinlm people`; "[bold red]x" styled the
table) and terminal control sequences ("\\x1b]0;pwned\\x07" retitles the terminal, "\\x1b[2J" clears it,
some terminals act on more). `safe_text` makes a value printable: control characters become U+FFFD, line
breaks and tabs a space, bidi embeddings/overrides/isolates are dropped (U+202E reverses what follows:
"exe.txt" shown for "txt.exe"), and the rest is escaped for rich markup. JSON output (--json) is data, not
display, and is left as it is.
"""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text

_REPLACEMENT = "\ufffd"
_BIDI = (*range(0x202A, 0x202F), *range(0x2066, 0x206A))  # LRE RLE PDF LRO RLO, LRI RLI FSI PDI
_CONTROLS = (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))

# One line of text (a name in a table cell, a file name in a message): nothing may break the line.
_ONE_LINE = {c: _REPLACEMENT for c in _CONTROLS} | {c: " " for c in (0x09, 0x0A, 0x0D)} | dict.fromkeys(_BIDI)
# Several lines of text (a sample in --preview), one character for one: styled spans keep their offsets.
_LINES = {c: _REPLACEMENT for c in (*_CONTROLS, *_BIDI)} | {0x09: "\t", 0x0A: "\n"}


def plain_text(value: object) -> str:
    """`value` as one line without control characters or bidi controls (for output without markup)."""
    text = str(value)
    if text.isprintable():  # the common case: no control characters, nothing to translate
        return text
    return text.translate(_ONE_LINE)


def safe_text(value: object) -> str:
    """`value` to embed in rich markup: one line, no control characters, markup escaped."""
    return escape(plain_text(value))


def safe_rich_text(text: Text) -> Text:
    """A styled multi-line text (a preview sample) with its control characters made visible in place."""
    plain = text.plain
    if not plain.isprintable():
        # Same length: the spans (which styles where) stay valid.
        text.plain = plain.translate(_LINES)
    return text
