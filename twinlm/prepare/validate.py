"""`twinlm validate`: check a built dataset before any GPU time is spent, and estimate that run.

The checks read only the dataset folder (samples.jsonl, train/eval.parquet, build.json): problems
are found where they are cheap to fix, by editing the corpus or twin.yaml and building again. The
estimate prices the run twin.yaml describes (method, epochs, batch size, checkpointing) for the
dataset's own model, in time and in peak GPU memory, on a GPU from the table below or any other
given by its memory and throughput. Nothing is downloaded: a model's size comes from its local
files, the hub cache, or the preset table.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from twinlm.config import TrainConfig
from twinlm.errors import TwinError
from twinlm.models.presets import get_preset
from twinlm.models.tiny import NAME as TINY
from twinlm.prepare.outputs import read_build_info, row_batches
from twinlm.prepare.sample import IGNORE_INDEX, read_samples


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    memory_gb: float  # as sold (GiB)
    tflops: float  # dense bf16 tensor throughput, from the vendor's spec sheet (no sparsity)
    fp32_tflops: float  # plain fp32: what a GPU without bf16 trains in (precision auto -> fp32)
    bf16: bool = True


# Peak dense throughput from NVIDIA's data sheets and architecture whitepapers (GeForce cards at
# their FP16/BF16-with-FP32-accumulate rate, the one training uses). T4 and V100 have no bf16:
# twinlm trains in fp32 there, at the fp32 rate.
GPUS: tuple[Gpu, ...] = (
    Gpu("RTX 3060", 12, 25.4, 12.7),
    Gpu("RTX 3080", 10, 59.5, 29.8),
    Gpu("RTX 3080", 12, 61.0, 30.6),
    Gpu("RTX 3090", 24, 71.0, 35.6),
    Gpu("RTX 4060", 8, 30.2, 15.1),
    Gpu("RTX 4060 Ti", 8, 44.1, 22.1),
    Gpu("RTX 4060 Ti", 16, 44.1, 22.1),
    Gpu("RTX 4070", 12, 58.3, 29.1),
    Gpu("RTX 4080", 16, 97.5, 48.7),
    Gpu("RTX 4090", 24, 165.0, 82.6),
    Gpu("RTX 5090", 32, 209.5, 104.8),
    Gpu("RTX A6000", 48, 154.8, 38.7),
    Gpu("RTX 6000 Ada", 48, 364.2, 91.1),
    Gpu("T4", 16, 65.0, 8.1, bf16=False),
    Gpu("V100", 16, 125.0, 15.7, bf16=False),
    Gpu("V100", 32, 125.0, 15.7, bf16=False),
    Gpu("A10", 24, 125.0, 31.2),
    Gpu("A10G", 24, 125.0, 31.2),
    Gpu("L4", 24, 121.0, 30.3),
    Gpu("L40", 48, 181.0, 90.5),
    Gpu("L40S", 48, 362.0, 91.6),
    Gpu("A100", 40, 312.0, 19.5),
    Gpu("A100", 80, 312.0, 19.5),
    Gpu("H100", 80, 989.0, 67.0),
    Gpu("H100 PCIe", 80, 756.0, 51.0),
    Gpu("H200", 141, 989.0, 67.0),
    Gpu("B200", 180, 2250.0, 80.0),
)
# Share of peak a fine-tuning run reaches in practice (model FLOPs utilisation).
MFU = 0.4
# Training FLOPs per token and parameter: forward 2, backward 4 (full); LoRA skips weight gradients.
# 4-bit bases add ~30% for dequantising. DoRA's extra work (the adapted weights' column norms) is per
# step, not per token: priced as LoRA. Gradient checkpointing runs the forward twice: +2.
FLOPS_PER_PARAM = {"full": 6.0, "lora": 4.0, "dora": 4.0, "qlora": 5.2, "qdora": 5.2}
DEFAULT_PARAMS_B = 7.25  # what the estimate assumes when the model's size cannot be found locally
GIB = 2**30
BATCH_ROWS = 1024  # dataset rows checked at a time (larger batches: more memory, no faster)


@dataclass(slots=True)
class Validation:
    problems: Counter[str] = field(default_factory=Counter)  # must fix: the dataset would mis-train
    warnings: Counter[str] = field(default_factory=Counter)  # worth a look
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first sample ids
    samples: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    trained_tokens: dict[str, int] = field(default_factory=dict)
    max_length: int = 0
    eval_fraction: float = 0.0  # the build's setting
    model: str = ""  # the build's base model (a preset name, a folder or a hub id)

    @property
    def eval_share(self) -> float:
        """The eval split's share of the trained tokens."""
        total = sum(self.trained_tokens.values())
        return self.trained_tokens.get("eval", 0) / total if total else 0.0

    def note(self, bucket: Counter[str], reason: str, sample_id: str) -> None:
        bucket[reason] += 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < 3:
            ids.append(sample_id)


