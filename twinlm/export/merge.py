"""`twinlm merge`: a trained run as a standalone 16-bit Hugging Face model folder, merged shard by shard.

A LoRA / DoRA adapter (QLoRA's too) is folded into the base model's 16-bit weights as they are on disk,
never into a 4-bit copy: for each safetensors shard of the base, only that shard is read (tensor by
tensor), the deltas of its tensors are added in fp32 (B @ A x scaling, as peft's config says: r,
lora_alpha, rsLoRA, rank / alpha patterns, fan_in_fan_out, DoRA's magnitudes, modules_to_save), and the
shard is written in 16 bit, one tensor after another (twinlm.export.merge_io). Peak memory is a few copies
of the largest tensor, not a shard nor the model: a 7B merge fits a 16 GB machine (1.1B measured: 592 MiB
against 2,633 MiB for peft's merge_and_unload, benchmarks/export_merge.py). A full fine-tune's own shards
are re-written in 16 bit the same way.

The folder also holds the tokenizer and chat template the run trained with, and `twinlm-export.json`
(PROVENANCE): the run, step, base, method, dtype, and the persona system prompts chat and the Modelfile
use, filled once here with `twinlm.prepare.persona.persona_prompt` so nothing downstream re-derives them.
The folder is written under a temporary name and renamed at the end: an interrupted merge leaves nothing
under the final name.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from twinlm.errors import TwinError
from twinlm.export.merge_io import FLOAT_CODES, ShardWriter, dtype_name, read_header, read_tensors
from twinlm.export.provenance import PROVENANCE, provenance
from twinlm.export.space import check_free
from twinlm.files import write_atomic

INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Names a user may give for the output dtype; float32 is for parity checks (tests), not for shipping.
DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "f16": "float16",
    "float16": "float16",
    "fp32": "float32",
    "f32": "float32",
    "float32": "float32",
}
# peft options whose effect is not a weight delta: merging would silently change the model.
_UNMERGEABLE = (
    "trainable_token_indices",
    "target_parameters",
    "layer_replication",
    "use_qalora",
    "alora_invocation_tokens",
    "arrow_config",
    "use_bdlora",
    "lora_bias",  # a bias on lora_B: twinlm never trains one
)
_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector(?:\.weight)?)$"
)

Progress = Callable[[int, int], None]


@dataclass(slots=True)
class _Lora:
    """One base weight's adapter: the delta is B @ A x scaling (transposed for embeddings)."""

    module: str
    a: Any = None
    b: Any = None
    magnitude: Any = None  # DoRA
    embedding: bool = False
    scaling: float = 1.0
    used: bool = False


@dataclass(slots=True)
class _Adapter:
    loras: dict[str, _Lora]  # base tensor name ("model.layers.0.self_attn.q_proj.weight") -> its LoRA
    replaced: dict[str, Any]  # base tensor name -> the adapter's own tensor (modules_to_save, biases)
    fan_in_fan_out: bool
    config: dict[str, Any]


