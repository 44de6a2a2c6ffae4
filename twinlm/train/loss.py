"""The training loss: a sum over trained tokens, divided by the trained tokens of the whole window.

A model's built-in loss is a mean per forward pass. With gradient accumulation that weights each
micro-batch equally, so a token in a micro-batch with 3 trained tokens counts ~7x more than one in
a micro-batch with 20. The correct objective is the mean over every trained token of the
accumulation window, the same as one big batch would give:

    window = [next(batches) for _ in range(accumulation_steps)]
    n_window = window_token_count(window)          # before any forward pass
    if n_window == 0: skip the window (nothing to train)
    for batch in window:
        labels = batch.pop("labels")               # the model must not compute its own mean
        logits = model(**batch).logits
        loss_sum, _ = token_loss_sum(logits, labels)
        (loss_sum / n_window).backward()           # gradients add up to d(window mean)
    optimizer.step(); optimizer.zero_grad()

Under DDP/FSDP the count must be the all-reduced sum over ranks and each rank's loss multiplied by
the world size (the wrapper averages gradients across ranks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F

from twinlm.train.data import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropies over trained tokens, number of trained tokens).

    Token t's logits are scored against label t+1 (the same shift as transformers' causal LM loss);
    IGNORE_INDEX labels add nothing, and have exactly zero gradient. Computed in fp32 whatever the model
    dtype: bf16 log-softmax over a large vocabulary loses precision.
    """
    shift_logits = logits[..., :-1, :].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[..., 1:].reshape(-1).to(logits.device)
    loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((shift_labels != IGNORE_INDEX).sum())


def trained_token_count(labels: torch.Tensor) -> int:
    """Tokens `token_loss_sum` will score in a batch with these labels."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


def window_token_count(micro_batches: Iterable[Mapping[str, torch.Tensor]]) -> int:
    """Trained tokens over a whole gradient-accumulation window: the divisor of every micro-batch's
    loss sum."""
    return sum(trained_token_count(batch["labels"]) for batch in micro_batches)
