"""The training data path and loss: packing is exact, masked tokens get no gradient, accumulation
averages over the whole window. Tiny random Mistral/Llama models built here (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PreTrainedModel, Qwen2Config

from twinlm.errors import TwinError
from twinlm.prepare.outputs import write_tokenized
from twinlm.train.data import (
    IGNORE_INDEX,
    Example,
    block_causal_mask,
    collate_packed,
    collate_padded,
    group_by_length,
    load_split,
    make_example,
    pack,
)
from twinlm.train.loss import token_loss_sum, trained_token_count, window_token_count

VOCAB = 100
EOS = 2


def tiny_model(arch: str, attn: str, sliding_window: int | None = None) -> PreTrainedModel:
    """A random 2-layer model; a large init range so that attending across samples visibly matters."""
    torch.manual_seed(0)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.3,
    )
    if arch == "mistral":
        config = MistralConfig(**common, sliding_window=sliding_window)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    else:
        config = LlamaConfig(**common)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    return model.eval()


def random_examples(lengths: list[int], seed: int = 1) -> list[Example]:
    """Samples like a build writes: a masked prompt, then trained tokens ending in EOS."""
    rng = np.random.default_rng(seed)
    examples = []
    for n, length in enumerate(lengths):
        ids = rng.integers(3, VOCAB, size=length)
        ids[-1] = EOS
        labels = ids.copy()
        labels[: length // 2] = IGNORE_INDEX
        examples.append(make_example(f"s{n}", ids.tolist(), labels.tolist()))
    return examples


def per_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Losses of the trained tokens, in order (the shift the model and token_loss_sum use)."""
    flat_logits = logits[0, :-1].float()
    flat_labels = labels[0, 1:]
    losses = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="none")
    return losses[flat_labels != IGNORE_INDEX]


def unpacked_losses(model: PreTrainedModel, examples: list[Example]) -> torch.Tensor:
    out = []
    for e in examples:
        batch = collate_padded([e], pad_id=0)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits
        out.append(per_token_losses(logits, batch["labels"]))
    return torch.cat(out)


CASES = [("mistral", "sdpa"), ("mistral", "eager"), ("llama", "sdpa"), ("llama", "eager")]


@pytest.mark.parametrize(("arch", "attn"), CASES)
def test_packed_equals_unpacked_and_mask_matters(arch: str, attn: str) -> None:
    model = tiny_model(arch, attn)
    examples = random_examples([9, 14, 5, 11])
    expected = unpacked_losses(model, examples)

    batch = collate_packed(examples, attn_implementation=attn)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    packed = per_token_losses(logits, labels)
    assert packed.shape == expected.shape
    torch.testing.assert_close(packed, expected, atol=1e-5, rtol=0)
    loss_sum, n = token_loss_sum(logits, labels)
    assert n == sum(e.trained_tokens for e in examples) == len(expected)
    assert abs(loss_sum.item() - expected.sum().item()) < 1e-4

    # The same row with no mask and positions 0..T-1: tokens see earlier samples, losses change.
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"]).logits
    leaked = per_token_losses(leaky, labels)
    assert torch.allclose(leaked[: examples[0].trained_tokens], expected[: examples[0].trained_tokens])
    assert (leaked - expected).abs().max().item() > 1e-2, "the mask made no difference: test is blind"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padded_batch_equals_unpacked(attn: str) -> None:
    model = tiny_model("llama", attn)
    examples = random_examples([9, 14, 5])
    expected = unpacked_losses(model, examples)
    batch = collate_padded(examples, pad_id=EOS)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    loss_sum, n = token_loss_sum(logits, labels)
    assert n == len(expected)
    assert abs(loss_sum.item() - expected.sum().item()) < 1e-4


def test_position_ids_alone_work_only_without_a_cache() -> None:
    """Pins the transformers 5 behaviour that makes the explicit 4-D mask necessary on sdpa/eager.

    With no mask, transformers builds the block mask from restarting position_ids only when there
    is no KV cache; `use_cache` defaults to True, and then the samples silently attend to each other.
    """
    model = tiny_model("mistral", "sdpa")
    examples = random_examples([9, 14, 5])
    expected = unpacked_losses(model, examples)
    batch = collate_packed(examples, attn_implementation="flash_attention_2")
    assert "attention_mask" not in batch
    labels = batch.pop("labels")
    with torch.no_grad():
        detected = model(**batch, use_cache=False).logits
        leaky = model(**batch).logits
    torch.testing.assert_close(per_token_losses(detected, labels), expected, atol=1e-5, rtol=0)
    assert (per_token_losses(leaky, labels) - expected).abs().max().item() > 1e-2


