"""Base models: the tiny model builder, the presets, and loading for LoRA / DoRA / QLoRA / full."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from twinlm.errors import TwinError
from twinlm.models.load import LoraSettings, count_parameters, load_model
from twinlm.models.presets import FULL_LR, LORA_LR, PRESETS, get_preset, resolve
from twinlm.models.tiny import ARCHITECTURES, build_tiny_model, ensure_tiny
from twinlm.train.data import collate_packed, make_example
from twinlm.train.loss import token_loss_sum

ARCH_CLASSES = {"mistral": "MistralForCausalLM", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_tiny_model(root / arch, arch) for arch in ARCHITECTURES}


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_model_is_deterministic_and_loads(
    arch: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    folder = tiny_models[arch]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [ARCH_CLASSES[arch]]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert config["vocab_size"] == len(tokenizer)
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (64, 2, 4)
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is False
    assert config["max_position_embeddings"] == 4096
    assert not list(folder.glob("*.bin"))

    state = torch.get_rng_state()
    again = build_tiny_model(tmp_path / "again", arch)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert _digest(again) == _digest(folder)
    other = build_tiny_model(tmp_path / "other", arch, seed=1)
    assert _digest(other) != _digest(folder)

    model, trainable, total = load_model(str(folder), "full", lora=LORA, dtype=torch.float32, device="cpu")
    assert type(model).__name__ == ARCH_CLASSES[arch]
    assert trainable == total == sum(p.numel() for p in model.parameters())
    logits = model(input_ids=tokenizer("hello there 😂", return_tensors="pt").input_ids).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_ensure_tiny_builds_tokenizer_and_mistral_once(tmp_path: Path) -> None:
    folder = ensure_tiny(tmp_path / "tiny")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "mistral"
    assert (folder / "TWINLM-TINY").is_file() and (folder / "tokenizer.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny(folder) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt

    # A folder from before the tiny model existed (tokenizer only) gains the model.
    (folder / "config.json").unlink()
    ensure_tiny(folder)
    assert (folder / "config.json").is_file()


def _step(model: torch.nn.Module, vocab: int, steps: int = 2) -> None:
    """Train a couple of steps on a random batch, with a masked prefix (-100 labels)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (2, 12), generator=generator)
    labels = input_ids.clone()
    labels[:, :4] = -100
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0
    )
    model.train()
    for _ in range(steps):  # two steps: LoRA's B starts at zero, so A only gets a gradient after one
        loss = model(input_ids=input_ids, labels=labels).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize(
    ("arch", "method"),
    [("mistral", "lora"), ("llama", "lora"), ("qwen2", "lora"), ("mistral", "dora"), ("llama", "qlora"),
     ("qwen2", "qlora"), ("llama", "qdora"), ("mistral", "full")],
)  # fmt: skip
def test_trainable_sets_and_only_trainable_params_change(
    arch: str, method: str, tiny_models: dict[str, Path]
) -> None:
    model, trainable, total = load_model(
        str(tiny_models[arch]),
        method,
        lora=LORA,
        dtype=torch.float32,
        device="cpu",  # type: ignore[arg-type]
    )
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert (trainable, total) == count_parameters(model) and 0 < trainable <= total
    if method == "full":
        assert trainable == total
    else:
        assert trainable < total / 2
        assert all(".lora_" in name for name in names)
        assert any("lora_A" in name for name in names) and any("lora_B" in name for name in names)
        # all-linear: attention and MLP projections of every layer, never the output head.
        for layer in range(2):
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
                assert any(f"layers.{layer}." in n and f"{proj}.lora_A" in n for n in names), (layer, proj)
        assert not any("lm_head" in name or "embed_tokens" in name for name in names)
        magnitudes = [name for name in names if "lora_magnitude_vector" in name]
        assert bool(magnitudes) == (method in ("dora", "qdora"))
        wrapped = [m for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
        assert len(wrapped) == 14
        quantized = [isinstance(m.base_layer, bnb.nn.Linear4bit) for m in wrapped]
        assert all(quantized) if method in ("qlora", "qdora") else not any(quantized)
        if method in ("qlora", "qdora"):  # 4-bit weights counted as the weights they stand for
            _, _, base_total = load_model(
                str(tiny_models[arch]), "full", lora=LORA, dtype=torch.float32, device="cpu"
            )
            assert total - trainable == base_total

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _step(model, model.config.vocab_size)
    after = dict(model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name].detach())}
    assert changed == names  # every trainable tensor moved, no frozen one did