def validate(folder: Path) -> Validation:
    """Check the dataset in `folder` (a `twinlm build` output)."""
    info = read_build_info(folder)
    settings = info["config"]["build"]
    result = Validation(
        max_length=int(settings["max_length"]),
        eval_fraction=float(settings.get("eval_fraction", 0.0)),
        model=str(info.get("model") or settings.get("model") or ""),
    )
    for sample in read_samples(folder / "samples.jsonl"):
        for turn in sample.turns:
            if not turn.text.strip():
                result.note(result.problems, "empty turn", sample.id)
            if turn.speaker == "" and sample.kind != "document":
                result.note(result.problems, "turn without a speaker", sample.id)
        if sample.kind != "document" and not sample.turns[-1].trained:
            result.note(result.warnings, "last turn not trained (context after the target)", sample.id)
    for split in ("train", "eval"):
        _check_rows(result, split, folder / f"{split}.parquet")
    if result.samples.get("eval", 0) == 0:
        result.warnings["no eval samples: no eval loss during training"] += 1
    elif result.eval_fraction > 0 and abs(result.eval_share - result.eval_fraction) > 0.01:
        # The split aims within a point of the setting; further off, the eval loss speaks for a
        # different mix than the one trained (a few conversations held out whole, say).
        result.warnings[
            f"eval holds {result.eval_share:.1%} of the trained tokens, build.eval_fraction is "
            f"{result.eval_fraction:.1%}"
        ] += 1
    return result


# --- The GPU ------------------------------------------------------------------------------------


def _key(name: str) -> str:
    """A GPU name without vendor words, case, spaces or punctuation: "GeForce RTX 4090" -> "4090"."""
    words = re.sub(r"\b(nvidia|geforce|rtx|tesla)\b", " ", name.lower())
    return re.sub(r"[^a-z0-9]", "", words)


def find_gpu(name: str | None, memory_gb: float | None = None, tflops: float | None = None) -> Gpu:
    """A GPU by name ("4090", "rtx 4090", "A100 80GB", "NVIDIA H100 PCIe"), or any GPU by its memory
    and peak bf16 throughput; either number overrides a named GPU's."""
    if name is None or not name.strip():
        if memory_gb is None or tflops is None:
            raise TwinError("--gpu: name a GPU, or give both --gpu-memory GB and --gpu-tflops TFLOPS")
        return Gpu("custom GPU", memory_gb, tflops, tflops)
    size = re.search(r"(\d+)\s*gb\b", name, re.IGNORECASE)
    query = _key(name[: size.start()] + name[size.end() :] if size else name)
    # The longest table name the query starts with, not followed by a digit ("A1000" is no A100).
    matches = [
        gpu
        for gpu in GPUS
        if query.startswith(_key(gpu.name)) and not query[len(_key(gpu.name)) :][:1].isdigit()
    ]
    if not matches:
        if memory_gb is not None and tflops is not None:
            return Gpu(name, memory_gb, tflops, tflops)
        known = ", ".join(dict.fromkeys(_label(g) for g in GPUS))
        raise TwinError(
            f"unknown GPU {name!r}; known: {known}; for any other give --gpu-memory GB and --gpu-tflops "
            "TFLOPS (its peak dense bf16 throughput)"
        )
    longest = max(len(_key(g.name)) for g in matches)
    variants = [g for g in matches if len(_key(g.name)) == longest]
    gpu = min(variants, key=lambda g: g.memory_gb)  # the smaller card unless the name says which
    if size:
        gpu = next((g for g in variants if g.memory_gb == int(size.group(1))), gpu)
        memory_gb = memory_gb if memory_gb is not None else float(size.group(1))
    if memory_gb is not None or tflops is not None:
        gpu = Gpu(
            gpu.name,
            memory_gb if memory_gb is not None else gpu.memory_gb,
            tflops if tflops is not None else gpu.tflops,
            tflops if tflops is not None else gpu.fp32_tflops,
            gpu.bf16,
        )
    return gpu