def test_sliding_window_is_kept_in_the_packed_mask() -> None:
    """Mistral with a window shorter than the samples: our 4-D mask must apply the window itself."""
    model = tiny_model("mistral", "sdpa", sliding_window=4)
    examples = random_examples([12, 10])
    expected = unpacked_losses(model, examples)
    batch = collate_packed(examples, attn_implementation="sdpa", sliding_window=4)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(per_token_losses(logits, labels), expected, atol=1e-5, rtol=0)


def test_first_label_of_each_sample_is_not_trained_across_the_boundary() -> None:
    # Every label trainable (continued pre-training data): the naive concatenation would score
    # sample B's first token from sample A's last one.
    examples = [
        make_example(f"d{i}", list(range(3, 3 + n)), list(range(3, 3 + n))) for i, n in enumerate([4, 6, 3])
    ]
    batch = collate_packed(examples)
    assert batch["labels"][0, [0, 4, 10]].tolist() == [IGNORE_INDEX] * 3
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2]
    assert trained_token_count(batch["labels"]) == sum(len(e) - 1 for e in examples) == 10
    naive = torch.from_numpy(np.concatenate([e.labels for e in examples]).astype(np.int64))[None]
    assert trained_token_count(naive) == 12  # two cross-sample predictions


def test_block_causal_mask_shape_and_values() -> None:
    mask = block_causal_mask([2, 3])
    assert mask.shape == (1, 1, 5, 5) and mask.dtype == torch.float32
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    assert set(mask.unique().tolist()) == {0.0, float("-inf")}


def test_masked_tokens_get_exactly_zero_gradient() -> None:
    model = tiny_model("mistral", "sdpa")
    examples = random_examples([8, 10, 7])
    untrained = examples[1]
    examples[1] = make_example(
        untrained.sample_id, untrained.input_ids.tolist(), [IGNORE_INDEX] * len(untrained)
    )
    batch = collate_packed(examples)
    labels = batch.pop("labels")
    embeds = model.get_input_embeddings()(batch.pop("input_ids")).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, **batch).logits
    logits.retain_grad()
    loss_sum, n = token_loss_sum(logits, labels)
    (loss_sum / n).backward()

    # d loss / d logits at t is zero exactly where label t+1 is -100 (and at the last position).
    next_trained = torch.cat([labels[0, 1:] != IGNORE_INDEX, torch.tensor([False])])
    grad_norm = logits.grad[0].abs().sum(-1)
    assert torch.all(grad_norm[~next_trained] == 0)
    assert torch.all(grad_norm[next_trained] > 0)
    # The fully masked sample, walled off by the block mask, does not influence the loss at all.
    start, end = len(examples[0]), len(examples[0]) + len(examples[1])
    assert torch.all(embeds.grad[0, start:end] == 0)
    assert embeds.grad[0, :start].abs().sum() > 0 and embeds.grad[0, end:].abs().sum() > 0


