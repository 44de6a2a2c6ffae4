"""Attention for packed rows without a T x T mask: each sample attends within itself only.

PyTorch's SDPA on a CPU (and on a GPU without flash attention) computes every block of an explicit
[T, T] mask, so a 2,048-token row packing 8 samples does ~8x the attention work it needs: 76% of a
CPU training step, measured (benchmarks/RESULTS.md). Splitting the row where a sample starts
(position_ids == 0, as `collate_packed` writes them) and running causal SDPA on each sample does only
the needed blocks and builds no mask at all. Registered with transformers' AttentionInterface (and a
no-op mask function) as "twinlm_packed"; anything that is not a single packed row goes to plain SDPA.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

NAME = "twinlm_packed"


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [batch, heads, T, head_dim]
    key: torch.Tensor,  # [batch, kv_heads, T, head_dim]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    position_ids = kwargs.get("position_ids")
    packed_row = query.shape[0] == 1 and query.shape[2] == key.shape[2] and attention_mask is None
    if position_ids is None or not packed_row:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    positions = position_ids.reshape(-1)
    starts = [*torch.nonzero(positions == 0).flatten().tolist(), positions.numel()]
    if starts[0] != 0:
        starts.insert(0, 0)
    window = getattr(getattr(module, "config", None), "sliding_window", None)
    outputs = []
    for begin, end in itertools.pairwise(starts):
        q, k, v = query[:, :, begin:end], key[:, :, begin:end], value[:, :, begin:end]
        if isinstance(window, int) and end - begin > window:
            # A sample longer than the sliding window: causal and windowed, as the model was trained.
            i = torch.arange(end - begin, device=q.device)
            allowed = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scaling)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scaling)
        outputs.append(out)
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """The attention above needs no mask tensor: transformers must not build a T x T one."""
    return None


AttentionInterface.register(NAME, packed_attention)
AttentionMaskInterface.register(NAME, _no_mask)
