"""Export parsers: one module per format, each with `looks_like(head)` and `parse(path, ...)`.

`FORMATS` is a plain dict from format name to module, in detection order: the first module whose
`looks_like` accepts the file's first bytes wins. The file name is never consulted.

"documents" is last because it accepts any readable text: `detect` says what a file is, and ingest
decides what to read. It reads documents only from paths given as documents (`--documents`,
`ingest.documents`); a file in an export path that detects as a document is skipped and named.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from twinlm.errors import ExportError
from twinlm.model import Conversation, ParseOptions, ParseReport
from twinlm.sources import chatgpt, discord, documents, jsonl, messenger, telegram, whatsapp
from twinlm.sources._common import read_head

# Order matters: specific JSON shapes first, line-oriented WhatsApp before the documents catch-all.
FORMATS: dict[str, ModuleType] = {
    "chatgpt": chatgpt,
    "discord": discord,
    "telegram": telegram,
    "messenger": messenger,
    "jsonl": jsonl,
    "whatsapp": whatsapp,
    "documents": documents,
}


def detect(path: Path) -> str | None:
    """The format name of an export file from its content, or None when no parser recognises it."""
    head = read_head(path)
    for name, module in FORMATS.items():
        if module.looks_like(head, path):
            return name
    return None


def parse(
    path: Path,
    fmt: str | None = None,
    options: ParseOptions | None = None,
    report: ParseReport | None = None,
) -> Iterator[Conversation]:
    """Parse one export file (format detected from content unless given)."""
    fmt = fmt or detect(path)
    if fmt is None:
        raise ExportError(
            path,
            "not a recognised export (ChatGPT, Discord, Telegram, WhatsApp, "
            "Messenger/Instagram, JSONL dataset, or a .txt/.md/.pdf/.docx document)",
        )
    if fmt not in FORMATS:
        raise ExportError(path, f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return FORMATS[fmt].parse(path, options or ParseOptions(), report or ParseReport())
