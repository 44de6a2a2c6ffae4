"""A session no target speaker talks in is set aside before the session rules and redaction (issue 18).

Such a session trains nobody whatever the rules drop, so neither runs on it: build.json counts it under
"sessions where no target speaker talks after the first turn", and the rules' and redaction's counts are
those of the sessions that can reach the dataset. `twinlm show`'s view does the same, so what it says each
rule did is what the build counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.curate.view import Viewer
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.prepare.build import build
from twinlm.prepare.clean import Msg
from twinlm.prepare.persona import persona_for

PHONE = "+44 20 7946 0958"
LONG = "the route on the left wall is much harder than it looks from below"
CHAT = [
    # Day 1: only Sam and Jo. A phone number, a repeated long message and a repeat: rules would act.
    "02/03/2021, 09:00 - Sam: hi",
    "02/03/2021, 09:01 - Sam: hi",
    f"02/03/2021, 09:02 - Jo: call me on {PHONE}",
    f"02/03/2021, 09:03 - Sam: {LONG}",
    f"02/03/2021, 09:04 - Jo: {LONG}",
    # Day 2: Alex answers; the same number, redacted here.
    f"03/03/2021, 18:00 - Sam: call me on {PHONE} tonight",
    "03/03/2021, 18:01 - Alex Rivera: sure, I will call you after dinner then",
    "03/03/2021, 18:02 - Sam: great, speak soon about the weekend plans",
    # Day 3: Alex talks, but the session is short and its messages too: low quality.
    "04/03/2021, 12:00 - Jo: hey",
    "04/03/2021, 12:01 - Alex Rivera: yo",
    # Day 4: two session rules drop messages (a repeat, then all from a farewell on): each dropped message
    # names both reasons, which the view counts once, as the build does.
    "05/03/2021, 18:00 - Sam: are you coming climbing on saturday morning",
    "05/03/2021, 18:01 - Sam: are you coming climbing on saturday morning",
    "05/03/2021, 18:02 - Alex Rivera: yes, I will bring the long rope and the quickdraws",
    "05/03/2021, 18:03 - Sam: perfect, I will pick you up at nine then",
    "05/03/2021, 18:04 - Alex Rivera: ok gtg, see you tomorrow",
    "05/03/2021, 18:05 - Sam: have a good evening, and thanks for the rope",
]


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    export = tmp_path / "exports" / "WhatsApp Chat with Crew.txt"
    export.parent.mkdir()
    export.write_text("\n".join(CHAT) + "\n", encoding="utf-8")
    db = Corpus(tmp_path / "corpus.db")
    assert not ingest([export.parent], db, ParseOptions(timezone="UTC")).failed
    return db


def _config(tokenizer_dir: Callable[[str], Path]) -> TwinConfig:
    return TwinConfig(name="alex", me=["Alex Rivera"], build=BuildConfig(model=str(tokenizer_dir("chatml"))))


def test_a_session_nobody_trains_is_neither_redacted_nor_cleaned_and_counted_as_such(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    build(_config(tokenizer_dir), corpus, tmp_path / "data")
    report = json.loads((tmp_path / "data" / "build.json").read_text())
    counts = report["counts"]
    assert counts["sessions where no target speaker talks after the first turn"] == 1  # day 1
    assert counts["session dropped: low quality"] == 1  # day 3 only: day 1 was set aside before the rules
    assert counts["message dropped: duplicate"] == 1  # day 4's: day 1's repeats were never looked at
    assert counts["message dropped: at or after a conversation ender"] == 2
    assert counts["redacted phone"] == 1 and report["redacted"]["phone"] == 1  # day 2's, not day 1's
    samples = [json.loads(line) for line in (tmp_path / "data" / "samples.jsonl").read_text().splitlines()]
    assert [s["id"].rsplit("#", 1)[1] for s in samples] == ["1", "3"]  # numbered before the rules
    (sam, alex, _) = samples[0]["turns"]
    assert sam["text"] == "call me on [PHONE] tonight" and alex["trained"]


def test_the_view_says_what_the_build_counts(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    config = _config(tokenizer_dir)
    build(config, corpus, tmp_path / "data")
    counts = json.loads((tmp_path / "data" / "build.json").read_text())["counts"]
    (row,) = corpus.db.execute("SELECT id FROM conversations").fetchone()
    view = Viewer(config, corpus).conversation(int(row))
    messages = [m for part in view.parts for m in part.messages]
    samples = [s for part in view.parts for s in part.samples]
    assert [s.kept for s in samples] == [False, True, False, True]
    assert samples[0].rules == {}  # set aside: no session rule ran
    assert samples[2].rules == {"session dropped: low quality": 1}
    day1 = messages[:5]
    assert all(m.status == "dropped" and m.trained_text is None and m.rules == {} for m in day1)
    phoned = messages[5]
    assert phoned.trained_text == "call me on [PHONE] tonight" and phoned.rules == {"redacted phone": 1}
    # What the view says each rule did (as `twinlm show` sums it) is the build's count of it.
    shown = view.rule_counts()
    assert shown["message dropped: duplicate"] == 1 and shown["session cut: conversation ender"] == 1
    assert shown == {k: counts[k] for k in shown} and shown


def test_a_persona_trains_someone_in_a_session_only_where_a_target_speaker_wrote() -> None:
    def msg(author: str, role: str = "participant") -> Msg:
        return Msg(author, "text", "text", 0, role)

    me = persona_for("chat", ["Alex"])
    assert me.trains_someone_in([msg("Sam"), msg("Alex")])
    assert not me.trains_someone_in([msg("Sam"), msg("Jo")])
    assert not me.trains_someone_in([])
    assistant = persona_for("assistant", "auto")
    assert assistant.trains_someone_in([msg("user", "user"), msg("assistant", "assistant")])
    assert not assistant.trains_someone_in([msg("Alex", "user")])  # an assistant persona trains the role