def test_rslora_and_targets_reach_peft(tiny_models: dict[str, Path]) -> None:
    settings = LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=("q_proj", "v_proj"), rslora=True)
    model, trainable, _ = load_model(
        str(tiny_models["mistral"]), "lora", lora=settings, dtype=torch.float32, device="cpu"
    )
    config = model.peft_config["default"]  # type: ignore[index]
    assert config.use_rslora and config.r == 4 and config.lora_alpha == 8 and config.lora_dropout == 0.1
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    # q: 64 -> 64, v: 64 -> 32 (2 KV heads of 16); A is r x in, B is out x r; 2 layers.
    assert trainable == 2 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4)


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_gradient_checkpointing_and_attention_choice(method: str, tiny_models: dict[str, Path]) -> None:
    model, _, _ = load_model(
        str(tiny_models["qwen2"]), method, lora=LORA, dtype=torch.float32, device="cpu",  # type: ignore[arg-type]
        attn_implementation="eager", gradient_checkpointing=True,
    )  # fmt: skip
    base = model.get_base_model() if method != "full" else model  # type: ignore[operator]
    assert base.is_activation_checkpointing and base.config.use_cache is False
    assert base.config._attn_implementation == "eager"
    trainable = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    _step(model, base.config.vocab_size)
    assert all(not torch.equal(p, dict(model.named_parameters())[name]) for name, p in trainable.items())


def test_pickle_only_and_missing_models_are_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_models["mistral"] / "config.json").read_bytes())
    torch.save(load_file(tiny_models["mistral"] / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(TwinError, match=r"only safetensors.*pytorch_model\.bin"):
        load_model(str(folder), "lora", lora=LORA, dtype=torch.float32, device="cpu")
    with pytest.raises(TwinError, match="no model weights"):
        load_model(str(tmp_path), "full", lora=LORA, dtype=torch.float32, device="cpu")
    with pytest.raises(TwinError, match="cannot load the model"):  # offline, not in the cache
        load_model("twinlm-test/no-such-model", "full", lora=LORA, dtype=torch.float32, device="cpu")
    with pytest.raises(TwinError, match="unknown training method"):
        load_model(str(tiny_models["mistral"]), "ia3", lora=LORA, dtype=torch.float32, device="cpu")  # type: ignore[arg-type]


def test_presets_resolve() -> None:
    assert resolve("mistral-7b-instruct") == "mistralai/Mistral-7B-Instruct-v0.3"
    assert resolve("mistral-7b") == "mistralai/Mistral-7B-v0.3"
    assert resolve("llama-3.1-8b-instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    for size in ("0.5B", "1.5B", "3B", "7B"):
        assert resolve(f"qwen2.5-{size.lower()}-instruct") == f"Qwen/Qwen2.5-{size}-Instruct"
    assert (
        resolve("gemma-2-9b-it") == "google/gemma-2-9b-it"
        and resolve("gemma-2-2b-it") == "google/gemma-2-2b-it"
    )
    assert resolve("tiny") == "tiny" and get_preset("tiny") is not None and PRESETS["tiny"].hub_id is None
    assert resolve("/some/local/folder") == "/some/local/folder" and resolve("org/model") == "org/model"
    assert get_preset("org/model") is None
    mistral = PRESETS["mistral-7b-instruct"]
    assert (
        mistral.lr("lora") == mistral.lr("qlora") == LORA_LR == 2e-4 and mistral.lr("full") == FULL_LR == 1e-5
    )
    for preset in PRESETS.values():
        assert preset.lora_target_modules == "all-linear" and 0 < preset.max_length <= preset.context_length
        assert preset.params_b > 0


@pytest.mark.parametrize("checkpointing", [False, True])
def test_qlora_keeps_frozen_weights_in_the_compute_dtype(
    checkpointing: bool, tiny_models: dict[str, Path]
) -> None:
    """bf16 QLoRA: only the adapter is fp32; embeddings, norms and lm_head stay bf16 (peft's
    prepare_model_for_kbit_training upcast them, running the residual stream and logits in fp32),
    and a packed sdpa row (the 4-D mask) trains in bf16."""
    model, _, _ = load_model(
        str(tiny_models["llama"]), "qlora", lora=LORA, dtype=torch.bfloat16, device="cpu",
        attn_implementation="sdpa", gradient_checkpointing=checkpointing,
    )  # fmt: skip
    base = model.get_base_model()  # type: ignore[operator]
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    plain = {n: p.dtype for n, p in frozen.items() if type(p).__name__ != "Params4bit"}
    assert any("embed_tokens" in n for n in plain) and any("lm_head" in n for n in plain)
    assert any("norm" in n for n in plain)
    assert set(plain.values()) == {torch.bfloat16}, {n: d for n, d in plain.items() if d != torch.bfloat16}
    adapter = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert adapter and set(adapter.values()) == {torch.float32}
    assert base.is_activation_checkpointing == checkpointing

    ids = [list(range(5, 5 + n)) for n in (7, 4, 9)]
    examples = [make_example(str(i), sample, sample) for i, sample in enumerate(ids)]
    batch = collate_packed(examples, "sdpa", torch.bfloat16)
    labels = batch.pop("labels")
    model.train()
    logits = model(**batch, use_cache=False).logits
    assert logits.dtype == torch.bfloat16  # the head ran in the compute dtype
    loss, count = token_loss_sum(logits, labels)
    assert count > 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