def merge_run(
    run_dir: Path,
    out_dir: Path,
    *,
    checkpoint: str | None = None,
    dtype: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Merge run `run_dir` (<workspace>/runs/<name>) into the model folder `out_dir` and return it.

    `checkpoint`: "step-N" (a checkpoint of the run) or None for its final weights. `dtype`: bf16 / fp16
    (fp32 for parity checks); default: the base's own 16-bit dtype, else bf16. `progress(done, total)`:
    bytes of source weights merged so far, called after each tensor. An existing `out_dir` is replaced
    only if it is an earlier merge (it holds PROVENANCE) or empty.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    record = _read_json(run_dir / "config.json", f"{run_dir}: no such run (no config.json there)")
    weights, step = _weights_dir(run_dir, checkpoint)
    method = str(record.get("config", {}).get("train", {}).get("method", "lora"))
    if (weights / ADAPTER_CONFIG).is_file():
        adapter_config = _read_json(weights / ADAPTER_CONFIG, f"{weights / ADAPTER_CONFIG}: unreadable")
        source = _base_folder(run_dir, record, adapter_config)
        adapter: _Adapter | None = _load_adapter(weights, adapter_config)
    elif (weights / "config.json").is_file():
        source, adapter = weights, None  # a full fine-tune: the weights are the model
    else:
        raise TwinError(f"{weights}: neither an adapter ({ADAPTER_CONFIG}) nor a model (config.json) here")
    model_config = _read_json(source / "config.json", f"{source}: no config.json; not a model folder")
    if model_config.get("quantization_config"):
        raise TwinError(
            f"{source / 'config.json'}: the base model is stored quantized; merging needs its 16-bit "
            "weights (never into a 4-bit base): use the unquantized model as build.model"
        )
    out_dtype = _out_dtype(dtype, model_config, run_dir, record, method)
    shards = _shards(source)
    if adapter is not None:
        _check_targets(adapter, shards, model_config, source)
    _check_out_dir(out_dir)
    check_free(out_dir.parent, _output_size(shards, adapter, out_dtype), f"the merged model {out_dir.name}/")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        written = _write_shards(shards, adapter, out_dtype, tmp, progress)
        if len(written) > 1:
            size = sum(data for _, data in written.values())  # tensor bytes, as transformers counts
            index = {"metadata": {"total_size": size}, "weight_map": _weight_map(written)}
            write_atomic(tmp / INDEX, orjson.dumps(index, option=orjson.OPT_INDENT_2).decode() + "\n")
        _write_config(model_config, out_dtype, tmp)
        if (source / "generation_config.json").is_file():
            shutil.copy(source / "generation_config.json", tmp / "generation_config.json")
        _copy_tokenizer(run_dir, tmp)
        origin = provenance(run_dir, record, step, source, method, out_dtype)
        write_atomic(tmp / PROVENANCE, orjson.dumps(origin, option=orjson.OPT_INDENT_2).decode() + "\n")
        _publish(tmp, out_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        # A full disk, a read-only folder: one line, and nothing left behind.
        raise TwinError(f"{out_dir}: cannot write the merged model ({err.strerror or err})") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# --- what to merge ---------------------------------------------------------------------------------


def _read_json(path: Path, missing: str) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise TwinError(missing) from None
    except (OSError, orjson.JSONDecodeError) as err:
        raise TwinError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise TwinError(f"{path}: not a JSON object")
    return data


def _weights_dir(run_dir: Path, checkpoint: str | None) -> tuple[Path, int | str]:
    """The folder of the weights to merge and its step ("final" for the run's final weights)."""
    from twinlm.train.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    have = ", ".join(f"step-{n}" for n, _ in found) or "none"
    if checkpoint is None:
        final = run_dir / "final"
        if not final.is_dir():
            raise TwinError(
                f"{final}: the run has no final weights (not finished?); resume it with `twinlm train "
                f"--resume`, or merge a checkpoint with --checkpoint step-N (checkpoints: {have})"
            )
        return final, "final"
    match = re.fullmatch(r"step-0*(\d+)", checkpoint.strip())
    if match is None:
        raise TwinError(f"--checkpoint {checkpoint!r}: expected step-N, e.g. step-100 (checkpoints: {have})")
    step = int(match.group(1))
    folder = dict(found).get(step)
    if folder is None:
        raise TwinError(f"--checkpoint {checkpoint}: run {run_dir.name} has no such checkpoint ({have})")
    state = _read_json(folder / "state.json", f"{folder}: no state.json")
    if state.get("weights") not in ("peft", "transformers"):
        raise TwinError(
            f"{folder}: holds {state.get('weights')} weights (FSDP / DeepSpeed shards or a bare module), "
            "which merge cannot read; merge the run's final weights instead"
        )
    return folder, step


def _base_folder(run_dir: Path, record: dict[str, Any], adapter_config: dict[str, Any]) -> Path:
    """The base model's folder on disk, as training loaded it; a hub id is looked up, never downloaded."""
    trained = adapter_config.get("base_model_name_or_path")
    if trained and (Path(trained) / "config.json").is_file():
        return Path(trained)  # the exact folder training loaded
    name = str(record.get("model") or trained or "")
    if not name:
        raise TwinError(f"{run_dir / 'config.json'}: the run names no base model")
    from twinlm.models import presets
    from twinlm.models.tiny import NAME as TINY
    from twinlm.privacy import MODEL_FILES, is_hub_id

    workspace = run_dir.parent.parent
    if name == TINY:
        folder = workspace / "models" / TINY
    else:
        resolved = presets.resolve(name)
        if is_hub_id(resolved) and not (workspace / resolved).is_dir():
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import LocalEntryNotFoundError

            try:
                folder = Path(snapshot_download(resolved, allow_patterns=MODEL_FILES, local_files_only=True))
            except (LocalEntryNotFoundError, OSError, ValueError):
                folder = Path("/nonexistent")
            if not any(folder.glob("*.safetensors")):
                raise TwinError(
                    f"{resolved}: the base model of run {run_dir.name} is not on this machine, and merge "
                    f"downloads nothing; fetch it again (e.g. `hf download {resolved}`) and re-run"
                )
        else:
            # A relative folder: as build read it (from the current folder), else inside the workspace.
            folder = Path(resolved) if Path(resolved).is_dir() else workspace / resolved
    if not (folder / "config.json").is_file():
        raise TwinError(
            f"{folder}: the base model of run {run_dir.name} is missing (no config.json there); put it "
            "back where training read it, then merge again"
        )
    return folder


@dataclass(frozen=True, slots=True)
class _Shard:
    file: Path
    names: list[str]  # its tensors, in the order of their data in the file (sequential reads)
    header: dict[str, dict[str, Any]]  # name -> dtype, shape, data_offsets


def _shards(folder: Path) -> list[_Shard]:
    """The model's safetensors files, as transformers reads them (the index, else model.safetensors)."""
    index = folder / INDEX
    if index.is_file():
        weight_map = _read_json(index, f"{index}: missing").get("weight_map", {})
        files = [folder / file for file in sorted(set(weight_map.values()))]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        raise TwinError(f"{folder}: no model weights (model.safetensors or {INDEX})")
    shards = []
    for file in files:
        try:
            header = read_header(file)
        except OSError as err:
            raise TwinError(f"{file}: unreadable ({err.strerror or err})") from None
        names = sorted(header, key=lambda name: header[name]["data_offsets"][0])
        shards.append(_Shard(file, names, header))
    return shards


def _out_dtype(
    dtype: str | None, model_config: dict[str, Any], run_dir: Path, record: dict[str, Any], method: str
) -> str:
    if dtype is not None:
        if dtype.lower() not in DTYPES:
            raise TwinError(f"--dtype {dtype}: expected bf16 or fp16 (or fp32 for a parity check)")
        return DTYPES[dtype.lower()]
    declared = model_config.get("dtype") or model_config.get("torch_dtype")
    # A full fine-tune on a CPU saves fp32: its base's own 16-bit dtype is the one to go back to.
    if declared not in ("bfloat16", "float16") and method == "full":
        try:
            base = _base_folder(run_dir, record, {})
            declared = _read_json(base / "config.json", "").get("dtype") or declared
        except TwinError:
            pass
    return declared if declared in ("bfloat16", "float16") else "bfloat16"


def _load_adapter(folder: Path, config: dict[str, Any]) -> _Adapter:
    """The adapter's tensors grouped per base weight, with each one's scaling from peft's config."""
    from safetensors.torch import load_file

    where, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if config.get("peft_type", "LORA") != "LORA":
        raise TwinError(f"{where}: a {config.get('peft_type')} adapter; merge folds in LoRA / DoRA only")
    for option in _UNMERGEABLE:
        if config.get(option):
            raise TwinError(
                f"{where}: peft option {option} is set, which is not a weight delta this merge can fold in; "
                "train without it or merge with peft's merge_and_unload"
            )
    try:
        tensors = load_file(str(weights))
    except (OSError, Exception) as err:
        raise TwinError(f"{weights}: unreadable adapter ({str(err).splitlines()[0]})") from None
    loras: dict[str, _Lora] = {}
    replaced: dict[str, Any] = {}
    for key, tensor in tensors.items():
        if not key.startswith(_PREFIX):
            raise TwinError(f"{weights}: unexpected tensor {key} (not a peft causal-LM adapter)")
        name = key[len(_PREFIX) :]
        match = _LORA_KEY.fullmatch(name)
        if match is None:
            if ".lora_" in name:
                raise TwinError(f"{weights}: {key}: a kind of LoRA layer merge does not support")
            # modules_to_save and trained biases are saved whole; a target's base_layer copy (peft saves the
            # embeddings it adapts) replaces the base tensor it stands for.
            replaced[name.replace(".base_layer.", ".").replace(".modules_to_save.", ".")] = tensor
            continue
        module, part = match["module"], match["part"]
        lora = loras.setdefault(f"{module}.weight", _Lora(module))
        if part in ("lora_A.weight", "lora_embedding_A"):
            lora.a, lora.embedding = tensor, part == "lora_embedding_A"
        elif part in ("lora_B.weight", "lora_embedding_B"):
            lora.b = tensor
        else:
            lora.magnitude = tensor
    for lora in loras.values():
        if lora.a is None or lora.b is None or lora.a.dim() != 2:
            raise TwinError(f"{weights}: {lora.module}: incomplete or non-linear LoRA weights")
        lora.scaling = _scaling(lora, config, where)
        if lora.magnitude is not None and lora.embedding:
            raise TwinError(f"{where}: DoRA on the embedding {lora.module}; not supported")
    return _Adapter(loras, replaced, bool(config.get("fan_in_fan_out")), config)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rank_pattern / alpha_pattern rule (peft.utils.other.get_pattern_key)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def _scaling(lora: _Lora, config: dict[str, Any], where: Path) -> float:
    r = int(lora.a.shape[0])
    expected = _pattern_value(config.get("rank_pattern") or {}, lora.module, config.get("r", r))
    if int(expected) != r:
        raise TwinError(f"{where}: {lora.module} has rank {r} in the weights but {expected} in the config")
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, lora.module, config.get("lora_alpha", r)))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _check_targets(
    adapter: _Adapter, shards: list[_Shard], model_config: dict[str, Any], source: Path
) -> None:
    """Every adapter tensor must land on a base tensor: a name that matches nothing would be lost."""
    have = {name for shard in shards for name in shard.names}
    wanted = set(adapter.loras) | set(adapter.replaced)
    missing = sorted(wanted - have)
    if missing:
        raise TwinError(
            f"{source}: the adapter changes {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + ", which the base model's weights do not have: was it trained on another base?"
        )
    tied = model_config.get("tie_word_embeddings") and any(
        name.endswith(("embed_tokens.weight", "lm_head.weight")) for name in wanted
    )
    if tied:
        raise TwinError(
            f"{source / 'config.json'}: the adapter changes tied input/output embeddings; merge cannot "
            "untie them: leave embed_tokens and lm_head out of train.lora.target_modules"
        )


