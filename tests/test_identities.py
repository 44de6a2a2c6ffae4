from __future__ import annotations

from pathlib import Path

from twinlm.config import TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.corpus.queries import owners, speakers
from twinlm.identities import ME, Identities, resolver
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


def test_an_account_is_resolved_from_every_name_it_used() -> None:
    """Issue 9.3: one answer per account, whichever of its names a message shows."""
    names = {
        ("discord", "9"): ("Alice the Great", "Al", "alice_g"),  # latest display name first
        ("discord", "8"): ("Al",),
        ("whatsapp", "AL"): ("AL",),
        ("telegram", "user3"): ("Priya",),
    }
    ids = Identities(TwinConfig(me=["al"], people={"Priya": ["priya k"]}), frozenset(), names)
    # Any message of account 9 resolves to me, even one showing the name no alias names.
    assert {ids.resolve("discord", "9", shown) for shown in ("Alice the Great", "Al", "x")} == {ME}
    assert ids.match("discord", "9", "Alice the Great") == (ME, "al")
    # Unmapped accounts are named by their latest display name, whatever a message showed.
    unmapped = Identities(TwinConfig(), frozenset(), names)
    assert unmapped.speaker("discord", "9", "Al") == "Alice the Great"
    assert unmapped.resolve("discord", "9", "Al") is None
    # A bare alias matches display names on every platform, case-insensitively.
    assert ids.alias_matches()["al"] == [("discord", "9"), ("discord", "8"), ("whatsapp", "AL")]
    assert ids.alias_matches()["priya k"] == []
    # Targets: any alias of a person means that person; any name an account used, its speaker.
    assert ids.targets("AL") == {ME} and ids.targets("priya k") == {"Priya"}
    assert unmapped.targets("alice_g") == {"Alice the Great"} and unmapped.targets("Nobody") == {"Nobody"}


def test_an_account_matching_two_people_is_reported_and_the_first_match_wins() -> None:
    names = {("discord", "9"): ("Al", "alice_g")}
    ids = Identities(TwinConfig(me=["al"], people={"Alice": ["alice_g"]}), frozenset(), names)
    assert ids.resolve("discord", "9", "alice_g") == ME  # the latest display name comes first
    assert ids.persons("discord", "9") == [(ME, "al"), ("Alice", "alice_g")]
    # An account key beats every name.
    ids = Identities(TwinConfig(me=["al"], people={"Alice": ["discord:9"]}), frozenset(), names)
    assert ids.resolve("discord", "9", "Al") == "Alice"
