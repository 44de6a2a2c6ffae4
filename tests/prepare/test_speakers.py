"""One person per account (issue 9.3) and whose words a build trains (issue 9.4).

A Discord user is "Al" in one server and "Alice the Great" in another (username "alice_g"), and is
renamed between two exports of one channel: every name is one account, one speaker, in `people`
and in the build; a bare-name alias matches any of them; `--targets` takes any alias of a person.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from twinlm.cli import app
from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.corpus.queries import account_names, owners, speakers
from twinlm.errors import TwinError
from twinlm.identities import ME, Identities
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.prepare.build import build
from twinlm.prepare.sample import Sample
from twinlm.workspace import init_workspace

from testdata import EXAMPLES

ALICE, BOB, CARL = "555000000000000001", "555000000000000002", "555000000000000003"


def _author(author_id: str, username: str, nickname: str) -> dict[str, Any]:
    return {"id": author_id, "name": username, "discriminator": "0000", "nickname": nickname, "isBot": False}


def _dce(guild: str, channel: str, lines: list[tuple[str, str, str, str]], day: int = 1) -> dict[str, Any]:
    """A DiscordChatExporter channel: lines of (author id, username, nickname, text), a minute apart."""
    return {
        "guild": {"id": f"9{guild}", "name": f"Server {guild}"},
        "channel": {"id": channel, "type": "GuildTextChat", "name": "general"},
        "messages": [
            {
                "id": f"{channel}{i:03d}",
                "type": "Default",
                "timestamp": f"2024-03-{day:02d}T10:{i:02d}:00+00:00",
                "timestampEdited": None,
                "content": text,
                "author": _author(author_id, username, nickname),
                "attachments": [],
                "stickers": [],
            }
            for i, (author_id, username, nickname, text) in enumerate(lines)
        ],
    }


def _chat(who: str, username: str, nick: str, day: int) -> list[tuple[str, str, str, str]]:
    return [
        (BOB, "bob", "Bob", f"what are you reading this week, day {day}?"),
        (who, username, nick, f"a long novel about lighthouses and keepers, day {day}"),
        (BOB, "bob", "Bob", f"sounds great, lend it to me after, day {day}"),
        (who, username, nick, f"sure thing, I will bring it on saturday, day {day}"),
    ]


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    """Two servers where Alice has two nicknames, and a channel renamed between two exports."""
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "a.json").write_text(
        json.dumps(_dce("1", "700000000000000001", _chat(ALICE, "alice_g", "Al", 1)))
    )
    (folder / "b.json").write_text(
        json.dumps(_dce("2", "700000000000000002", _chat(ALICE, "alice_g", "Alice the Great", 5), day=5))
    )
    return folder


def _corpus(tmp_path: Path, *paths: Path) -> Corpus:
    corpus = Corpus(tmp_path / "corpus.db")
    for path in paths:
        assert not ingest([path], corpus, ParseOptions(timezone="UTC")).failed
    return corpus


def _samples(folder: Path) -> list[Sample]:
    return [Sample.from_json(line) for line in (folder / "samples.jsonl").read_bytes().splitlines()]


def _config(model: Path, me: list[str], **build: object) -> TwinConfig:
    return TwinConfig(name="t", me=me, build=BuildConfig(model=str(model), **build))


def test_a_discord_user_with_two_nicknames_is_one_speaker_in_people_and_build(
    exports: Path, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    corpus = _corpus(tmp_path, exports)
    identities = Identities(TwinConfig(), owners(corpus), account_names(corpus))
    alice = [r for r in speakers(corpus, identities) if r.author_id == ALICE]
    assert len(alice) == 1 and alice[0].messages == 4
    assert alice[0].author_name == "Alice the Great"  # the latest display name
    assert set(alice[0].names) == {"Al", "Alice the Great", "alice_g"}  # the username is kept too
    # Nobody mapped: both servers' turns are one speaker, named as `people` names the account.
    out = tmp_path / "everyone"
    build(_config(tokenizer_dir("chatml"), [], targets="everyone", eval_fraction=0), corpus, out)
    said = {
        t.speaker for s in _samples(out) for t in s.turns if "lighthouses" in t.text or "saturday" in t.text
    }
    assert said == {"Alice the Great"}  # before: {"Al", "Alice the Great"}


@pytest.mark.parametrize("alias", ["al", "ALICE THE GREAT", "alice_g", f"discord:{ALICE}"])
def test_any_name_of_the_account_makes_all_its_turns_mine(
    alias: str, exports: Path, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    corpus = _corpus(tmp_path, exports)
    out = tmp_path / "data"
    result = build(_config(tokenizer_dir("chatml"), [alias]), corpus, out)
    trained = [t for s in _samples(out) for t in s.turns if t.trained]
    # Both servers: before, "al" trained only server 1 and "alice_g" (the username) nothing at all.
    assert {t.text.rsplit("day ", 1)[1] for t in trained} == {"1", "5"}
    assert {t.speaker for t in trained} == {alias}
    assert result.report["trained_by_speaker"][alias]["turns"] == 4


def test_a_rename_between_exports_keeps_the_old_name(tmp_path: Path) -> None:
    first, second = tmp_path / "march.json", tmp_path / "april.json"
    first.write_text(json.dumps(_dce("1", "700000000000000001", _chat(ALICE, "alice_g", "Al", 1))))
    second.write_text(json.dumps(_dce("1", "700000000000000001", _chat(ALICE, "alice_g", "Alicia", 1))))
    corpus = _corpus(tmp_path, first, second)
    names = account_names(corpus)[("discord", ALICE)]
    assert names[0] == "Alicia" and "Al" in names  # the re-export renamed every row to "Alicia"
    identities = Identities(TwinConfig(me=["Al"]), owners(corpus), account_names(corpus))
    assert identities.resolve("discord", ALICE, "Alicia") == ME


def test_targets_accept_any_alias_of_a_person(tokenizer_dir: Callable[[str], Path], tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, EXAMPLES)
    model = tokenizer_dir("chatml")
    # "Alex Rivera" is an alias of me: before, "build.targets: 'Alex Rivera' never speak in the corpus".
    out = tmp_path / "mine"
    build(_config(model, ["Alex Rivera", "Alex"], targets=["Alex Rivera"]), corpus, out)
    assert {t.speaker for s in _samples(out) if s.kind == "chat" for t in s.turns if t.trained} == {
        "Alex Rivera"
    }
    cfg = _config(model, ["Alex Rivera"], targets=["sammy"], documents={"enabled": False})
    cfg = cfg.model_copy(update={"people": {"Sam": ["sammy"]}})
    out = tmp_path / "sam"
    build(cfg, corpus, out)
    assert {t.speaker for s in _samples(out) if s.kind == "chat" for t in s.turns if t.trained} == {"Sam"}


def test_people_shows_what_each_alias_matched_and_warns_when_it_catches_several_accounts(
    exports: Path, tmp_path: Path
) -> None:
    (exports / "c.json").write_text(
        json.dumps(_dce("3", "700000000000000003", _chat(CARL, "carl", "Al", 9), day=9))
    )
    ws = tmp_path / "twin"
    init_workspace(ws, TwinConfig(name="t", me=["al"], people={"Bobby": ["bob"]}))
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "-w", str(ws), str(exports), "--timezone", "UTC"]).exit_code == 0
    result = runner.invoke(app, ["people", "-w", str(ws), "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["person"] for r in rows if r["author_id"] == ALICE] == [ME]
    assert {tuple(sorted(r["names"])) for r in rows if r["author_id"] == ALICE} == {
        ("Al", "Alice the Great", "alice_g")
    }
    assert {r["matched_by"] for r in rows if r["person"] == ME} == {"al"}
    assert "alias 'al' matches 2 discord accounts" in result.stderr
    text = runner.invoke(app, ["people", "-w", str(ws)])
    assert "What each alias in twin.yaml matched" in text.stdout and "Bobby" in text.stdout


def test_build_says_whose_words_are_trained(tokenizer_dir: Callable[[str], Path], tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, EXAMPLES)
    model = tokenizer_dir("chatml")
    result = build(_config(model, ["Alex Rivera", "Alex"]), corpus, tmp_path / "right")
    info = json.loads((tmp_path / "right" / "build.json").read_text())
    by_speaker, by_source = info["trained_by_speaker"], info["trained_by_source"]
    total = sum(result.trained_tokens.values())
    # Every trained token is someone's: per speaker and per source they add up to the dataset's.
    assert sum(row["tokens"] for row in by_speaker.values()) == total
    assert sum(row["tokens"] for row in by_source.values()) == total
    assert sum(row["turns"] for row in by_speaker.values()) == info["trained_turns"]
    # Alex's tokens are the labelled tokens of the chat rows (ChatGPT's are the assistant rows').
    kinds = {s.id: s.kind for s in _samples(tmp_path / "right")}
    rows = [
        r
        for part in ("train", "eval")
        for r in pq.read_table(tmp_path / "right" / f"{part}.parquet").to_pylist()
    ]
    chat_labels = sum(
        1 for r in rows if kinds[r["sample_id"]] == "chat" for label in r["labels"] if label != -100
    )
    assert by_speaker["Alex Rivera"]["tokens"] == chat_labels > 0
    assert set(by_speaker) == {"Alex Rivera", "ChatGPT"} and by_source["discord"]["tokens"] > 0
    assert not any("`me` matched no account" in w for w in info["warnings"])

    # A wrong `me`: what is left is ChatGPT's replies and documents. Before: no warning at all.
    wrong = build(_config(model, ["Alexandra"]), corpus, tmp_path / "wrong")
    assert "Alexandra" not in wrong.report["trained_by_speaker"]
    assert any("`me` matched no account in the chats" in w for w in wrong.report["warnings"])
    assert any(
        "of the trained tokens are the target speakers' chat turns" in w for w in wrong.report["warnings"]
    )


def test_an_empty_corpus_is_called_empty(tokenizer_dir: Callable[[str], Path], tmp_path: Path) -> None:
    corpus = Corpus(tmp_path / "corpus.db")
    # Before: "build.targets: 'Alex' never speak in the corpus".
    with pytest.raises(TwinError, match="the corpus is empty: run `twinlm ingest"):
        build(_config(tokenizer_dir("chatml"), ["Alex"], targets=["Alex"]), corpus, tmp_path / "d")
    corpus = _corpus(tmp_path / "other", EXAMPLES)
    with pytest.raises(TwinError, match=r"build\.sources \(slack\) names no source in the corpus"):
        build(_config(tokenizer_dir("chatml"), ["Alex"], sources=["slack"]), corpus, tmp_path / "d")


@pytest.mark.parametrize("except_me", [True, False])
def test_redact_except_me(except_me: bool, tokenizer_dir: Callable[[str], Path], tmp_path: Path) -> None:
    """Issue 17, bug 4: `redact.except_me: false` redacts my own email too; true keeps it."""
    corpus = _corpus(tmp_path, EXAMPLES)
    corpus.db.execute(
        "UPDATE messages SET user_text = 'yes!! 7pm? alex@example.com' WHERE text = 'yes!! 7pm?'"
    )
    out = tmp_path / "data"
    build(
        _config(tokenizer_dir("chatml"), ["Alex Rivera", "Alex"], redact={"except_me": except_me}),
        corpus,
        out,
    )
    mine = [t.text for s in _samples(out) for t in s.turns if t.speaker == "Alex Rivera" and "7pm" in t.text]
    assert mine, "my edited message is in the dataset"
    if except_me:
        assert all("alex@example.com" in text for text in mine)
    else:
        assert all("alex@example.com" not in text and "[EMAIL]" in text for text in mine)


def test_cli_build_prints_whose_words_and_warns_about_a_wrong_me(
    tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    ws = tmp_path / "twin"
    assert runner.invoke(app, ["init", str(ws), "--me", "Alexandra"]).exit_code == 0
    assert runner.invoke(app, ["ingest", "-w", str(ws), str(EXAMPLES), "--timezone", "UTC"]).exit_code == 0
    model = str(tokenizer_dir("chatml"))
    result = runner.invoke(app, ["build", "-w", str(ws), "--model", model])
    assert result.exit_code == 0, result.stderr
    assert "Trained, per speaker" in result.stdout and "Trained, per source" in result.stdout
    assert "ChatGPT" in result.stdout
    assert "`me` matched no account in the chats" in result.stderr
    # --targets takes any name of a person: Alex's discord nickname, though `me` is wrong.
    result = runner.invoke(app, ["build", "-w", str(ws), "--model", model, "--targets", "alex", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["trained_by_speaker"]["Alex"]["turns"] > 0 and "trained_by_source" in report


def _account_names_sorted_in_sqlite(corpus: Corpus) -> dict[tuple[str, str], tuple[str, ...]]:
    """account_names as it was: one GROUP BY over every message, sorted by SQLite."""
    names: dict[tuple[str, str], list[str]] = {}
    for source, author_id, name in corpus.db.execute(
        """SELECT source, author_id, author_name FROM messages
           GROUP BY source, author_id, author_name
           ORDER BY source, author_id, max(ts) IS NULL, max(ts) DESC, max(id) DESC"""
    ):
        names.setdefault((source, author_id), []).append(name)
    for source, author_id, name in corpus.db.execute(
        "SELECT source, author_id, name FROM author_names ORDER BY source, author_id, name"
    ):
        if name not in names.setdefault((source, author_id), []):
            names[(source, author_id)].append(name)
    return {account: tuple(found) for account, found in names.items()}


@pytest.mark.parametrize("accounts_a_query", [400, 1])
def test_account_names_list_the_latest_name_first_as_the_sorted_query_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accounts_a_query: int
) -> None:
    """Renamed accounts (names without a time, equal times told apart by the later row, a source with the
    same author id) give the same names in the same order as the one sorted query over every message."""
    import random
    from datetime import UTC, datetime

    from twinlm.corpus import queries
    from twinlm.model import Conversation, Message

    monkeypatch.setattr(queries, "_ACCOUNTS_A_QUERY", accounts_a_query)
    rng = random.Random(2)
    with Corpus(tmp_path / "corpus.db") as corpus:
        for k in range(6):
            messages = []
            for m in range(30):
                author = rng.choice(["a", "b", "c"])
                minute = rng.choice([None, 1, 2, 3, rng.randint(0, 59)])
                when = None if minute is None else datetime(2024, 1, 1 + k % 3, 12, minute, tzinfo=UTC)
                name = (
                    rng.choice([f"{author}-old", f"{author}-new", author.upper()]) if author != "c" else "c"
                )
                messages.append(
                    Message(id=f"{k}-{m}", author_id=author, author_name=name, timestamp=when, text="x")
                )
            source = "telegram" if k % 2 else "discord"
            with corpus.importing([f"export{k}"]) as import_id, corpus.file_savepoint():
                corpus.add(Conversation(source, f"chat{k}", "Chat", "chat", tuple(messages)), import_id)
        corpus.db.execute("INSERT INTO author_names VALUES ('discord', 'a', 'a_username')")
        expected = _account_names_sorted_in_sqlite(corpus)
        assert account_names(corpus) == expected
        assert list(account_names(corpus)) == list(expected)  # accounts in the same order too
        assert sum(len(found) > 1 for found in expected.values()) >= 4  # renamed accounts were checked
