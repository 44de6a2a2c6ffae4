"""The persona's system prompt: one function for build and chat, right with several trained speakers.

Expected prompts are written out by hand, dates included: the Discord example export's first
message is "2024-06-07T18:00:00.000+00:00", so its prompt says 2024-06-07 (a timestamp read in
the wrong unit lands in 1970 or far in the future).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.prepare.build import build
from twinlm.prepare.persona import TargetChoice, persona_for, persona_prompt
from twinlm.prepare.sample import Sample

from testdata import EXAMPLES

# 2024-06-07T12:00:00Z and 2024-06-07T23:59:59.999Z in milliseconds since 1970-01-01 UTC:
# 19881 days (1970-01-01 + 19881 days = 2024-06-07) * 86_400_000 ms, plus the time of day.
NOON_MS = 19881 * 86_400_000 + 12 * 3_600_000
LAST_MS_OF_DAY = 19882 * 86_400_000 - 1
DISCORD_WHEN = "Discord. Today is 2024-06-07."
PEOPLE = ["Alex Rivera", "Sam", "Priya"]


def prompt(style: str, speaker: str | None, **build: object) -> str:
    settings = BuildConfig(**build)  # type: ignore[arg-type]
    return persona_prompt(
        settings, style, speaker=speaker, participants=PEOPLE, platform="discord", timestamp_ms=NOON_MS
    )


def test_one_trained_speaker_is_you_whatever_the_template() -> None:
    for style in ("named", "alternating", "plain"):
        assert (
            prompt(style, "Alex Rivera")
            == f"You are Alex Rivera, chatting with Priya and Sam on {DISCORD_WHEN}"
        )
    assert (
        prompt("named", "Sam", targets=["Sam"])
        == f"You are Sam, chatting with Alex Rivera and Priya on {DISCORD_WHEN}"
    )


def test_several_trained_speakers_named_roles_get_a_group_prompt_that_names_nobody_as_you() -> None:
    group = f"A chat between Alex Rivera, Priya and Sam on {DISCORD_WHEN}"
    for targets in (["me", "Sam"], "everyone"):
        assert prompt("named", "Alex Rivera", targets=targets) == group
        assert prompt("plain", None, targets=targets) == group
    # The group template is configurable, with its own fields.
    custom = prompt("named", "Sam", targets="everyone", group_prompt="{names} | {platform} | {date}")
    assert custom == "Alex Rivera, Priya and Sam | Discord | 2024-06-07"


def test_several_trained_speakers_alternating_each_rendering_gets_its_speakers_own_prompt() -> None:
    assert prompt("alternating", "Sam", targets=["me", "Sam"]) == (
        f"You are Sam, chatting with Alex Rivera and Priya on {DISCORD_WHEN}"
    )
    assert prompt("alternating", "Alex Rivera", targets=["me", "Sam"]) == (
        f"You are Alex Rivera, chatting with Priya and Sam on {DISCORD_WHEN}"
    )
    # No single speaker (a rendering that writes several, e.g. an export format): the group prompt.
    assert prompt("alternating", None, targets=["me", "Sam"]).startswith("A chat between Alex Rivera, Priya")


def test_the_date_is_the_utc_day_of_a_millisecond_timestamp() -> None:
    settings = BuildConfig(system_prompt="{date}")

    def date(ms: int | None) -> str:
        return persona_prompt(settings, "named", speaker="A", participants=[], platform="x", timestamp_ms=ms)

    assert date(NOON_MS) == "2024-06-07"
    assert date(LAST_MS_OF_DAY) == "2024-06-07"
    assert date(LAST_MS_OF_DAY + 1) == "2024-06-08"
    assert date(0) == "1970-01-01"
    assert date(None) == "unknown"
    # Before 1970 the day is the one before, up to and including its last millisecond (floor, not
    # truncation toward zero); the days are cached, so each is asked twice.
    for _ in range(2):
        assert date(-1) == "1969-12-31"
        assert date(-86_400_000) == "1969-12-31"
        assert date(-86_400_001) == "1969-12-30"
        assert date(NOON_MS) == "2024-06-07"


@pytest.mark.parametrize(
    "targets", ["auto", "me", "assistant", "everyone", [], ["Sam"], ["Sam", "Sam"], ["me", "Sam"]]
)
def test_the_group_prompt_is_chosen_as_the_chat_persona_says(targets: TargetChoice) -> None:
    # A chat persona with several trained speakers gets the group prompt on a template with named roles.
    settings = BuildConfig(targets=targets)
    group = persona_for("chat", targets).several
    made = persona_prompt(
        settings, "named", speaker="Sam", participants=["Sam", "Priya"], platform="x", timestamp_ms=0
    )
    assert made.startswith("A chat between") == group, made


def test_the_settings_do_not_import_the_persona_code() -> None:
    # config.py is a lower layer than prepare/persona.py (which imports it); a fresh interpreter shows
    # which modules loading the settings pulls in.
    code = "import sys, twinlm.config; print('twinlm.prepare.persona' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_rejects_unknown_fields_in_the_group_prompt() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown field"):
        BuildConfig(group_prompt="A chat with {others}")  # {others} is the one-speaker prompt's field
    with pytest.raises(ValidationError, match="unknown field"):
        BuildConfig(system_prompt="You are {names}")


# --- through the build ---------------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    db = Corpus(tmp_path / "corpus.db")
    assert not ingest([EXAMPLES], db, ParseOptions(timezone="UTC")).failed
    return db


def built(model: Path, corpus: Corpus, out: Path, **settings: object) -> tuple[list[Sample], list[str]]:
    """The built samples, and every rendered row's text (both splits)."""
    config = TwinConfig(
        name="alex",
        me=["Alex Rivera", "Alex"],
        build=BuildConfig(model=str(model), sources=["discord"], **settings),  # type: ignore[arg-type]
    )
    build(config, corpus, out)
    samples = [Sample.from_json(line) for line in (out / "samples.jsonl").read_bytes().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    rows = pq.read_table(out / "train.parquet").to_pylist() + pq.read_table(out / "eval.parquet").to_pylist()
    return samples, [tokenizer.decode(r["input_ids"]) for r in rows]


def test_build_prompt_is_dated_from_the_exports_timestamps(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    samples, _ = built(tokenizer_dir("chatml"), corpus, tmp_path / "d")
    first = samples[0]
    assert first.id.endswith("#0")
    assert first.system == f"You are Alex Rivera, chatting with Priya and Sam on {DISCORD_WHEN}"


def test_build_with_two_targets_on_a_named_template_writes_the_group_prompt(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    samples, texts = built(tokenizer_dir("chatml"), corpus, tmp_path / "d", targets=["me", "Sam"])
    group = f"A chat between Alex Rivera, Priya and Sam on {DISCORD_WHEN}"
    assert samples[0].system == group
    assert any({t.speaker for t in s.turns if t.trained} == {"Alex Rivera", "Sam"} for s in samples)
    assert any(f"<|im_start|>system\n{group}<|im_end|>" in text for text in texts)
    assert not any("You are" in text for text in texts)


def test_build_with_two_targets_on_an_alternating_template_gives_each_rendering_its_own_prompt(
    corpus: Corpus, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    samples, texts = built(tokenizer_dir("mistral-v0.3"), corpus, tmp_path / "d", targets=["me", "Sam"])
    both = next(s for s in samples if {t.speaker for t in s.turns if t.trained} == {"Alex Rivera", "Sam"})
    assert both.id == samples[0].id  # the first session: its prompts carry the export's first date
    alex = f"[INST] You are Alex Rivera, chatting with Priya and Sam on {DISCORD_WHEN}\n\n"
    sam = f"[INST] You are Sam, chatting with Alex Rivera and Priya on {DISCORD_WHEN}\n\n"
    assert any(alex in text for text in texts) and any(sam in text for text in texts)
    assert not any(" and Sam, chatting" in text or "A chat between" in text for text in texts)
