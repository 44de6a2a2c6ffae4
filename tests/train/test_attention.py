"""The packed attention gives exactly what each sample alone gives, without a T x T mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from twinlm.train import attention
from twinlm.train.data import collate_packed, make_example, needs_4d_mask

from test_data_loss import tiny_model

# (architecture, Mistral sliding window)
ARCHS = {
    "mistral": ("mistral", None),
    "mistral-window": ("mistral", 5),
    "llama": ("llama", None),
    "qwen2": ("qwen2", None),
}


def tiny(arch: str, implementation: str) -> torch.nn.Module:
    name, window = ARCHS[arch]
    return tiny_model(name, implementation, sliding_window=window)


def per_token(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_packed_row_equals_each_sample_alone(arch: str) -> None:
    gen = torch.Generator().manual_seed(1)
    samples = [torch.randint(3, 97, (n,), generator=gen) for n in (9, 3, 14, 1, 7)]
    examples = [make_example(str(i), s.tolist(), s.tolist()) for i, s in enumerate(samples)]
    assert not needs_4d_mask(attention.NAME)
    batch = collate_packed(examples, attention.NAME)
    assert "attention_mask" not in batch
    packed = tiny(arch, attention.NAME)
    alone = tiny(arch, "sdpa")
    with torch.no_grad():
        logits = packed(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        start = 0
        for sample in samples:
            expected = alone(input_ids=sample[None], use_cache=False).logits
            got = logits[:, start : start + len(sample)]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            start += len(sample)


def test_without_position_ids_it_is_plain_sdpa() -> None:
    ids = torch.randint(3, 97, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = tiny("llama", attention.NAME)(input_ids=ids, use_cache=False).logits
        sdpa = tiny("llama", "sdpa")(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(ours, sdpa, atol=1e-5, rtol=1e-5)
