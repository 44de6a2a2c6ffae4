"""A damaged dataset folder (a disk error, a hand edit, a copy cut short) is one error line naming the file
and what to do, in every command that reads it; never a JSON decoder's traceback. The review page still
opens, without the build's figures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from twinlm.cli import app
from twinlm.serve.review import review_app

from testdata import EXAMPLES

DAMAGE: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "build.json cut short": ("build.json", lambda text: text[: len(text) // 2]),
    "build.json not an object": ("build.json", lambda _: "[1, 2]\n"),
    "samples.jsonl cut mid-line": ("samples.jsonl", lambda text: text[: len(text) // 2 + 7]),
    "train.parquet cut short": ("train.parquet", lambda data: data[: len(data) // 2]),
}
READS = {  # what each command reads of the dataset folder
    "validate": {"build.json", "samples.jsonl", "train.parquet"},
    "conversations": {"samples.jsonl"},
    "train": {"build.json", "train.parquet"},
    "export-data": {"samples.jsonl"},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Callable[[str], Path]) -> Path:
    ws = tmp_path_factory.mktemp("twin") / "twin"
    runner = CliRunner()
    assert runner.invoke(app, ["init", str(ws), "--me", "Alex Rivera"]).exit_code == 0
    assert runner.invoke(app, ["ingest", "-w", str(ws), str(EXAMPLES / "telegram")]).exit_code == 0
    done = runner.invoke(app, ["build", "-w", str(ws), "--model", str(tokenizer_dir("chatml"))])
    assert done.exit_code == 0, done.output
    return ws


def damaged(built: Path, damage: str, tmp_path: Path) -> Path:
    import shutil

    ws = tmp_path / "twin"
    shutil.copytree(built, ws)
    name, change = DAMAGE[damage]
    path = ws / "data" / name
    if name.endswith(".parquet"):
        path.write_bytes(change(path.read_bytes()))
    else:
        path.write_text(change(path.read_text(encoding="utf-8")), encoding="utf-8")
    return ws


@pytest.mark.parametrize(
    ("command", "damage"),
    [(command, damage) for command, read in READS.items() for damage in DAMAGE if DAMAGE[damage][0] in read],
)
def test_commands_reading_a_damaged_dataset_say_so_in_one_line(
    built: Path, tmp_path: Path, damage: str, command: str
) -> None:
    name = DAMAGE[damage][0]
    ws = damaged(built, damage, tmp_path)
    extra = ["--format", "sharegpt"] if command == "export-data" else []
    said = CliRunner().invoke(app, [command, "-w", str(ws), *extra])
    assert said.exit_code == 1 and isinstance(said.exception, SystemExit), said.output  # not a crash
    (line,) = [line for line in said.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {ws / 'data' / name}: ")
    assert line.endswith("run `twinlm build` again")


@pytest.mark.parametrize("damage", DAMAGE)
def test_the_review_page_opens_without_the_figures_of_a_damaged_build(
    built: Path, tmp_path: Path, damage: str
) -> None:
    ws = damaged(built, damage, tmp_path)
    with TestClient(review_app(ws), base_url="http://127.0.0.1:8765") as client:
        listed, totals = client.get("/review/api/conversations"), client.get("/review/api/totals")
    assert (listed.status_code, totals.status_code) == (200, 200), listed.text + totals.text
    assert listed.json()["conversations"]
