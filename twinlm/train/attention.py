"""Attention for packed rows without a T x T mask: each sample attends within itself only.

PyTorch's SDPA on a CPU (and on a GPU without flash attention) computes every block of an explicit
[T, T] mask, so a 2,048-token row packing 8 samples does ~8x the attention work it needs: 76% of a
CPU training step, measured (benchmarks/RESULTS.md). Splitting the row where a sample starts
(position_ids == 0, as `collate_packed` writes them) and running causal SDPA on each sample does only
the needed blocks and builds no mask at all. Registered with transformers' AttentionInterface (and a
no-op mask function) as "twinlm_packed"; anything that is not a single packed row goes to plain SDPA.
Each layer keeps its own sliding window (Gemma 2/3 and Qwen2 window only some layers) and Gemma 2's
soft-capped attention logits.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

from twinlm.train.data import attention_windows

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
    window = _layer_window(module, kwargs)
    softcap = kwargs.get("softcap")  # Gemma 2: attention logits soft-capped, which SDPA cannot do
    position_ids = kwargs.get("position_ids")
    packed_row = query.shape[0] == 1 and query.shape[2] == key.shape[2] and attention_mask is None
    whole_rows = position_ids is None or not packed_row
    windowed = window is not None and key.shape[2] > window
    if whole_rows and (attention_mask is not None or not (windowed or softcap is not None)):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if whole_rows:  # not one packed row, but this layer windows or soft-caps: plain SDPA would do neither
        out = _attend(query, key, value, window, dropout, scaling, softcap)
        return out.transpose(1, 2).contiguous(), None
    positions = position_ids.reshape(-1)
    starts = [*torch.nonzero(positions == 0).flatten().tolist(), positions.numel()]
    if starts[0] != 0:
        starts.insert(0, 0)
    outputs = [
        _attend(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], window, dropout, scaling, softcap)
        for a, b in itertools.pairwise(starts)
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def _layer_window(module: torch.nn.Module, kwargs: dict[str, Any]) -> int | None:
    """This layer's sliding window: the one its attention module passes (Gemma 2/3, Qwen2, Mistral
    and the other windowed models pass `sliding_window`, None on their full-attention layers), else
    its layer type's from the config. Never `config.sliding_window` for every layer: Gemma and Qwen2
    window only some."""
    if "sliding_window" in kwargs:
        window = kwargs["sliding_window"]
        return window if isinstance(window, int) else None
    config = getattr(module, "config", None)
    if config is None:
        return None
    windows = attention_windows(config)
    layer_types = getattr(config, "layer_types", None)
    index = getattr(module, "layer_idx", None)
    if layer_types and isinstance(index, int) and index < len(layer_types):
        return windows.get(layer_types[index])
    return next(iter(windows.values())) if len(windows) == 1 else None


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None,
    dropout: float,
    scaling: float | None,
    softcap: float | None,
) -> torch.Tensor:
    """Causal attention over one sample (or whole rows), queries aligned with the last keys: SDPA,
    with a mask only where a window or soft-capping calls for one. [batch, heads, q, head_dim]."""
    q_len, k_len = q.shape[2], k.shape[2]
    windowed = window is not None and k_len > window
    if softcap is None and not windowed and q_len == k_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scaling)
    i = torch.arange(k_len - q_len, k_len, device=q.device)[:, None]
    j = torch.arange(k_len, device=q.device)[None, :]
    allowed = j <= i
    if windowed:
        # A sample longer than the sliding window: causal and windowed, as the model was trained.
        allowed &= i - j < window
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scaling)
    # Soft-capped logits, as the model's own eager attention computes them.
    scores = torch.matmul(q, k.transpose(2, 3)) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = F.dropout(probs, p=dropout, training=dropout > 0)
    return torch.matmul(probs, v)


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """The attention above needs no mask tensor: transformers must not build a T x T one."""
    return None


AttentionInterface.register(NAME, packed_attention)
AttentionMaskInterface.register(NAME, _no_mask)
