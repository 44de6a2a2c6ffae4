"""`twinlm build --preview N`: built samples as the model sees them, trained tokens highlighted."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from rich.text import Text
from transformers import AutoTokenizer

from twinlm.prepare.sample import IGNORE_INDEX


def preview(folder: Path, count: int, split: str = "train") -> list[tuple[str, Text]]:
    """(sample id, text) for the first `count` samples: trained spans bold green, the rest dim."""
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    rows = pq.read_table(folder / f"{split}.parquet").slice(0, count).to_pylist()
    shown = []
    for row in rows:
        text = Text()
        # Decode runs of equally-labelled tokens together: decoding token by token splits characters
        # that span several byte-level tokens (emoji, accents).
        run: list[int] = []
        trained = False
        for token, label in zip(row["input_ids"], row["labels"], strict=True):
            is_trained = label != IGNORE_INDEX
            if run and is_trained != trained:
                text.append(tokenizer.decode(run), style="bold green" if trained else "dim")
                run = []
            run.append(token)
            trained = is_trained
        if run:
            text.append(tokenizer.decode(run), style="bold green" if trained else "dim")
        shown.append((row["sample_id"], text))
    return shown
