"""What a newcomer trips over in twin.yaml (issue 12, item 6): every mistake listed at once, each at its
line, in the file's own words (no pydantic type tags); YAML syntax errors point at the line of the mistake."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner


def errors(ws: Path, text: str) -> list[str]:
    """The error lines of `twinlm config -w WS` with `text` as twin.yaml."""
    from twinlm.cli import app

    ws.mkdir(exist_ok=True)
    (ws / "twin.yaml").write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["config", "-w", str(ws)])
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    return [" ".join(line.split()) for line in result.stderr.splitlines() if line.strip()]


def test_every_mistake_is_listed_at_its_line_in_the_users_words(tmp_path: Path) -> None:
    text = (
        "name: x\n"  # 1
        "me: Alex\n"  # 2: a list is wanted
        "build:\n"  # 3
        "  targets: al\n"  # 4: neither a choice nor a list
        "  model: tiny\n"  # 5
        "train:\n"  # 6
        "  method: lor\n"  # 7
        "  epochs: -1\n"  # 8
        "  batchtokens: 1\n"  # 9: a typo of batch_tokens
        "  lora:\n"  # 10
        "    r: many\n"  # 11
    )
    path = tmp_path / "ws" / "twin.yaml"
    lines = errors(tmp_path / "ws", text)
    assert all(line.startswith("error: ") for line in lines), lines
    assert [line.split(": ")[1] for line in lines] == [f"{path}:{n}" for n in (2, 4, 7, 8, 9, 11)], lines
    joined = "\n".join(lines)
    assert "me: should be a list" in joined
    assert "build.targets: should be 'auto', 'me', 'assistant' or 'everyone', or a list" in joined
    assert "(got 'al')" in joined
    assert "train.method: should be 'lora', 'qlora', 'dora', 'qdora' or 'full' (got 'lor')" in joined
    assert "train.epochs: should be greater than 0 (got -1)" in joined
    assert "train.batchtokens: unknown setting; did you mean batch_tokens?" in joined
    assert "train.lora.r: should be a whole number (got 'many')" in joined
    for leak in ("literal[", "list[str]", "Input should be", "int_parsing"):
        assert leak not in joined, joined


def test_a_wrong_item_in_a_list_is_named_by_its_place(tmp_path: Path) -> None:
    lines = errors(tmp_path / "ws", "build:\n  targets:\n    - Sam\n    - 3\n")
    assert len(lines) == 1 and lines[0].endswith(
        ":4: build.targets[1]: should be text (put it in quotes) (got 3)"
    )


def test_yaml_syntax_errors_point_at_the_mistake(tmp_path: Path) -> None:
    path = tmp_path / "ws" / "twin.yaml"
    # An unclosed [ on line 2: the parser notices on line 3.
    (line,) = errors(tmp_path / "ws", "name: x\nme: [Alex\nbuild:\n  model: tiny\n")
    assert line.startswith(f"error: {path}:2: invalid YAML: a [ list opened here is not closed"), line
    # An unclosed quote on line 3: the parser notices at the end of the file.
    (line,) = errors(tmp_path / "ws", 'name: x\nbuild:\n  model: "tiny\ntrain:\n  method: lora\n')
    assert line.startswith(f"error: {path}:3: invalid YAML: a quoted text opened here is not closed"), line
    (line,) = errors(tmp_path / "ws", "name: x\nbuild:\n\tmodel: tiny\n")
    assert line == f"error: {path}:3: invalid YAML: a tab: YAML is indented with spaces only"
