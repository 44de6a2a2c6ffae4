"""Redaction in `build`: documents (their chunks and what the teacher endpoint receives) and the
report of what was redacted, per kind, in build.json; pseudonyms for other people's names."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.prepare.build import build
from twinlm.prepare.pseudonyms import Pseudonyms
from twinlm.prepare.redact import RedactConfig, Redactor

from testdata import EXAMPLES

ME = ["Alex Rivera", "Alex"]
PRIVATE = {
    "phone": "+49 171 1234567",
    "email": "jana.k@example.org",
    "iban": "DE89 3704 0044 0532 0130 00",
    "card": "4111 1111 1111 1111",
    "ip": "203.0.113.42",
}
DOCUMENT = (
    "# Contacts for the trip\n\n"
    f"Call Jana on {PRIVATE['phone']} or write to {PRIVATE['email']} before Friday.\n\n"
    f"Deposit to {PRIVATE['iban']}; the card on file is {PRIVATE['card']}.\n\n"
    f"The cabin's router answers on {PRIVATE['ip']}, and the gear list is in the shared folder.\n"
)


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "trip.md").write_text(DOCUMENT, encoding="utf-8")
    db = Corpus(tmp_path / "corpus.db")
    assert not ingest([EXAMPLES], db, ParseOptions(timezone="UTC"), documents=[docs]).failed
    return db


def test_documents_are_redacted_in_chunks_and_teacher_requests(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_teacher import PROMPT, FakeTeacher

    monkeypatch.delenv("TWINLM_TEACHER_API_KEY", raising=False)
    server = FakeTeacher()
    try:
        teacher = {"enabled": True, "base_url": server.url, "model": "t", "prompt": PROMPT}
        cfg = TwinConfig(
            name="alex", me=ME, build=BuildConfig(model=str(tokenizer_dir("chatml")), teacher=teacher)
        )
        out = tmp_path / "data"
        result = build(cfg, corpus, out)
        sent = json.dumps([r["body"] for r in server.requests], ensure_ascii=False)
    finally:
        server.close()
    chunks = [
        json.loads(line)
        for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()
        if json.loads(line)["source"] == "documents"
    ]
    written = json.dumps(chunks, ensure_ascii=False)
    assert "Call Jana on [PHONE]" in written and "the gear list" in written
    assert server.requests and "[IBAN]" in sent
    for kind, value in PRIVATE.items():
        assert value not in written, kind
        assert value not in sent, kind
    report = json.loads((out / "build.json").read_text())
    assert report == result.report
    for kind in PRIVATE:
        assert report["redacted"][kind] >= 1, kind
    assert set(report["redacted"]) >= {"email", "phone", "card", "iban", "secret", "address", "ip"}


def test_redaction_off_keeps_documents(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    build_config = BuildConfig(model=str(tokenizer_dir("chatml")), redact=RedactConfig(enabled=False))
    result = build(TwinConfig(name="alex", me=ME, build=build_config), corpus, tmp_path / "data")
    written = (tmp_path / "data" / "samples.jsonl").read_text(encoding="utf-8")
    assert PRIVATE["iban"] in written
    assert not any(result.report["redacted"].values())


def test_pseudonyms_are_consistent_and_only_when_asked() -> None:
    people = {"Jana Kowalski": ["jana_k", "J. Kowalski"], "Bob": ["Bobby"]}
    on = Redactor(RedactConfig(pseudonymize_people=True), people)
    counts: Counter[str] = Counter()
    first = on("Jana said Bob and Jana Kowalski will come; Bobby too. I will.", counts)
    again = Redactor(RedactConfig(pseudonymize_people=True), dict(reversed(people.items())))
    assert again("Jana said Bob and Jana Kowalski will come; Bobby too. I will.", Counter()) == first
    jana, bob = Pseudonyms(people).of["Jana"], Pseudonyms(people).of["Bob"]
    assert jana != bob and jana not in ("Jana", "Bob")
    assert first == f"{jana} said {bob} and {jana} will come; {bob} too. I will."
    assert counts["pseudonymised name"] == 4
    assert Redactor(RedactConfig(), people)("Jana said hi", Counter()) == "Jana said hi"  # off by default


def test_region_reads_national_numbers_of_the_users_country() -> None:
    text = "my number is now 4155552671 ok"
    bare = "new one: 4155552671"
    assert Redactor(RedactConfig(region="US"))(bare, Counter()) == "new one: [PHONE]"
    assert Redactor(RedactConfig(region=None))(bare, Counter()) == bare  # a bare 10-digit run: unknown
    assert Redactor(RedactConfig(region=None))(text, Counter()) == "my number is now [PHONE] ok"  # keyword
    assert Redactor(RedactConfig(region="de"))("ruf 0171 1234567 an", Counter()) == "ruf [PHONE] an"
    assert RedactConfig(region="gb").region == "GB"
    with pytest.raises(ValueError, match="unknown region"):
        RedactConfig(region="XX")


def test_region_auto_comes_from_the_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    assert Redactor(RedactConfig()).region == "US"
    monkeypatch.setenv("LANG", "C.UTF-8")
    assert Redactor(RedactConfig()).region is None


def test_cli_build_says_what_it_redacted(tokenizer_dir: Callable[[str], Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from twinlm.cli import app

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "trip.md").write_text(DOCUMENT, encoding="utf-8")
    runner = CliRunner()
    ws = tmp_path / "twin"
    assert runner.invoke(app, ["init", str(ws), "--me", "Alex Rivera", "--me", "Alex"]).exit_code == 0
    ingested = runner.invoke(app, ["ingest", "-w", str(ws), str(EXAMPLES), "--documents", str(docs)])
    assert ingested.exit_code == 0, ingested.stderr
    result = runner.invoke(app, ["build", "-w", str(ws), "--model", str(tokenizer_dir("chatml"))])
    assert result.exit_code == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("Redacted:"))
    for kind in PRIVATE:
        assert f"{kind} " in line, line


def test_imported_datasets_are_redacted(tokenizer_dir: Callable[[str], Path], tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Write to {PRIVATE['email']} and call {PRIVATE['phone']}."},
                {"role": "assistant", "content": f"Done: the IBAN {PRIVATE['iban']} is on the invoice."},
            ]
        }
    ] * 3
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    db = Corpus(tmp_path / "corpus.db")
    assert not ingest([data], db, ParseOptions(timezone="UTC")).failed
    cfg = TwinConfig(
        name="alex", me=ME, build=BuildConfig(model=str(tokenizer_dir("chatml")), targets="assistant")
    )
    result = build(cfg, db, tmp_path / "data")
    written = (tmp_path / "data" / "samples.jsonl").read_text(encoding="utf-8")
    assert [json.loads(line)["kind"] for line in written.splitlines()] == ["assistant"]  # the dataset's
    assert "[EMAIL]" in written and "[IBAN]" in written
    for kind in ("email", "phone", "iban"):
        assert PRIVATE[kind] not in written, kind
        assert result.report["redacted"][kind] >= 1, kind
