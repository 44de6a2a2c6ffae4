"""Names, titles, file names and texts from exports are shown literally by every verb: rich markup in them
neither styles nor crashes the output, and terminal control sequences never reach the terminal (issue 16
point 4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.text import Text
from typer.testing import CliRunner

from twinlm.cli import app, err, out
from twinlm.cli.display import plain_text, safe_rich_text, safe_text

from tiny_tokenizers import build_tokenizer

runner = CliRunner()

MALLORY = "Mallory [/]"
BOLD = "[bold red]x"
TITLE_ESC = "Eve\x1b]0;pwned\x07"  # sets the terminal's title
CLEAR = "Clear\x1b[2J"  # clears the screen
C1 = "Csi\x9b31m"  # C1 control: CSI on terminals that read 8-bit controls
BIDI = "Trudy\u202egnp.exe"  # right-to-left override: shows as "Trudyexe.png"
CHAT_TITLE = "[link=file:///etc/passwd]Group\x1b[31m[/link]"
NAMES = [MALLORY, BOLD, TITLE_ESC, CLEAR, C1, BIDI]
FILE_NAME = "[bold]chat\x1b[2J.json"
# What must never reach the terminal: ESC, BEL, CSI, RLO.
FORBIDDEN = ("\x1b", "\x07", "\x9b", "\u202e")


@pytest.fixture(autouse=True)
def wide_console() -> Iterator[None]:
    """Wide enough that table cells are not folded, so names can be looked for whole."""
    widths = out.width, err.width
    out.width = err.width = 400
    yield
    out.width, err.width = widths


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def telegram_export(names: list[str], title: str) -> dict[str, object]:
    messages = [
        {
            "id": i + 1,
            "type": "message",
            "date": f"2024-06-04T10:{i:02d}:00",
            "date_unixtime": str(1717495200 + 60 * i),
            "from": name,
            "from_id": f"user{names.index(name) + 1}",
            "text": f"hello from {name}: [bold]not bold[/] \x1b[2J and on",
        }
        for i, name in enumerate(names * 3 + names[:2])  # the first two are the top speakers
    ]
    return {"name": title, "type": "private_group", "id": 42, "messages": messages}


def literal(shown: str) -> None:
    for bad in FORBIDDEN:
        assert bad not in shown, f"{bad!r} reached the terminal"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "twin"
    assert run("init", str(ws), "--name", "alex", "--me", BOLD)[0] == 0
    config = ws / "twin.yaml"
    config.write_text(config.read_text().replace("timezone: null", "timezone: UTC"))
    return ws


def test_safe_text_escapes_markup_and_drops_controls() -> None:
    assert safe_text(MALLORY) == "Mallory \\[/]"
    assert safe_text(BOLD) == "\\[bold red]x"
    assert safe_text("Eve\x1b]0;pwned\x07") == "Eve\ufffd]0;pwned\ufffd"
    assert safe_text("a\nb\tc\r") == "a b c "
    assert safe_text("Trudy\u202egnp.exe\u2066") == "Trudygnp.exe"
    assert plain_text("[bold]x\x9b") == "[bold]x\ufffd"
    assert safe_text("Zoë 😀 [photo]") == "Zoë 😀 \\[photo]"
    styled = Text("one\x1b[2J\ntwo")
    styled.stylize("bold", 0, 3)
    shown = safe_rich_text(styled)
    assert shown.plain == "one\ufffd[2J\ntwo" and shown.spans[0].end == 3


def test_ingest_people_stats_superseded_show_names_literally(workspace: Path, tmp_path: Path) -> None:
    export = tmp_path / "in" / FILE_NAME
    export.parent.mkdir()
    export.write_text(json.dumps(telegram_export(NAMES, CHAT_TITLE)))
    broken = tmp_path / "in" / "[red]broken\x1b]0;x\x07.json"
    broken.write_text('{"name": "x", "type": "personal_chat", "id": 1, "messages": [{"id": 1,')

    code, stdout, stderr = run("ingest", "-w", str(workspace), str(export.parent))
    literal(stdout + stderr)
    assert code == 1  # the broken file
    assert "[bold]chat\ufffd[2J.json" in stdout
    assert "[red]broken\ufffd]0;x\ufffd.json" in stderr and "error:" in stderr

    code, stdout, stderr = run("people", "-w", str(workspace))
    assert code == 0, stderr
    literal(stdout + stderr)
    for name in (MALLORY, BOLD, "Eve\ufffd]0;pwned\ufffd", "Clear\ufffd[2J", "Csi\ufffd31m", "Trudygnp.exe"):
        assert name in stdout

    code, stdout, stderr = run("stats", "-w", str(workspace))
    assert code == 0, stderr
    literal(stdout + stderr)
    assert MALLORY in stdout and BOLD in stdout

    from twinlm.corpus.db import Corpus

    with Corpus(workspace / "corpus.db") as corpus:
        corpus.db.execute("UPDATE messages SET superseded_by_import = 1 WHERE author_name = ?", (MALLORY,))
        corpus.db.commit()
    code, stdout, stderr = run("superseded", "-w", str(workspace), "--limit", "0")
    assert code == 0, stderr
    literal(stdout + stderr)
    assert "[link=file:///etc/passwd]Group\ufffd[31m[/link]" in stdout and MALLORY in stdout
    assert "[bold]not bold[/]" in stdout


def test_build_preview_and_validate_show_names_literally(workspace: Path, tmp_path: Path) -> None:
    export = tmp_path / "in" / "result.json"
    export.parent.mkdir()
    export.write_text(json.dumps(telegram_export(NAMES, CHAT_TITLE)))
    assert run("ingest", "-w", str(workspace), str(export))[0] == 0
    model = build_tokenizer("chatml", tmp_path / "tokenizer")
    code, stdout, stderr = run(
        "build", "-w", str(workspace), "--model", str(model), "--targets", "everyone", "--preview", "3"
    )
    assert code == 0, stderr
    literal(stdout + stderr)
    assert MALLORY in stdout and BOLD in stdout  # the per-speaker table
    assert "[bold]not bold[/]" in stdout  # message text in the preview

    code, stdout, stderr = run("validate", "-w", str(workspace))
    literal(stdout + stderr)
    assert "Traceback" not in stderr and "Model:" in stdout
