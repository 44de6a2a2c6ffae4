"""The build verb end to end: the sample exports in, a dataset folder out, through the CLI as well."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from twinlm.cli import app
from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.errors import TwinError
from twinlm.prepare.build import build
from twinlm.prepare.sample import Sample

from testdata import DOCUMENTS, EXAMPLES

ME = ["Alex Rivera", "Alex"]


def config(model: Path, **build: object) -> TwinConfig:
    return TwinConfig(name="alex", me=ME, build=BuildConfig(model=str(model), **build))


def samples(folder: Path) -> list[Sample]:
    return [Sample.from_json(line) for line in (folder / "samples.jsonl").read_bytes().splitlines()]


def test_build_trains_only_my_turns_and_describes_itself(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    # Personal data in the corpus (through the user's own edits): Sam's is redacted, Alex's is not.
    corpus.db.execute(
        "UPDATE messages SET user_text = text || ' mail sam@example.com' WHERE text LIKE 'anyone up%'"
    )
    corpus.db.execute(
        "UPDATE messages SET user_text = 'yes!! 7pm? alex@example.com' WHERE text = 'yes!! 7pm?'"
    )
    out = tmp_path / "data"
    result = build(config(tokenizer_dir("chatml")), corpus, out)
    assert {p.name for p in out.iterdir()} >= {
        "samples.jsonl",
        "train.parquet",
        "eval.parquet",
        "build.json",
        "tokenizer",
    }
    info = json.loads((out / "build.json").read_text())
    assert info["template_style"] == "named" and info["me"] == "Alex Rivera"
    assert result.samples["train"] > 0 and 0 < info["trained_share"] < 1
    built = samples(out)
    by_source = {s.source: s for s in built}
    # Chats: only Alex's turns are trained, never the first turn; the persona prompt names the others.
    discord = by_source["discord"]
    assert {t.speaker for t in discord.turns if t.trained} == {"Alex Rivera"}
    assert not discord.turns[0].trained
    assert discord.system and discord.system.startswith(
        "You are Alex Rivera, chatting with Priya and Sam on Discord"
    )
    # ChatGPT: the assistant is trained and the custom instructions are the system prompt.
    gpt = [s for s in built if s.source == "chatgpt"]
    assert all({t.speaker for t in s.turns if t.trained} <= {"ChatGPT"} for s in gpt)
    assert any(s.system and "Be brief and concrete" in s.system for s in gpt)
    # Documents are chunks trained whole.
    assert by_source["documents"].turns[0].trained and by_source["documents"].kind == "document"
    # The tokenized rows decode back to the samples' trained text only.
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    rows = pq.read_table(out / "train.parquet").to_pylist() + pq.read_table(out / "eval.parquet").to_pylist()
    row = next(r for r in rows if r["sample_id"] == discord.id)
    trained = tokenizer.decode(
        [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    )
    assert "the pink one is sandbagged" not in trained and "heel hook technique" in trained  # Sam: context
    # Every rule that fired is in the report, counted: the media in each export, Discord's "see ya".
    assert info["counts"]["redacted email"] == 1 and info["counts"]["messages edited by you"] == 2
    assert info["counts"]["message dropped: media"] == 4
    assert info["counts"]["session cut: conversation ender"] == 1
    texts = [t.text for t in discord.turns]
    assert (
        "anyone up for the gym tomorrow? mail [EMAIL]" in texts and "yes!! 7pm? alex@example.com" in texts[1]
    )


def test_same_corpus_and_config_give_byte_identical_outputs(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    cfg = config(tokenizer_dir("llama3"))
    build(cfg, corpus, tmp_path / "one")
    build(cfg, corpus, tmp_path / "two")
    for name in ("samples.jsonl", "train.parquet", "eval.parquet", "build.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_bad_persona_gets_one_clear_error(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    with pytest.raises(TwinError, match=r"build\.targets: 'Nobody Here' never speak in the corpus"):
        build(
            config(tokenizer_dir("chatml"), targets=["Nobody Here"], documents={"enabled": False}),
            corpus,
            tmp_path / "d",
        )
    with pytest.raises(TwinError, match=r"the build produced no samples.*build\.targets"):
        build(
            config(tokenizer_dir("chatml"), sources=["documents"], documents={"enabled": False}),
            corpus,
            tmp_path / "d",
        )
    with pytest.raises(TwinError, match=r"build\.model: cannot load a tokenizer"):
        build(config(tmp_path / "missing-model"), corpus, tmp_path / "d")


def test_cli_build_validate_export(tokenizer_dir: Callable[[str], Path], tmp_path: Path) -> None:
    runner = CliRunner()
    ws = tmp_path / "twin"
    assert runner.invoke(app, ["init", str(ws), "--me", "Alex Rivera", "--me", "Alex"]).exit_code == 0
    ingested = runner.invoke(app, ["ingest", "-w", str(ws), str(EXAMPLES), "--documents", str(DOCUMENTS)])
    assert ingested.exit_code == 0
    result = runner.invoke(app, ["build", "-w", str(ws)])
    assert result.exit_code == 1 and "build.model is empty" in result.stderr
    result = runner.invoke(
        app, ["build", "-w", str(ws), "--model", str(tokenizer_dir("mistral-v0.3")), "--preview", "2"]
    )
    assert result.exit_code == 0, result.stderr
    assert "What the rules did" in result.stdout and "trained share" in result.stdout
    result = runner.invoke(app, ["validate", "-w", str(ws), "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["problems"] == {} and report["estimate_seconds"] > 0
    result = runner.invoke(app, ["export-data", "-w", str(ws), "--format", "openai"])
    assert result.exit_code == 0, result.stderr
    exported = datasets.load_dataset(
        "json", data_files=str(ws / "export" / "data-openai" / "train.jsonl"), split="train"
    )
    assert all(m[-1]["role"] == "assistant" for m in exported["messages"])


def test_teacher_questions_join_the_dataset_and_the_heldout_list(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_teacher import PROMPT, FakeTeacher

    monkeypatch.delenv("TWINLM_TEACHER_API_KEY", raising=False)
    server = FakeTeacher()
    try:
        teacher = {
            "enabled": True,
            "base_url": server.url,
            "model": "t",
            "heldout_fraction": 0.5,
            "questions_per_chunk": 4,
            "prompt": PROMPT,
        }
        cfg = config(tokenizer_dir("chatml"), teacher=teacher)
        out = tmp_path / "data"
        build(cfg, corpus, out)
        asked = len(server.requests)
        assert asked >= 1
        built = samples(out)
        qa = [s for s in built if s.source == "teacher"]
        doc_split = {s.conversation: s.split for s in built if s.source == "documents"}
        assert qa and all(s.split == doc_split[s.conversation] for s in qa)
        assert all([t.trained for t in s.turns] == [False, True] for s in qa)
        heldout = [json.loads(line) for line in (out / "heldout_questions.jsonl").read_text().splitlines()]
        trained_questions = {s.turns[0].text for s in qa}
        assert all(q["question"] not in trained_questions for q in heldout)
        build(cfg, corpus, out)  # rebuilt from the cache: nothing asked again
        assert len(server.requests) == asked
    finally:
        server.close()


def test_document_chunks_are_trained_whole_and_tiny_builds_locally(corpus: Corpus, tmp_path: Path) -> None:
    from twinlm.models import resolve_model

    ws = tmp_path / "ws"
    result = build(config(Path("tiny")), corpus, ws / "data")
    assert (ws / "models" / "tiny" / "tokenizer_config.json").is_file()  # the preset was made here
    assert resolve_model("tiny", ws) == str(ws / "models" / "tiny")  # and is reused
    assert result.report["template_style"] == "named"
    tokenizer = AutoTokenizer.from_pretrained(ws / "data" / "tokenizer")
    rows = (
        pq.read_table(ws / "data" / "train.parquet").to_pylist()
        + pq.read_table(ws / "data" / "eval.parquet").to_pylist()
    )
    (doc,) = [r for r in rows if r["sample_id"].startswith("documents:")]
    assert doc["labels"] == doc["input_ids"] and doc["input_ids"][-1] == tokenizer.eos_token_id
    assert "Vertigo in Lisbon" in tokenizer.decode(doc["input_ids"])
