from __future__ import annotations

from pathlib import Path

from twinlm.config import TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.corpus.queries import owners, speakers
from twinlm.identities import ME, resolver
from twinlm.ingest import ingest
from twinlm.model import ParseOptions

from testdata import FIXTURES


def test_aliases_match_names_ids_and_single_accounts() -> None:
    config = TwinConfig(me=["Alex Rivera", "discord:42"], people={"Sam": ["sammy", "user7"]})
    resolve = resolver(config)
    assert resolve("whatsapp", "Alex Rivera", "Alex Rivera") == ME
    assert resolve("telegram", "user9", "alex rivera") == ME  # display names match case-insensitively
    assert resolve("discord", "42", "whoever") == ME
    assert resolve("telegram", "42", "whoever") is None  # "discord:42" names one account only
    assert resolve("discord", "1", "Sammy") == "Sam"
    assert resolve("telegram", "user7", "S.") == "Sam"
    assert resolve("discord", "1", "Sam") == "Sam"  # the canonical name is an alias too
    assert resolve("discord", "2", "Priya") is None


def test_export_owners_are_me_unless_an_alias_says_otherwise() -> None:
    resolve = resolver(
        TwinConfig(people={"Work me": ["telegram:user5"]}),
        frozenset({("telegram", "user1"), ("telegram", "user5")}),
    )
    assert resolve("telegram", "user1", "Anyone") == ME
    assert resolve("telegram", "user5", "Anyone") == "Work me"
    assert resolve("chatgpt", "user", "You") == ME
    assert resolve("chatgpt", "assistant", "ChatGPT") is None


def test_telegram_exporter_is_me_without_configuration(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        export = FIXTURES / "telegram" / "full_export.json"
        assert not ingest([export], corpus, ParseOptions(timezone="UTC")).failed
        found = owners(corpus)
        assert found == {("telegram", "user777000001")}
        rows = speakers(corpus, resolver(TwinConfig(), found))
    assert {(r.author_id, r.person) for r in rows if r.person == ME} == {("user777000001", ME)}
    assert all(r.person is None for r in rows if r.author_id != "user777000001")