def _label(gpu: Gpu) -> str:
    sizes = sorted({g.memory_gb for g in GPUS if g.name == gpu.name})
    return gpu.name if len(sizes) == 1 else f"{gpu.name} {'/'.join(f'{m:g}' for m in sizes)}GB"


def gpu_label(gpu: Gpu) -> str:
    """ "RTX 4090 (24 GB)"."""
    return f"{gpu.name} ({gpu.memory_gb:g} GB)"


# --- The model ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelSize:
    params: int
    source: str  # where the count comes from, for the report
    shape: dict[str, Any] = field(default_factory=dict)  # config.json's, when found: activations


def model_size(model: str, workspace: Path, params_b: float | None = None) -> ModelSize:
    """The base model's parameter count, without downloading: `--params-b`, else the weights'
    safetensors headers, else its config.json (a local folder, the tiny preset, the hub cache), else
    the preset table; else an assumed 7.25B, said so."""
    folder = _local_folder(model, workspace)
    config = _read_config(folder / "config.json") if folder else None
    hub_id = None
    preset = get_preset(model)
    if config is None and folder is None:
        hub_id = preset.hub_id if preset else (model if model.count("/") == 1 else None)
        cached = _cached_config(hub_id) if hub_id else None
        config = _read_config(cached) if cached else None
    shape = _text_config(config) if config else {}
    if params_b is not None:  # another model than the dataset's: its shape is not this one's
        return ModelSize(round(params_b * 1e9), "--params-b")
    if folder is not None:
        counted = _safetensors_params(folder)
        if counted:
            return ModelSize(counted, f"counted in {folder}", shape)
    if preset is not None and not (model == TINY and shape):
        return ModelSize(round(preset.params_b * 1e9), f"the {model} preset", shape)
    if shape and _params_from_config(shape):
        return ModelSize(_params_from_config(shape), "estimated from its config.json", shape)
    return ModelSize(
        round(DEFAULT_PARAMS_B * 1e9), f"assumed: size of {model!r} unknown here; pass --params-b", shape
    )


def _local_folder(model: str, workspace: Path) -> Path | None:
    if model == TINY:
        folder = workspace / "models" / TINY
        return folder if folder.is_dir() else None
    for folder in (Path(model).expanduser(), workspace / model):
        if model and folder.is_dir():
            return folder
    return None


def _cached_config(hub_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hub_id, "config.json")  # the cache only: never a download
    except Exception:  # a malformed id or cache: the size is simply unknown here
        return None
    return Path(found) if isinstance(found, str) else None


