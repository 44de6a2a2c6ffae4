"""Perplexity with known answers: it equals the model's own mean loss over the labelled tokens, and a
model that memorised the eval rows scores a far lower perplexity than the untrained one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from twinlm.evaluate.perplexity import perplexity
from twinlm.models.tiny import ensure_tiny
from twinlm.train.data import IGNORE_INDEX, make_example
from twinlm.train.loss import token_loss_sum


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny(tmp_path_factory.mktemp("tiny") / "model")


def _model(folder: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def _rows(count: int, length: int, seed: int) -> list:  # type: ignore[type-arg]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for k in range(count):
        n = length + 3 * k
        ids = torch.randint(10, 700, (n,), generator=g).tolist()
        labels = [IGNORE_INDEX] * (n // 2) + ids[n // 2 :]  # the context is not scored, the reply is
        rows.append(make_example(f"s{k}", ids, labels))
    return rows


def test_equals_the_models_own_loss_over_labelled_tokens(tiny_dir: Path) -> None:
    model = _model(tiny_dir)
    rows = _rows(3, 20, seed=1)
    result = perplexity(model, rows, pad_id=0, batch_tokens=40)  # several padded batches
    assert result is not None
    losses, counts = [], []
    for row in rows:
        ids = torch.tensor(row.input_ids, dtype=torch.long)[None]
        labels = torch.tensor(row.labels, dtype=torch.long)[None]
        with torch.no_grad():
            own = model(input_ids=ids, labels=labels).loss  # transformers' mean over shifted labels
        losses.append(float(own))
        counts.append(row.trained_tokens)
    expected = sum(loss * n for loss, n in zip(losses, counts, strict=True)) / sum(counts)
    assert result.tokens == sum(counts)
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5)


def test_a_model_that_memorised_the_eval_rows_has_lower_perplexity(tiny_dir: Path) -> None:
    rows = _rows(4, 24, seed=2)
    untrained = perplexity(_model(tiny_dir), rows, pad_id=0)
    model = _model(tiny_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):  # overfit the four rows
        for row in rows:
            ids = torch.tensor(row.input_ids, dtype=torch.long)[None]
            labels = torch.tensor(row.labels, dtype=torch.long)[None]
            loss_sum, n = token_loss_sum(model(input_ids=ids).logits, labels)
            (loss_sum / n).backward()
        optimizer.step()
        optimizer.zero_grad()
    memorised = perplexity(model, rows, pad_id=0)
    assert untrained is not None and memorised is not None
    assert untrained.perplexity > 300  # ~ the vocabulary size (767): random guessing
    assert memorised.perplexity < 2.0 < untrained.perplexity / 100
    assert model.training  # left as it was found


def test_rows_without_labelled_tokens_give_none(tiny_dir: Path) -> None:
    row = make_example("x", [5, 6, 7], [IGNORE_INDEX] * 3)
    assert perplexity(_model(tiny_dir), [row], pad_id=0) is None