def _check_out_dir(out_dir: Path) -> None:
    earlier = (out_dir / PROVENANCE).is_file()
    if out_dir.exists() and not earlier and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TwinError(f"{out_dir}: exists and holds no earlier merge ({PROVENANCE}); choose another --out")


# --- merging ---------------------------------------------------------------------------------------


def _write_shards(
    shards: list[_Shard], adapter: _Adapter | None, out_dtype: str, tmp: Path, progress: Progress | None
) -> dict[str, tuple[list[str], int]]:
    """Each base shard merged into one output shard, a tensor at a time: {file name: (its tensors, their
    bytes)}."""
    import torch

    total = sum(shard.file.stat().st_size for shard in shards)
    done = 0
    written: dict[str, tuple[list[str], int]] = {}
    for k, shard in enumerate(shards, start=1):
        out_name = (
            "model.safetensors" if len(shards) == 1 else f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        )
        writer = ShardWriter(
            tmp / out_name, [_layout(shard, name, adapter, out_dtype) for name in shard.names]
        )
        try:
            for name, tensor in read_tensors(shard.file, shard.names):
                done += tensor.numel() * tensor.element_size()
                if tensor.is_floating_point():
                    tensor = _merged(name, tensor, adapter).to(getattr(torch, out_dtype))
                writer.add(name, tensor)
                del tensor  # one tensor in memory at a time
                if progress is not None:
                    progress(min(done, total), total)
        except BaseException:
            writer.close(complete=False)
            raise
        writer.close()
        written[out_name] = (shard.names, writer.size)
    if progress is not None:
        progress(total, total)
    if adapter is not None:
        unused = sorted(lora.module for lora in adapter.loras.values() if not lora.used)
        if unused:  # _check_targets makes this unreachable; a guard against a silent partial merge
            raise TwinError(f"adapter weights of {unused[0]} were not merged")
    return written


