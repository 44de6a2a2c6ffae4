"""Sliding windows per layer: packed rows give each sample's own logits on models that window only
some layers (Gemma 2 / 3, Qwen2 with max_window_layers) or all of them (Mistral), in both packed
paths: twinlm_packed attention and the explicit 4-D mask (sdpa, eager)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3Config,
    Gemma3TextConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
)

from twinlm.errors import TwinError
from twinlm.train import attention
from twinlm.train.data import LayerMasks, attention_windows, collate_packed

from test_data_loss import VOCAB, random_examples

WINDOW = 4  # shorter than every sample but one below
LENGTHS = [12, 10, 3, 9]
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
    initializer_range=0.3,  # large weights: attending to a token or not visibly changes the logits
)


def config(arch: str) -> PretrainedConfig:
    if arch == "gemma2":  # alternating: sliding, full, sliding; attention logits soft-capped
        return Gemma2Config(**COMMON, sliding_window=WINDOW, query_pre_attn_scalar=8)
    if arch == "gemma3":
        layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
        return Gemma3TextConfig(
            **COMMON, sliding_window=WINDOW, layer_types=layer_types, query_pre_attn_scalar=8
        )
    if arch == "qwen2":  # layers from max_window_layers on are windowed
        return Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
    if arch == "mistral":  # every layer windowed
        return MistralConfig(**COMMON, sliding_window=WINDOW)
    raise ValueError(arch)


def model(arch: str, attn: str) -> PreTrainedModel:
    torch.manual_seed(0)
    net = AutoModelForCausalLM.from_config(config(arch), attn_implementation=attn, dtype=torch.float32)
    return net.eval()


# The model's own unpacked forward: Gemma 2 soft-caps attention logits, which sdpa cannot do.
REFERENCE = {"gemma2": "eager", "gemma3": "sdpa", "qwen2": "sdpa", "mistral": "sdpa"}
CASES = [
    (arch, attn)
    for arch in REFERENCE
    for attn in (attention.NAME, "sdpa", "eager")
    if not (arch == "gemma2" and attn == "sdpa")
]


def packed_logits(net: PreTrainedModel, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return net(**inputs, use_cache=False).logits


def per_sample(logits: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(logits[0], LENGTHS))


@pytest.mark.parametrize(("arch", "attn"), CASES)
def test_packed_logits_equal_each_sample_alone(arch: str, attn: str) -> None:
    examples = random_examples(LENGTHS)
    reference = model(arch, REFERENCE[arch])
    with torch.no_grad():
        expected = [
            reference(input_ids=torch.from_numpy(e.input_ids).long()[None], use_cache=False).logits[0]
            for e in examples
        ]
    net = model(arch, attn)
    batch = collate_packed(examples, attn, torch.float32, attention_windows(net.config))
    for got, want in zip(per_sample(packed_logits(net, batch)), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    if attn != attention.NAME:
        # Not blind: the window matters on these samples, and so does which layers have it.
        for wrong in (None, WINDOW):
            if wrong == WINDOW and arch == "mistral":
                continue  # every layer is windowed: that is the right mask
            got = per_sample(packed_logits(net, collate_packed(examples, attn, torch.float32, wrong)))
            diff = max((g - w).abs().max().item() for g, w in zip(got, expected, strict=True))
            assert diff > 1e-2, (wrong, diff)


def test_windows_per_layer_type() -> None:
    assert attention_windows(config("gemma2")) == {"sliding_attention": WINDOW, "full_attention": None}
    assert attention_windows(config("gemma3")) == {"sliding_attention": WINDOW, "full_attention": None}
    assert attention_windows(config("qwen2")) == {"sliding_attention": WINDOW, "full_attention": None}
    assert set(attention_windows(config("mistral")).values()) == {WINDOW}
    assert set(attention_windows(MistralConfig(sliding_window=None)).values()) == {None}
    # Qwen2 without use_sliding_window has no window at all, whatever sliding_window says.
    assert set(attention_windows(Qwen2Config(sliding_window=WINDOW)).values()) == {None}
    # A multimodal config: the text model's layers.
    assert attention_windows(Gemma3Config(text_config=config("gemma3").to_dict())) == {
        "sliding_attention": WINDOW,
        "full_attention": None,
    }
    # Layers that take no attention mask (linear attention, convolutions) would mix packed samples.
    hybrid = SimpleNamespace(layer_types=["linear_attention", "full_attention"], sliding_window=None)
    with pytest.raises(TwinError, match=r"'linear_attention'.*train\.packing: false"):
        attention_windows(hybrid)


def test_mixed_windows_give_a_mask_per_layer_type_that_moves_like_a_tensor() -> None:
    examples = random_examples([6, 5])
    windows = {"sliding_attention": 2, "full_attention": None}
    masks = collate_packed(examples, "sdpa", torch.bfloat16, windows)["attention_mask"]
    assert isinstance(masks, LayerMasks) and set(masks) == set(windows)
    allowed = {t: (m[0, 0] == 0) for t, m in masks.items()}
    assert allowed["full_attention"].sum() == 6 * 7 // 2 + 5 * 6 // 2
    assert allowed["sliding_attention"].sum() == (1 + 5 * 2) + (1 + 4 * 2)
    moved = masks.to("cpu", dtype=torch.float32)
    assert isinstance(moved, LayerMasks) and all(m.dtype == torch.float32 for m in moved.values())
    # One window for every layer: a plain tensor, as every model takes it.
    single = collate_packed(examples, "sdpa", torch.float32, {"sliding_attention": 2})["attention_mask"]
    assert isinstance(single, torch.Tensor) and torch.equal(single, moved["sliding_attention"])


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_twinlm_packed_without_positions_keeps_window_and_softcap(arch: str) -> None:
    """Rows that are not one packed row (no position_ids, batch of 2) fall back to whole-row
    attention, with the layer's window and Gemma 2's soft-capping still applied."""
    ids = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(arch, attention.NAME)(input_ids=ids, use_cache=False).logits
        own = model(arch, REFERENCE[arch])(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(ours, own, atol=1e-5, rtol=1e-5)
