from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.identities import ME, resolver
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.prepare.persona import persona_for, persona_prompt
from twinlm.prepare.select import chats
from twinlm.prepare.sessions import merge_turns, split_by_gap

from testdata import DOCUMENTS, EXAMPLES


@dataclass(frozen=True)
class L:
    speaker: str
    text: str
    timestamp_ms: int | None


MIN = 60_000


def test_sessions_split_at_pauses_longer_than_the_gap() -> None:
    lines = [
        L("a", "1", 0),
        L("b", "2", 5 * MIN),
        L("a", "3", 15 * MIN),
        L("a", "4", 26 * MIN),
        L("b", "5", None),
    ]
    assert [[x.text for x in s] for s in split_by_gap(lines, 10)] == [["1", "2", "3"], ["4", "5"]]
    assert [[x.text for x in s] for s in split_by_gap(lines, 11)] == [["1", "2", "3", "4", "5"]]
    assert split_by_gap([], 10) == []


def test_consecutive_messages_of_one_author_become_one_turn() -> None:
    lines = [L("a", "hi", 0), L("a", "you there?", 1), L("b", "yes", 2), L("a", "ok", 3)]
    assert merge_turns((x.speaker, x.text) for x in lines) == [
        ("a", "hi\nyou there?"),
        ("b", "yes"),
        ("a", "ok"),
    ]


def test_personas() -> None:
    auto_chat = persona_for("chat", "auto")
    assert auto_chat.trains(ME, "participant") and not auto_chat.trains("Sam", "participant")
    auto_gpt = persona_for("assistant", "auto")
    assert auto_gpt.trains("ChatGPT", "assistant") and not auto_gpt.trains(ME, "user")
    assert persona_for("chat", "everyone").trains("Sam", "participant")
    named = persona_for("chat", ["Sam", "Priya"])
    assert named.trains("Priya", "participant") and not named.trains(ME, "participant")
    june_7 = 1_717_761_600_000  # 2024-06-07T12:00:00Z in ms
    prompt = persona_prompt(
        BuildConfig(),
        "named",
        speaker="Alex",
        participants=["Sam", "Priya", "Alex", "Jo"],
        platform="discord",
        timestamp_ms=june_7,
    )
    assert prompt == "You are Alex, chatting with Jo, Priya and Sam on Discord. Today is 2024-06-07."
    alone = persona_prompt(
        BuildConfig(system_prompt="{name} / {others} / {platform}"),
        "alternating",
        speaker="Alex",
        participants=[],
        platform="whatsapp",
        timestamp_ms=None,
    )
    assert alone == "Alex / someone / WhatsApp"
    assert not auto_chat.several and not auto_gpt.several and not persona_for("chat", ["Sam"]).several
    assert named.several and persona_for("chat", "everyone").several


def test_chats_apply_exclusions_edits_and_identities(tmp_path: Path) -> None:
    with Corpus(tmp_path / "corpus.db") as corpus:
        ingest([EXAMPLES], corpus, ParseOptions(timezone="UTC"), documents=[DOCUMENTS])
        corpus.db.execute("UPDATE conversations SET excluded = 1 WHERE source = 'messenger'")
        corpus.db.execute("UPDATE messages SET excluded = 1 WHERE text = 'see ya'")
        corpus.db.execute("UPDATE messages SET user_text = 'yes!! 7 pm?' WHERE text = 'yes!! 7pm?'")
        corpus.db.execute(  # no longer in a newer export (twinlm/corpus/supersede.py)
            "UPDATE messages SET superseded_by_import = first_import WHERE id IN "
            "(SELECT id FROM messages WHERE source = 'telegram' ORDER BY id LIMIT 2)"
        )
        counts: Counter[str] = Counter()
        resolve = resolver(TwinConfig(me=["Alex Rivera", "Alex"], people={"Sammy": ["Sam"]}))
        found = list(chats(corpus, resolve, counts))
    assert [c.key.split(":")[0] for c in found] == [
        "chatgpt",
        "chatgpt",
        "discord",
        "documents",
        "telegram",
        "whatsapp",
    ]
    discord = next(c for c in found if c.source == "discord")
    texts = [line.text for line in discord.lines]
    assert "yes!! 7 pm?" in texts and "yes!! 7pm?" not in texts and "see ya" not in texts
    assert {line.speaker for line in discord.lines} == {ME, "Sammy", "Priya"}
    assert [line.timestamp_ms for line in discord.lines] == sorted(
        line.timestamp_ms for line in discord.lines
    )
    assert counts == {
        "conversations excluded by you": 1,
        "messages excluded by you": 1,
        "messages edited by you": 1,
        "messages superseded by a newer export": 2,
    }
    gpt = [c for c in found if c.source == "chatgpt"]
    assert gpt[0].system_prompt and "Be brief" in gpt[0].system_prompt


def test_whether_a_session_trains_anyone_is_decided_as_its_merged_turns_decide_it() -> None:
    """The build skips a session that trains nobody before merging its turns; the shortcut must agree
    with the merged turns on every persona, whoever speaks when and with whatever roles."""
    import random

    from twinlm.prepare.build import _trains_anyone
    from twinlm.prepare.clean import Msg

    rng = random.Random(3)
    personas = [persona_for(kind, t) for kind in ("chat", "assistant") for t in ("auto", "everyone", ["b"])]
    outcomes = Counter()
    for _ in range(5_000):
        roles = ["user", "assistant", "participant"]
        kept = [
            Msg(rng.choice([ME, "a", "b"]), "text", "text", None, rng.choice(roles))
            for _ in range(rng.randint(1, 6))
        ]
        for persona in personas:
            last_role = {m.author: m.role for m in kept}
            merged = merge_turns([(m.author, m.text) for m in kept])
            expected = any(i > 0 and persona.trains(s, last_role[s]) for i, (s, _) in enumerate(merged))
            assert _trains_anyone(kept, last_role, persona) == expected, (kept, persona)
            outcomes[expected] += 1
    assert outcomes[True] and outcomes[False]
