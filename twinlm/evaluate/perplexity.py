"""Perplexity on the held-out target turns: the eval split's labelled tokens only.

The same loss as training (`twinlm.train.loss.token_loss_sum`: summed over trained tokens, in fp32),
over right-padded batches of the eval rows (`twinlm.train.data.collate_padded`, padding labelled -100),
so the mean loss here is the eval loss training reports, and perplexity is its exponential.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twinlm.train.data import Example, collate_padded, group_by_length
from twinlm.train.loss import token_loss_sum


@dataclass(frozen=True, slots=True)
class Perplexity:
    loss: float  # mean cross-entropy per trained token (nats)
    perplexity: float
    tokens: int  # trained tokens scored

    def to_json(self) -> dict[str, Any]:
        return {
            "eval_loss": round(self.loss, 6),
            "perplexity": round(self.perplexity, 4),
            "tokens": self.tokens,
        }


def perplexity(
    model: Any,
    examples: Sequence[Example],
    pad_id: int,
    *,
    batch_tokens: int = 4096,
    progress: Callable[[], None] | None = None,
) -> Perplexity | None:
    """The model's loss and perplexity over the labelled tokens of `examples` (None: none labelled).

    `progress()` is called once per row, after the row's batch."""
    import torch

    device = next(model.parameters()).device
    loss_sum, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for rows in group_by_length(examples, batch_tokens, seed=0, epoch=0):
                batch = collate_padded([examples[i] for i in rows], pad_id)
                labels = batch.pop("labels")
                logits = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).logits
                part, n = token_loss_sum(logits, labels)
                loss_sum, count = loss_sum + float(part), count + n
                for _ in rows if progress is not None else ():
                    progress()  # type: ignore[misc]
    finally:
        model.train(was_training)
    if count == 0:
        return None
    mean = loss_sum / count
    return Perplexity(mean, math.exp(min(mean, 700.0)), count)
