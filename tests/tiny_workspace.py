"""Pieces shared by the tests that make a tiny workspace end to end (train, evaluate, serve): the WhatsApp
chat exports they ingest, the cleaning that keeps every line of them, and the CLI run in this process.
(Not in conftest.py: nested conftest files would shadow its name.)"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from typer.testing import CliRunner

ME = "Alex Rivera"
# The build keeps every session of these short, repetitive chats.
CLEAN = {"low_quality_sessions": False, "conversation_enders": "off", "non_replies": False}


def write_chats(
    exports: Path,
    friends: Sequence[str],
    *,
    days: int = 3,
    me: str = ME,
    emoji: bool = True,
    after_sunday: Callable[[int], str] | None = None,
) -> None:
    """One WhatsApp export per friend in `exports` (made here): on each of `days` days the same four lines
    (the friend asks about dinner, `me` answers, the friend asks for a call on sunday, `me` agrees);
    `after_sunday(day)` is appended to the friend's sunday line. Each chat at its own hour and minutes
    with its own first words: ingest takes an export whose messages match a chat already there, shifted
    by a time-zone offset, for a re-export of that chat, whatever the file is called."""
    exports.mkdir(parents=True)
    food = "pasta with tomato sauce again 🍝" if emoji else "pasta with tomato sauce again"
    for k, who in enumerate(friends):
        lines = []
        for day in range(1, days + 1):
            t, m = f"{day:02d}/03/2024, {8 + k:02d}", 10 + 4 * k
            extra = after_sunday(day) if after_sunday is not None else ""
            lines.append(f"{t}:{m:02d} - {who}: {who} here. Did you eat dinner today?")
            lines.append(f"{t}:{m + 1:02d} - {me}: yes, {food}")
            lines.append(f"{t}:{m + 2:02d} - {who}: Good, call me on sunday please{extra}")
            lines.append(f"{t}:{m + 3:02d} - {me}: sure, sunday evening works for me")
        (exports / f"WhatsApp Chat with {who}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def invoke(*args: str) -> tuple[int, str, str]:
    """The CLI in this process (for tests that patch a function on the way): exit code, stdout, stderr;
    an exception other than the exit is raised (a bug, not a user error)."""
    from twinlm.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def error_lines(stderr: str) -> list[str]:
    """The error lines of a command's stderr (progress lines are not errors); never a traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error")]