def _output_size(shards: list[_Shard], adapter: _Adapter | None, out_dtype: str) -> int:
    """The bytes of tensor data the merged shards will hold (as `_layout` writes each tensor)."""
    import torch

    total = 0
    for shard in shards:
        for name in shard.names:
            _, dtype, shape = _layout(shard, name, adapter, out_dtype)
            total += math.prod(shape) * getattr(torch, dtype).itemsize
    return total


def _layout(shard: _Shard, name: str, adapter: _Adapter | None, out_dtype: str) -> tuple[str, str, list[int]]:
    """(name, dtype, shape) of a tensor as it will be written: floats in out_dtype; a tensor the adapter
    saved whole (modules_to_save) in its own shape."""
    info = shard.header[name]
    replaced = adapter.replaced.get(name) if adapter is not None else None
    shape = list(replaced.shape) if replaced is not None else info["shape"]
    return name, out_dtype if info["dtype"] in FLOAT_CODES else dtype_name(info["dtype"]), shape


def _merged(name: str, weight: Any, adapter: _Adapter | None) -> Any:
    """One base tensor with its adapter folded in, in fp32 (then cast by the caller)."""
    import torch

    if adapter is None:
        return weight
    # A saved copy (modules_to_save, a trained bias, the embedding a LoRA adapts) replaces the base's.
    weight = adapter.replaced.get(name, weight)
    lora = adapter.loras.get(name)
    if lora is None:
        return weight
    lora.used = True
    w = weight.float()
    delta = (lora.b.float() @ lora.a.float()) * lora.scaling
    if lora.embedding:
        delta = delta.T  # peft's Embedding: lora_embedding_A is (r, vocab), B (dim, r)
    elif adapter.fan_in_fan_out:
        delta = delta.T  # a Conv1D-style weight stored (in, out)
    if delta.shape != w.shape:
        raise TwinError(f"{lora.module}: adapter delta {tuple(delta.shape)} does not fit {tuple(w.shape)}")
    if lora.magnitude is None:
        return w + delta
    # DoRA: the magnitude over the norm of each output row of the adapted weight (peft's merge).
    rows = (w + delta).T if adapter.fan_in_fan_out else w + delta
    factor = lora.magnitude.float().reshape(-1) / torch.linalg.norm(rows, dim=1)
    return (rows * factor.view(-1, 1)).T if adapter.fan_in_fan_out else rows * factor.view(-1, 1)


def _weight_map(written: dict[str, tuple[list[str], int]]) -> dict[str, str]:
    return dict(sorted((name, file) for file, (names, _) in written.items() for name in names))


def _write_config(model_config: dict[str, Any], out_dtype: str, folder: Path) -> None:
    config = dict(model_config)
    config["dtype"] = out_dtype
    if "torch_dtype" in config:
        config["torch_dtype"] = out_dtype
    write_atomic(folder / "config.json", orjson.dumps(config, option=orjson.OPT_INDENT_2).decode() + "\n")


def _copy_tokenizer(run_dir: Path, folder: Path) -> None:
    """The tokenizer and chat template the run trained with (its own copy, made when it started)."""
    tokenizer = run_dir / "tokenizer"
    if not tokenizer.is_dir():
        raise TwinError(f"{tokenizer}: missing; the run's tokenizer and chat template are needed to export")
    for item in tokenizer.iterdir():
        if item.is_file() and not item.name.startswith("."):
            shutil.copy(item, folder / item.name)


def _publish(tmp: Path, out_dir: Path) -> None:
    """tmp becomes out_dir in one rename (an earlier merge there is moved aside first, then deleted)."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)  # the earlier merge stays where it was
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
