"""The train/eval split through `build`: by session, by trained tokens, recorded in build.json (issue 8.1)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.prepare.build import build

WORDS = "climbing route coffee weekend dinner tomorrow train station garden recipe movie music book".split()


def whatsapp_chat(folder: Path, other: str, sessions: int, seed: int) -> None:
    """A WhatsApp export with `other`: one session a day (pauses far over the session gap)."""
    rng = random.Random(seed)
    day = datetime(2022, 1, 1, 18, 0)
    lines = []
    for _ in range(sessions):
        for minute in range(rng.randint(2, 5)):
            who = other if minute % 2 == 0 else "Alex Rivera"
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
            lines.append(f"{(day + timedelta(minutes=minute)):%d/%m/%Y, %H:%M} - {who}: {text}")
        day += timedelta(days=1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"WhatsApp Chat with {other}.txt").write_text("\n".join(lines) + "\n")


def built(tmp_path: Path, tokenizer: Path, chats: dict[str, int]) -> tuple[dict, list[dict], list[dict]]:
    exports = tmp_path / "exports"
    for seed, (other, sessions) in enumerate(chats.items()):
        whatsapp_chat(exports / other, other, sessions, seed)
    corpus = Corpus(tmp_path / "corpus.db")
    assert not ingest([exports], corpus, ParseOptions(timezone="UTC")).failed
    config = TwinConfig(name="alex", me=["Alex Rivera"], build=BuildConfig(model=str(tokenizer)))
    build(config, corpus, tmp_path / "data")
    info = json.loads((tmp_path / "data" / "build.json").read_text())
    train = pq.read_table(tmp_path / "data" / "train.parquet").to_pylist()
    evals = pq.read_table(tmp_path / "data" / "eval.parquet").to_pylist()
    return info, train, evals


def trained(rows: list[dict]) -> int:
    return sum(sum(1 for x in r["labels"] if x != -100) for r in rows)


def test_a_large_and_a_small_chat_both_give_their_newest_sessions(
    tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    info, train, evals = built(tmp_path, tokenizer_dir("chatml"), {"Sam": 900, "Mom": 100})
    share = trained(evals) / (trained(train) + trained(evals))
    assert 0.04 <= share <= 0.06  # before: a whole chat, ~10% or ~90% (or none) by the seed
    assert info["eval_share_of_trained_tokens"] == round(share, 4)
    conversations = {r["sample_id"].rsplit("#", 1)[0] for r in train}
    assert len(conversations) == 2
    for chat in conversations:
        held = [int(r["sample_id"].rsplit("#", 1)[1]) for r in evals if r["sample_id"].startswith(chat + "#")]
        kept = [int(r["sample_id"].rsplit("#", 1)[1]) for r in train if r["sample_id"].startswith(chat + "#")]
        assert held and min(held) > max(kept), chat  # every chat gives its newest sessions


def test_a_single_chat_export_gets_an_eval_split(
    tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    info, train, evals = built(tmp_path, tokenizer_dir("chatml"), {"Sam": 200})
    assert evals and train  # before: one conversation, all in train
    assert abs(info["eval_share_of_trained_tokens"] - 0.05) <= 0.01
