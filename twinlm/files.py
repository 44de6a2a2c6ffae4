"""Atomic file writes: outputs appear whole or not at all.

A write goes to a temporary file next to its target (`.NAME.<random>` + TMP_SUFFIX, never a name a user
would choose) and is renamed over it. A process killed mid-write leaves that temporary file; the next
run of the same command removes it (`remove_leftovers`), and only files with that suffix.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".twinlm-tmp"
_TMP_FILE = re.compile(r"\..+\.[A-Za-z0-9_]{8}" + re.escape(TMP_SUFFIX))  # what atomic_open's mkstemp names


@contextmanager
def atomic_open(path: Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """A file opened for writing that replaces `path` only when the block ends without an error."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file 0600: outputs are their owner's only (they hold private text).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: never a half-written file."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def remove_leftovers(folder: Path, folder_pattern: re.Pattern[str] | None = None) -> list[Path]:
    """Delete what a killed write left directly in `folder`: atomic_open's temporary files, and folders
    whose whole name matches `folder_pattern` (a command's own scratch folders). Returns what was removed;
    nothing else is touched. Call it only while no other process of the same command writes there."""
    removed: list[Path] = []
    try:
        children = sorted(folder.iterdir())
    except FileNotFoundError:
        return removed
    for child in children:
        if child.is_symlink():
            continue  # never followed: a link is not something twinlm made
        if child.is_file() and _TMP_FILE.fullmatch(child.name):
            child.unlink(missing_ok=True)
        elif child.is_dir() and folder_pattern is not None and folder_pattern.fullmatch(child.name):
            shutil.rmtree(child, ignore_errors=True)
        else:
            continue
        removed.append(child)
    return removed
