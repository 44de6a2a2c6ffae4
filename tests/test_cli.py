from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from twinlm.cli import app

from testdata import EXAMPLES

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_init_ingest_people_stats(tmp_path: Path) -> None:
    ws = tmp_path / "twin"
    code, out, _ = run("init", str(ws), "--name", "alex", "--me", "Alex Rivera", "--me", "alex")
    assert code == 0 and (ws / "twin.yaml").is_file()
    assert all((ws / sub).is_dir() for sub in ("data", "runs", "export", "reports"))
    (ws / "twin.yaml").write_text((ws / "twin.yaml").read_text().replace("timezone: null", "timezone: UTC"))

    code, out, _ = run("ingest", "-w", str(ws), str(EXAMPLES), "--json")
    assert code == 0
    summary = json.loads(out)
    assert {f["format"] for f in summary["files"]} >= {"chatgpt", "discord", "telegram", "whatsapp"}
    assert sum(f["new_messages"] for f in summary["files"]) > 40

    code, out, _ = run("ingest", "-w", str(ws), str(EXAMPLES))
    assert code == 0 and "0 new messages" in out and "Left out, by reason" in out

    code, out, _ = run("people", "-w", str(ws), "--json")
    speakers = json.loads(out)
    mine = {(s["source"], s["name"]) for s in speakers if s["person"] == "me"}
    assert {
        ("chatgpt", "You"),
        ("discord", "Alex"),
        ("telegram", "Alex Rivera"),
        ("whatsapp", "Alex Rivera"),
        ("messenger", "Alex Rivera"),
    } <= mine
    assert all(s["person"] is None for s in speakers if s["name"] in {"Mom", "Sam", "Jordan Lee"})

    code, out, _ = run("stats", "-w", str(ws), "--json")
    by_source = {s["source"]: s for s in json.loads(out)}
    assert by_source["discord"]["conversations"] == 1
    assert by_source["discord"]["top_speakers"][0]["name"] == "Alex"
    assert by_source["telegram"]["first"].startswith("2024-06-04")


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    code, _, err = run("stats", "-w", str(tmp_path))
    assert code == 1 and "not a twinlm workspace" in err and "Traceback" not in err

    ws = tmp_path / "twin"
    run("init", str(ws))
    code, _, err = run("init", str(ws))
    assert code == 1 and "already exists" in err

    (ws / "twin.yaml").write_text("ingest:\n  media: keep\n")
    code, _, err = run("stats", "-w", str(ws))
    assert code == 1 and "twin.yaml:2: ingest.media" in err and "Traceback" not in err

    (ws / "twin.yaml").write_text("name: x\n")
    code, _, err = run("ingest", "-w", str(ws), str(EXAMPLES), "--timezone", "Nowhere/City")
    assert code == 1 and "--timezone: unknown time zone 'Nowhere/City'" in err

    bad = tmp_path / "conversations.json"
    bad.write_bytes((EXAMPLES / "chatgpt" / "conversations.json").read_bytes()[:2500])
    code, _, err = run("ingest", "-w", str(ws), str(bad))
    assert code == 1 and f"{bad}:byte" in err and "Traceback" not in err

    code, _, err = run("ingest", "-w", str(ws), str(bad), "--format", "icq")
    assert code == 1 and "--format: unknown format 'icq'" in err


def test_help_texts_come_from_the_config_model() -> None:
    code, out, _ = run("ingest", "--help")
    assert code == 0
    assert "[photo]" in out and "IANA time zone" in " ".join(out.split())


def test_config_prints_the_workspace_settings_as_valid_commented_yaml(tmp_path: Path) -> None:
    ws = tmp_path / "twin"
    run("init", str(ws), "--name", "alex", "--me", "Alex")
    code, out, _ = run("config", "-w", str(ws))
    assert code == 0 and "name: alex" in out and "# IANA time zone" in out
    (tmp_path / "copy.yaml").write_text(out)
    from twinlm.config import load_config

    assert load_config(tmp_path / "copy.yaml").me == ["Alex"]
    code, out, _ = run("config", "--markdown")
    assert code == 0 and out.startswith("# Configuration: twin.yaml")
