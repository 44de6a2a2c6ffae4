"""FlexAttention on packed rows: transformers builds the document mask from position_ids, so a packed
row must give exactly what each sample alone gives, with Mistral's sliding window too (issue 8: the
kernels compared on a GPU are twinlm_packed, SDPA with a block mask and FlexAttention)."""

from __future__ import annotations

import pytest
import torch

from twinlm.train.data import collate_packed, make_example, needs_4d_mask

from test_data_loss import tiny_model

pytestmark = pytest.mark.slow  # FlexAttention compiles its kernel on first use (~10 s on a CPU)


@pytest.mark.parametrize(("arch", "window"), [("mistral", 5), ("llama", None)])
def test_flex_packed_row_equals_each_sample_alone(arch: str, window: int | None) -> None:
    gen = torch.Generator().manual_seed(3)
    samples = [torch.randint(3, 97, (n,), generator=gen) for n in (9, 3, 14, 1, 7)]
    examples = [make_example(str(i), s.tolist(), s.tolist()) for i, s in enumerate(samples)]
    assert not needs_4d_mask("flex_attention")
    batch = collate_packed(examples, "flex_attention", sliding_window=window)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no T x T mask is built or passed
    flex = tiny_model(arch, "flex_attention", sliding_window=window)
    alone = tiny_model(arch, "sdpa", sliding_window=window)
    with torch.no_grad():
        logits = flex(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        start = 0
        for sample in samples:
            expected = alone(input_ids=sample[None], use_cache=False).logits
            torch.testing.assert_close(logits[:, start : start + len(sample)], expected, atol=1e-4, rtol=1e-4)
            start += len(sample)