def _check_rows(result: Validation, split: str, path: Path) -> None:
    """The split's counts and row problems, a record batch at a time in numpy (issue 18: the rows as
    Python lists took 1.6 GB for a million messages)."""
    result.samples[split] = result.tokens[split] = result.trained_tokens[split] = 0
    for batch in row_batches(path, BATCH_ROWS):
        ids, labels = batch.column(1), batch.column(2)
        id_lengths = pc.fill_null(pc.list_value_length(ids), 0).to_numpy()
        label_lengths = pc.fill_null(pc.list_value_length(labels), 0).to_numpy()
        # Trained tokens per row: a running count of trained labels, read at each row's end and start.
        trained = pc.not_equal(pc.list_flatten(labels), IGNORE_INDEX).to_numpy(zero_copy_only=False)
        running = np.concatenate(([0], np.cumsum(trained, dtype=np.int64)))
        ends = np.cumsum(label_lengths, dtype=np.int64)
        per_row = running[ends] - running[ends - label_lengths]
        result.samples[split] += batch.num_rows
        result.tokens[split] += int(id_lengths.sum())
        result.trained_tokens[split] += int(per_row.sum())
        checks = (
            ("labels and input ids differ in length", id_lengths != label_lengths),
            ("nothing to train in a sample", per_row == 0),
            ("sample over max_length", id_lengths > result.max_length),
        )
        flagged = np.logical_or.reduce([found for _, found in checks])
        for row in np.flatnonzero(flagged):  # in row order, each row's reasons in the order above
            sample_id = batch.column(0)[int(row)].as_py()
            for reason, found in checks:
                if found[row]:
                    result.note(result.problems, reason, sample_id)


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """A multimodal model's language part (Gemma 3, Llava): its config is nested."""
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def _safetensors_params(folder: Path) -> int:
    """Parameters in the folder's safetensors files, from their headers (no tensor is read)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with open(path, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
        except (OSError, ValueError, struct.error):
            return 0
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def _params_from_config(c: dict[str, Any]) -> int:
    """A decoder-only transformer's parameters from its shape (attention, gated MLP, norms)."""
    try:
        h, layers, vocab = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
        inter = int(c.get("intermediate_size") or 4 * h)
        heads = int(c.get("num_attention_heads") or 1)
        kv = int(c.get("num_key_value_heads") or heads)
        head_dim = int(c.get("head_dim") or h // heads)
    except (KeyError, TypeError, ValueError):
        return 0
    experts = int(c.get("num_local_experts") or c.get("num_experts") or 1)
    attention = 2 * h * heads * head_dim + 2 * h * kv * head_dim
    embeddings = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    return embeddings + layers * (attention + experts * 3 * h * inter + 2 * h) + h


# --- The estimate -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    hours: float
    tokens: int  # tokens through the model, every epoch
    memory_gb: float  # peak GPU memory of one process
    parts_gb: dict[str, float]  # what it is made of
    fits: bool
    dtype: str  # bf16, or fp32 on a GPU without bf16
    step_budget: bool = False  # train.max_steps ends the run before its epochs


def estimate_hours(
    total_tokens: int,
    params_b: float,
    method: str,
    gpu: str | Gpu,
    epochs: float = 1.0,
    *,
    gradient_checkpointing: bool = False,
    bf16: bool = True,
) -> float:
    """Rough training time: every token, trained or masked, goes through forward and backward."""
    card = gpu if isinstance(gpu, Gpu) else find_gpu(gpu)
    if method not in FLOPS_PER_PARAM:
        raise TwinError(f"unknown method {method!r}; choose one of: {', '.join(FLOPS_PER_PARAM)}")
    per_param = FLOPS_PER_PARAM[method] + (2.0 if gradient_checkpointing else 0.0)
    flops = per_param * params_b * 1e9 * total_tokens * epochs
    tflops = card.tflops if bf16 and card.bf16 else card.fp32_tflops
    return flops / (tflops * 1e12 * MFU) / 3600


def estimate_memory(
    size: ModelSize, method: str, settings: TrainConfig, bf16: bool = True
) -> dict[str, float]:
    """Peak GPU memory of one training process, in GiB, by part.

    - weights: full and LoRA keep the model in the compute dtype (2 bytes a parameter in bf16, 4 in
      fp32); QLoRA's NF4 weights with double-quantized constants take 4.127 bits (0.516 bytes) a
      parameter, embeddings and lm_head stay in bf16 (Dettmers et al. 2023, QLoRA, section 3).
    - full: gradients in the weights' dtype, and AdamW's two moments, which torch keeps in the
      parameters' dtype: 2 + 2 + 4 = 8 bytes a parameter in bf16 (16 in fp32, the figure of
      Rajbhandari et al. 2020, ZeRO, section 3.1, for mixed precision).
    - adapters (lora, dora, qlora, qdora): r * (in + out) parameters per adapted linear layer, in
      fp32 with gradients and AdamW moments: 16 bytes each.
    - activations: per layer and token 34 * hidden bytes in 16 bit with a fused attention (Korthikanti
      et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. 2 without the
      attention-score term); with gradient checkpointing only each layer's input (2 * hidden bytes)
      plus one layer recomputed. Twice that in fp32.
    - logits: the loss holds the logits, an fp32 copy and its gradient: (2 + 4 + 4) bytes per token
      and vocabulary entry (none with Liger's fused cross-entropy).
    - 1 GiB for the CUDA context and the allocator's slack.
    Shapes come from the model's config.json; without it, from rules of thumb for Llama-like models.
    """
    params = size.params
    word = 2 if bf16 else 4
    shape = size.shape
    hidden = int(shape.get("hidden_size") or 0)
    layers = int(shape.get("num_hidden_layers") or 0)
    vocab = int(shape.get("vocab_size") or 0)
    inter = int(shape.get("intermediate_size") or 0)
    if not (hidden and layers):
        # Llama-like shapes: ~12 * layers * hidden^2 parameters, about 128 hidden units per layer.
        hidden = max(64, round((params * 128 / 12) ** (1 / 3)))
        layers = max(1, round(hidden / 128))
    vocab = vocab or 32768
    inter = inter or round(hidden * 3.5)
    embeddings = vocab * hidden * (1 if shape.get("tie_word_embeddings") else 2)
    parts: dict[str, float] = {}
    if method in ("qlora", "qdora"):
        quantized = max(0, params - embeddings)
        parts["weights (4-bit)"] = quantized * 0.516 + embeddings * 2
    else:
        parts["weights"] = params * word
    if method == "full":
        parts["gradients"] = params * word
        parts["optimizer (AdamW)"] = params * 2 * word
    else:
        r = settings.lora.r
        heads = int(shape.get("num_attention_heads") or max(1, hidden // 128))
        kv = int(shape.get("num_key_value_heads") or heads)
        head_dim = int(shape.get("head_dim") or hidden // heads)
        # q, k, v, o, gate, up, down: the all-linear default (a list of names adapts fewer: an upper bound).
        per_layer = (hidden + heads * head_dim) * 2 + (hidden + kv * head_dim) * 2 + (hidden + inter) * 3
        parts["adapters + AdamW"] = r * per_layer * layers * 16
    tokens = settings.batch_tokens
    if settings.gradient_checkpointing:
        activations = tokens * hidden * (2 * layers + 34) * word / 2
    else:
        activations = tokens * hidden * 34 * layers * word / 2
    parts["activations"] = activations
    if not settings.liger_kernels:
        parts["logits"] = tokens * vocab * (word + 8)
    parts["CUDA context"] = GIB
    return {k: v / GIB for k, v in parts.items()}


def estimate(
    size: ModelSize,
    train_tokens: int,
    gpu: Gpu,
    settings: TrainConfig,
) -> Estimate:
    """Time and peak memory of the run `settings` describe (method, epochs or max_steps, batch)."""
    bf16 = gpu.bf16 and settings.precision != "fp32"
    tokens = round(train_tokens * settings.epochs)
    budget = settings.max_steps * settings.grad_accum * settings.batch_tokens  # packed rows: about full
    step_budget = 0 < budget < tokens
    tokens = budget if step_budget else tokens
    hours = estimate_hours(
        tokens,
        size.params / 1e9,
        settings.method,
        gpu,
        gradient_checkpointing=settings.gradient_checkpointing,
        bf16=bf16,
    )
    parts = estimate_memory(size, settings.method, settings, bf16)
    total = sum(parts.values())
    fits = total <= gpu.memory_gb
    return Estimate(hours, tokens, total, parts, fits, "bf16" if bf16 else "fp32", step_budget)


def advice(result: Estimate, settings: TrainConfig) -> str:
    """What would make a run that does not fit fit, cheapest first."""
    tips = []
    if not settings.gradient_checkpointing and result.parts_gb.get("activations", 0) > 1:
        tips.append("train.gradient_checkpointing: true")
    if settings.method in ("full", "lora", "dora"):
        tips.append("train.method: qlora")
    if settings.batch_tokens > 1024:
        tips.append("a smaller train.batch_tokens (with a larger grad_accum)")
    tips.append("a GPU with more memory, or several (--gpus N with train.distributed: fsdp)")
    return "try " + "; ".join(tips)
