"""Errors shown to users: one line that names the file and the place in it."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path


class TwinError(Exception):
    """A user-facing error: the CLI prints `str(err)` on one line, never a traceback."""


class ExportError(TwinError):
    """An export file that cannot be read: names the file and where in it."""

    def __init__(self, path: Path | str, message: str, where: str | None = None) -> None:
        self.path = str(path)
        self.where = where
        self.message = message
        place = f"{self.path}:{where}" if where else self.path
        super().__init__(f"{place}: {message}")


class ConfigError(TwinError):
    """An invalid twin.yaml: names the file, the line, the field and the fix."""


# How libraries that write in native code (safetensors, pyarrow, llama.cpp's converter) say it.
_DISK_FULL = ("No space left on device", "os error 28", "StorageFull", "Disk quota exceeded")


def disk_full(error: BaseException) -> TwinError | None:
    """A full disk (or a used-up quota) as one line naming what was being written; None for any other
    error. Models and datasets are large: a full disk is the user's to fix, not a bug to trace."""
    if isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error):
        where = " while writing the corpus"
    elif isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {error.filename}" if error.filename else ""
    elif any(said in str(error) for said in _DISK_FULL):  # libraries' own errors (safetensors, pyarrow)
        where = ""
    else:
        return None
    return TwinError(f"the disk is full{where}: free some space and run the same command again")
