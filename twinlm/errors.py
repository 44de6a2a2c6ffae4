"""Errors shown to users: one line that names the file and the place in it."""

from __future__ import annotations

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
