"""Atomic file writes: outputs appear whole or not at all.

A write goes to a temporary file next to its target (`.NAME.<random>` + TMP_SUFFIX, never a name a user
would choose) and is renamed over it. A process killed mid-write leaves that temporary file; the next
run of the same command removes it (`remove_leftovers`), and only files with that suffix. Outputs that
belong together (a dataset's files) are staged the same way and put in place as one (`Staged`).
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
_TMP_FILE = re.compile(r"\..+\.[A-Za-z0-9_]{8}" + re.escape(TMP_SUFFIX))  # what mkstemp and mkdtemp name here


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


class Staged:
    """One set of outputs in `folder`, written under temporary names and put in place together.

    `commit` first deletes the marker (the file readers check before the others: a dataset's build.json),
    then puts every staged file and folder in place, deletes the outputs this write did not make, and
    puts the new marker in place last. So a reader never finds a marker beside files of another write:
    stopped anywhere (Ctrl-C, a full disk, a crash), the folder holds the old set whole, or no marker
    (nothing there; the next run removes the leftovers), or the new set whole.
    """

    def __init__(self, folder: Path, outputs: tuple[str, ...], marker: str) -> None:
        self.folder, self.outputs, self.marker = folder, outputs, marker
        self._staged: dict[str, Path] = {}  # output name -> its temporary file or folder

    def file(self, name: str) -> Path:
        """A new empty temporary file (0600) that becomes `name` at the commit."""
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=self.folder)
        os.close(fd)
        return self._stage(name, Path(tmp))

    def directory(self, name: str) -> Path:
        """A new empty temporary folder that replaces the folder `name` at the commit."""
        tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=self.folder)
        return self._stage(name, Path(tmp))

    def _stage(self, name: str, tmp: Path) -> Path:
        if name not in self.outputs and name != self.marker:
            raise ValueError(f"{name} is not one of this folder's outputs")  # a twinlm bug
        self._staged[name] = tmp
        return tmp

    def commit(self) -> None:
        if self.marker not in self._staged:
            raise ValueError(f"nothing to commit without {self.marker}")  # a twinlm bug
        (self.folder / self.marker).unlink(missing_ok=True)  # from here until the new marker: no output
        old_folders: list[Path] = []  # deleted once the new set is in place
        for name in self.outputs:
            target, tmp = self.folder / name, self._staged.pop(name, None)
            if target.is_dir() and not target.is_symlink():
                # A folder cannot be renamed over one that has files: this one is moved aside first.
                old_folders.append(
                    Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=self.folder))
                )
                os.replace(target, old_folders[-1])
            if tmp is not None:
                os.replace(tmp, target)
            else:
                target.unlink(missing_ok=True)
        os.replace(self._staged.pop(self.marker), self.folder / self.marker)
        for old in old_folders:  # a folder left here is a leftover the next run removes
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        """Delete what was staged and not committed (nothing after a commit)."""
        for tmp in self._staged.values():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self._staged.clear()


def remove_leftovers(folder: Path, folder_pattern: re.Pattern[str] | None = None) -> list[Path]:
    """Delete what a killed write left directly in `folder`: atomic_open's and Staged's temporary files and
    folders, and folders whose whole name matches `folder_pattern` (a command's own scratch folders).
    Returns what was removed; nothing else is touched. Call it only while no other process of the same
    command writes there."""
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
        elif child.is_dir() and (
            _TMP_FILE.fullmatch(child.name) or (folder_pattern and folder_pattern.fullmatch(child.name))
        ):
            shutil.rmtree(child, ignore_errors=True)
        else:
            continue
        removed.append(child)
    return removed
