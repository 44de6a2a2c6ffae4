"""Placeholder: being written."""

from collections.abc import Iterator
from pathlib import Path

from twinlm.model import Conversation, ParseOptions, ParseReport


def looks_like(head: str, path: Path) -> bool:
    return False


def parse(path: Path, options: ParseOptions, report: ParseReport) -> Iterator[Conversation]:
    raise NotImplementedError