def test_window_average_over_accumulation() -> None:
    model = tiny_model("llama", "sdpa")
    small = random_examples([6], seed=3)  # 3 trained tokens
    large = random_examples([30, 26], seed=4)  # 28 trained tokens
    micro = [collate_padded(small, pad_id=0), collate_padded(large, pad_id=0)]
    n_window = window_token_count(micro)
    assert n_window == 3 + 28

    grads_window = None
    per_micro_means, window_loss = [], 0.0
    for batch in micro:
        model.zero_grad()
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        loss_sum, n = token_loss_sum(model(**inputs).logits, batch["labels"])
        (loss_sum / n_window).backward()
        per_micro_means.append(loss_sum.item() / n)
        window_loss += loss_sum.item() / n_window
        step = [p.grad.clone() for p in model.parameters()]
        grads_window = (
            step if grads_window is None else [a + b for a, b in zip(grads_window, step, strict=True)]
        )

    model.zero_grad()
    big = collate_padded(small + large, pad_id=0)
    inputs = {k: v for k, v in big.items() if k != "labels"}
    big_sum, big_n = token_loss_sum(model(**inputs).logits, big["labels"])
    (big_sum / big_n).backward()

    assert big_n == n_window
    assert abs(window_loss - big_sum.item() / big_n) < 1e-5
    naive = sum(per_micro_means) / len(per_micro_means)
    assert abs(naive - window_loss) > 1e-3, "micro-batch averaging should differ here"
    for mine, theirs in zip(grads_window, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_loss_is_fp32_and_matches_the_model_loss() -> None:
    model = tiny_model("llama", "eager")
    batch = collate_padded(random_examples([12, 7]), pad_id=0)
    out = model(**batch)  # transformers' own mean over trained tokens
    loss_sum, n = token_loss_sum(out.logits.to(torch.bfloat16), batch["labels"])
    assert loss_sum.dtype == torch.float32
    exact_sum, _ = token_loss_sum(out.logits, batch["labels"])
    assert abs(exact_sum.item() / n - out.loss.item()) < 1e-5


def lengths_examples(lengths: list[int]) -> list[Example]:
    return [make_example(str(i), [5] * n, [5] * n) for i, n in enumerate(lengths)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=80), min_size=0, max_size=60),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=0, max_value=3),
)
def test_pack_covers_every_sample_once_within_budget(lengths: list[int], max_tokens: int, seed: int) -> None:
    examples = lengths_examples(lengths)
    bins = pack(examples, max_tokens, seed=seed, epoch=0)
    assert sorted(i for b in bins for i in b) == list(range(len(examples)))
    for b in bins:
        total = sum(lengths[i] for i in b)
        assert total <= max_tokens or len(b) == 1  # an over-long sample sits alone
        if any(lengths[i] >= max_tokens for i in b):
            assert len(b) == 1
    assert bins == pack(examples, max_tokens, seed=seed, epoch=0)
    for b in group_by_length(examples, max_tokens, seed=seed, epoch=0):
        assert len(b) * max(lengths[i] for i in b) <= max_tokens or len(b) == 1


def test_pack_is_deterministic_per_seed_and_epoch_and_tight() -> None:
    lengths = [int(x) for x in np.random.default_rng(0).integers(5, 120, size=400)]
    examples = lengths_examples(lengths)
    first = pack(examples, 256, seed=7, epoch=0)
    assert first == pack(examples, 256, seed=7, epoch=0)
    assert first != pack(examples, 256, seed=7, epoch=1)
    assert first != pack(examples, 256, seed=8, epoch=0)
    # Best-fit decreasing wastes little: within 5% of the lower bound on the number of bins.
    assert len(first) <= 1.05 * (sum(lengths) / 256) + 1
    # Samples are never split: each packed row is exactly its samples back to back.
    row = collate_packed([examples[i] for i in first[0]])
    assert row["input_ids"].shape[1] == sum(lengths[i] for i in first[0]) <= 256


def test_collate_padded_keeps_eos_labels_when_pad_is_eos() -> None:
    a = make_example("a", [7, 8, EOS], [IGNORE_INDEX, 8, EOS])
    b = make_example("b", [7, 9, 10, 11, EOS], [IGNORE_INDEX, IGNORE_INDEX, 10, 11, EOS])
    batch = collate_padded([a, b], pad_id=EOS)
    assert batch["input_ids"].tolist() == [[7, 8, EOS, EOS, EOS], [7, 9, 10, 11, EOS]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 8, EOS, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, 10, 11, EOS],
    ]


def test_load_split_reads_a_build_and_rejects_bad_rows(tmp_path: Path) -> None:
    rows = [("s1", [1, 2, 3], [IGNORE_INDEX, 2, 3]), ("s2", [4, 5], [4, 5])]
    write_tokenized(tmp_path / "train.parquet", rows)
    examples = load_split(tmp_path, "train")
    assert [e.sample_id for e in examples] == ["s1", "s2"]
    assert [e.input_ids.tolist() for e in examples] == [[1, 2, 3], [4, 5]]
    assert [e.labels.tolist() for e in examples] == [[IGNORE_INDEX, 2, 3], [4, 5]]
    assert [e.trained_tokens for e in examples] == [2, 1]

    with pytest.raises(TwinError, match=r"eval\.parquet: no such dataset file"):
        load_split(tmp_path, "eval")
    bad = pa.table({"sample_id": ["x", "y"], "input_ids": [[1, 2], [1, 2, 3]], "labels": [[1, 2], [1, 2]]})
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(TwinError, match=r"bad\.parquet: row 1 \(sample 'y'\): 3 input ids but 2 labels"):
        load_split(tmp_path, "bad")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(TwinError, match=r"junk\.parquet: not a readable dataset file"):
        load_split(tmp_path, "junk")
