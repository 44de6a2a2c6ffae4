"""`twinlm build --preview N`: built samples as the model sees them, trained tokens highlighted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from rich.text import Text
from transformers import AutoTokenizer

from twinlm.prepare.sample import IGNORE_INDEX

# Trained text between these as well as in colour: visible without colour (piped, a log, a colour-blind
# reader) and where a copy of the text goes.
TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"
LEGEND = (
    f"Trained text is green and between {TRAINED_OPEN} {TRAINED_CLOSE}; the rest is context the model reads."
)


def preview(folder: Path, count: int, split: str = "train") -> list[tuple[str, Text]]:
    """(id, text) for the first `count` samples: trained spans bold green between the markers, the rest
    dim. A session split into several rows (longer than build.max_length) shows each piece under its own
    id: the sample's id with #piece-K/N."""
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    table = pq.read_table(folder / f"{split}.parquet")
    ids = table.column("sample_id").to_pylist()
    rows = table.slice(0, count).to_pylist()
    pieces = Counter(ids)
    seen: Counter[str] = Counter()
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
                _append(text, tokenizer.decode(run), trained)
                run = []
            run.append(token)
            trained = is_trained
        if run:
            _append(text, tokenizer.decode(run), trained)
        sample_id = row["sample_id"]
        seen[sample_id] += 1
        if pieces[sample_id] > 1:
            sample_id = f"{sample_id}#piece-{seen[sample_id]}/{pieces[sample_id]}"
        shown.append((sample_id, text))
    return shown


def _append(text: Text, piece: str, trained: bool) -> None:
    if trained:
        text.append(f"{TRAINED_OPEN}{piece}{TRAINED_CLOSE}", style="bold green")
    else:
        text.append(piece, style="dim")
