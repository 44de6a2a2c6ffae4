"""`twinlm init --force` keeps the user's settings instead of wiping them (issue 12, item 6)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from twinlm.config import load_config


def init(*args: str) -> tuple[int, str, str]:
    from twinlm.cli import app

    result = CliRunner().invoke(app, ["init", *args])
    return result.exit_code, result.stdout, result.stderr


def test_init_force_keeps_the_settings_and_applies_the_options(tmp_path: Path) -> None:
    ws = tmp_path / "twin"
    assert init(str(ws), "--me", "Alex")[0] == 0
    path = ws / "twin.yaml"
    text = path.read_text(encoding="utf-8")
    text = text.replace("name: twin", "name: my-own-name").replace("model: ''", "model: tiny")
    text = text.replace("people: {}", "people:\n  Sam:\n  - sammy")
    text = text.replace("max_steps: 0", "max_steps: 123")
    path.write_text(text, encoding="utf-8")
    (ws / "runs").rmdir()  # a folder lost meanwhile comes back

    code, stdout, _ = init(str(ws), "--force")
    assert code == 0 and "Kept the settings" in stdout
    config = load_config(path)
    assert config.name == "my-own-name" and config.me == ["Alex"]
    assert config.build.model == "tiny" and config.train.max_steps == 123
    assert config.people == {"Sam": ["sammy"]}
    assert (ws / "runs").is_dir()
    assert "# Passes over the training split" in path.read_text(encoding="utf-8")  # the comments are there

    # Options given with --force change only what they name.
    assert init(str(ws), "--force", "--me", "Alex R", "--name", "renamed")[0] == 0
    config = load_config(path)
    assert (config.name, config.me, config.train.max_steps) == ("renamed", ["Alex R"], 123)


def test_init_force_over_an_unreadable_file_keeps_it_aside(tmp_path: Path) -> None:
    ws = tmp_path / "twin"
    ws.mkdir()
    (ws / "twin.yaml").write_text("name: x\nme: [Alex\n", encoding="utf-8")
    code, _, stderr = init(str(ws), "--force")
    assert code == 0
    assert (ws / "twin.yaml.bak").read_text(encoding="utf-8") == "name: x\nme: [Alex\n"
    assert "twin.yaml.bak" in " ".join(stderr.split())
    assert load_config(ws / "twin.yaml").name == "twin"


def test_init_without_force_still_refuses(tmp_path: Path) -> None:
    assert init(str(tmp_path / "t"))[0] == 0
    code, _, stderr = init(str(tmp_path / "t"))
    assert code == 1 and "--force" in stderr
