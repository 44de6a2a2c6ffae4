"""Load a base model ready to train: LoRA, DoRA, QLoRA / QDoRA (on a 4-bit NF4 base) or full fine-tuning.

Only safetensors weights are loaded (a pickled .bin can run code when unpickled), and remote code
only when the user asked for it. QLoRA works on a CPU too: bitsandbytes (>= 0.45) quantizes to NF4
and runs `Linear4bit` there, which is what lets the tests check QLoRA without a GPU.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

from twinlm.errors import TwinError
from twinlm.models.presets import Method

METHODS: tuple[Method, ...] = ("lora", "qlora", "dora", "qdora", "full")
QUANTIZED: tuple[Method, ...] = ("qlora", "qdora")  # adapters on a 4-bit NF4 base
# Weight files that are pickles: refused, with a pointer to a conversion, rather than loaded.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class LoraSettings:
    """The adapter's shape. alpha/r scales the update (alpha/sqrt(r) with rsLoRA, which keeps the
    scale stable at large ranks)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # "all-linear": every Linear of the transformer blocks (peft leaves the output head out).
    target_modules: str | tuple[str, ...] = "all-linear"
    rslora: bool = False


def load_model(
    path: str,
    method: Method,
    *,
    lora: LoraSettings,
    dtype: torch.dtype,
    device: str,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
) -> tuple[nn.Module, int, int]:
    """Load `path` (a local folder or a hub id) for training with `method`.

    Returns the model (a peft model for the adapter methods, the plain model for full) and the number
    of trainable and of all parameters (4-bit weights counted as the weights they stand for).
    The model is returned in eval mode, as transformers loads it: the training loop calls train().
    """
    if method not in METHODS:
        raise TwinError(f"unknown training method {method!r}; expected one of {', '.join(METHODS)}")
    _check_safetensors(path)
    kwargs: dict[str, object] = {
        "dtype": dtype,
        "use_safetensors": True,
        "trust_remote_code": trust_remote_code,
    }
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if method in QUANTIZED:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            # Quantizing the quantization constants too saves ~0.4 bit per weight (QLoRA paper).
            bnb_4bit_use_double_quant=True,
        )
        # Weights are quantized as they are placed, so they must be placed on the target device
        # while loading (a 4-bit model cannot be moved with .to() afterwards).
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        # OSError: missing folder, hub id not cached offline, no safetensors on the hub;
        # ValueError: an unknown architecture or an invalid config. Both are the user's input.
        raise TwinError(f"{path}: cannot load the model: {_first_line(err)}") from err
    if method not in QUANTIZED:
        model.to(device)

    checkpointing_kwargs = {"use_reentrant": False}  # the reentrant variant needs inputs with grad
    if gradient_checkpointing:
        # The KV cache is useless in training and conflicts with recomputation.
        model.config.use_cache = False

    if method == "full":
        if gradient_checkpointing:
            _enable_checkpointing(model, checkpointing_kwargs)
        for param in model.parameters():
            param.requires_grad_(True)
        trainable, total = count_parameters(model)
        return model, trainable, total

    # Imported here: peft is only needed for adapter methods.
    from peft import LoraConfig, get_peft_model

    # Not peft's prepare_model_for_kbit_training for QLoRA: it upcasts every non-quantized weight
    # (embeddings, norms, lm_head) to fp32, so the residual stream and the logits run in fp32 (~2 GB
    # more on a 7-8B model, no bf16 attention kernels). As torchtune does, the frozen weights stay in
    # the compute dtype and only the trainable adapter is fp32 (below). Freezing is get_peft_model's.
    if gradient_checkpointing:
        _enable_checkpointing(model, checkpointing_kwargs)

    targets = lora.target_modules
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        use_rslora=lora.rslora,
        # DoRA on a 4-bit base (QDoRA): peft dequantizes each weight for its column norms.
        use_dora=method in ("dora", "qdora"),
        bias="none",
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:  # e.g. target modules that match nothing in this model
        raise TwinError(f"{path}: cannot add the LoRA adapter: {_first_line(err)}") from err
    for param in peft_model.parameters():
        # peft already keeps bf16/fp16 adapters in fp32 (autocast_adapter_dtype); the optimizer's
        # small updates to them must not round away, whatever peft's default becomes.
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    trainable, total = count_parameters(peft_model)
    return peft_model, trainable, total


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts. A bitsandbytes 4-bit weight is stored packed (two
    4-bit values per byte of its storage type), so its numel understates the weights it holds."""
    trainable = total = 0
    for param in model.parameters():
        count = param.numel()
        if type(param).__name__ == "Params4bit":
            storage = getattr(param, "quant_storage", torch.uint8)
            count *= 2 * storage.itemsize
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def _enable_checkpointing(model: PreTrainedModel, kwargs: dict[str, bool]) -> None:
    # transformers 5 renamed gradient checkpointing to activation checkpointing (the old name warns).
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _check_safetensors(path: str) -> None:
    """A local folder must hold safetensors weights; a pickle-only one gets a clear refusal.
    (Hub ids are checked by `use_safetensors=True`, which never falls back to .bin files.)"""
    folder = Path(path)
    if not folder.is_dir():
        return
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if any(name.endswith(".safetensors") or name == "model.safetensors.index.json" for name in files):
        return
    pickles = sorted(name for name in files if name.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise TwinError(
            f"{folder}: only safetensors weights are loaded, and this folder has only pickled ones "
            f"({', '.join(pickles[:3])}); convert them, e.g. load and save_pretrained() them in a "
            "trusted environment"
        )
    raise TwinError(f"{folder}: no model weights (*.safetensors) in this folder")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def is_quantized(model: nn.Module | PreTrainedModel) -> bool:
    """Whether the model (or the base under a peft model) holds bitsandbytes 4-bit weights."""
    return any(type(param).__name__ == "Params4bit" for param in model.parameters())


def eval_mode(model: nn.Module) -> None:
    """model.eval(), except bitsandbytes 4-bit layers: in eval mode under no_grad on a CPU with
    AVX-512 bf16 they repack their weights for inference, for good, and the training step after
    that fails on layers with a bias (Qwen2). They have no dropout, so their mode changes nothing else."""
    model.eval()
    bnb = sys.modules.get("bitsandbytes")
    if bnb is not None:
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.training = True
