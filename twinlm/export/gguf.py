"""An HF model folder (safetensors) to GGUF, streamed one tensor at a time, for the preset architectures.

`convert_to_gguf` writes f32, f16, bf16 and q8_0 in Python with the `gguf` package; `quantize_gguf`
makes the k-quants (q4_k_m, q5_k_m, q6_k) from such a file with llama.cpp's own quantizer through
llama-cpp-python. What llama.cpp expects of each architecture follows its convert_hf_to_gguf.py:
Llama and Mistral q/k projections permuted to llama.cpp's RoPE layout (Qwen2 and Gemma 2 are not),
Gemma 2's norm weights stored as 1 + w, 1-D tensors and norms kept in f32, a tied output left out
(llama.cpp reuses the embeddings). The tokenizer metadata comes from `gguf_vocab`.

Memory stays near the largest tensor: each is read from its safetensors file on its own (no whole
model in memory), converted in row blocks by a thread that runs ahead of the writer, and written before
the next is read. Float casts go through torch where it is installed (the same bytes as numpy's
round-to-nearest-even, about twice as fast). Outputs appear whole or not at all: a temporary file
beside the target is renamed when complete.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import math
import os
import queue
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from twinlm.errors import TwinError
from twinlm.export.gguf_vocab import CONVERTER_HINT, read_vocab
from twinlm.export.space import check_free

Q = gguf.GGMLQuantizationType
ARCH = gguf.MODEL_ARCH

# HF architecture (config.json "architectures") -> llama.cpp architecture.
SUPPORTED_ARCHITECTURES: dict[str, gguf.MODEL_ARCH] = {
    "MistralForCausalLM": ARCH.LLAMA,
    "LlamaForCausalLM": ARCH.LLAMA,
    "Qwen2ForCausalLM": ARCH.QWEN2,
    "Gemma2ForCausalLM": ARCH.GEMMA2,
}
# Types written here (tensor type, file type) and the k-quants made by llama.cpp (its llama_ftype).
PYTHON_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
K_QUANTS: dict[str, int] = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
# Bytes per weight of a k-quant file (llama.cpp's mixes, measured on the 1.1B benchmark model, rounded
# up): the space a quantization needs, checked before llama.cpp starts.
K_QUANT_BYTES_PER_WEIGHT = {"q4_k_m": 0.61, "q5_k_m": 0.71, "q6_k": 0.82}
QTYPES = (*PYTHON_TYPES, *K_QUANTS)
DEFAULT_EXPORT_QTYPE = "q4_k_m"

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_BLOCK_ELEMENTS = 1 << 24  # rows converted at a time: ~64 MiB of f32, whatever the tensor's size


@dataclass(frozen=True)
class _Source:
    """One tensor in a safetensors file: where its bytes are, without reading them."""

    name: str
    path: Path
    dtype: str  # safetensors dtype: F32, F16, BF16
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass
class _Planned:
    """One GGUF tensor: its name, type and shape, and how to produce its data."""

    name: str
    qtype: gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    source: _Source | None
    transform: str | None = None  # "permute_q", "permute_k", "plus_one"
    data: np.ndarray | None = None  # a tensor computed here (llama 3's rope_freqs)

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * size


def convert_to_gguf(
    model_dir: Path,
    out_path: Path,
    *,
    qtype: str = "f16",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Convert the HF folder `model_dir` to the GGUF `out_path` (f32, f16, bf16 or q8_0); return `out_path`.

    `progress(done, total)` is called after each tensor with the bytes of tensor data written so far."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if qtype not in PYTHON_TYPES:
        hint = f"; {qtype} is made from an f16 GGUF by quantize_gguf" if qtype in K_QUANTS else ""
        raise TwinError(f"GGUF type {qtype!r} is not one of {', '.join(PYTHON_TYPES)}{hint}")
    config = _load_config(model_dir)
    arch = _architecture(model_dir, config)
    tensor_type, file_type = PYTHON_TYPES[qtype]
    sources = _index(model_dir)
    plan = _plan(model_dir, config, arch, sources, tensor_type)
    vocab = read_vocab(model_dir, n_vocab=_embedding_rows(plan))
    total = sum(p.nbytes for p in plan)
    check_free(out_path.parent, total, out_path.name)

    with _atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(model_dir.name)
        _hyperparameters(writer, model_dir, config, arch)
        writer.add_file_type(file_type)
        if tensor_type not in (Q.F32, Q.F16, Q.BF16):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab.add_to(writer)
        for p in plan:
            # add_tensor_info takes the element shape when the dtype is not uint8.
            writer.add_tensor_info(p.name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        out = writer.fout[0]
        done = 0
        with contextlib.closing(writer), contextlib.closing(_converted(plan, config)) as tensors:
            for p, blocks in zip(plan, tensors, strict=True):
                _pad(out, writer.data_alignment)
                for block in blocks:
                    out.write(memoryview(block).cast("B"))
                done += p.nbytes
                if progress is not None:
                    progress(done, total)
            _pad(out, writer.data_alignment)
    return out_path


def quantize_gguf(src: Path, out_path: Path, qtype: str) -> Path:
    """Quantize the f32/f16/bf16 GGUF `src` to a k-quant (q4_k_m, q5_k_m, q6_k) with llama.cpp.

    Returns `out_path`. Rows must be a multiple of 256 for the k-quant types; others fall back."""
    src, out_path = Path(src), Path(out_path)
    if qtype not in K_QUANTS:
        hint = "; use convert_to_gguf for it" if qtype in PYTHON_TYPES else ""
        raise TwinError(f"GGUF quantization {qtype!r} is not one of {', '.join(K_QUANTS)}{hint}")
    if not src.is_file():
        raise TwinError(f"{src}: no such GGUF file; convert the model first (twinlm gguf)")
    file_type, weights = _file_type(src)
    float_types = (gguf.LlamaFileType.ALL_F32, gguf.LlamaFileType.MOSTLY_F16, gguf.LlamaFileType.MOSTLY_BF16)
    if file_type not in float_types:
        raise TwinError(f"{src}: k-quants are made from an f32, f16 or bf16 GGUF, not {file_type}")
    check_free(out_path.parent, int(weights * K_QUANT_BYTES_PER_WEIGHT[qtype]), out_path.name)
    try:
        import llama_cpp
    except ImportError:
        raise TwinError(
            f"{qtype} needs llama-cpp-python (pip install llama-cpp-python); f16 and q8_0 do not"
        ) from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = K_QUANTS[qtype]
    params.nthread = os.cpu_count() or 1
    # llama.cpp logs every tensor it quantizes through this logger: keep only its errors.
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with _atomic_path(out_path) as tmp:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
            if rc != 0:
                _check_space(out_path)
                raise TwinError(f"{src}: llama.cpp could not quantize it to {qtype} (return code {rc})")
    finally:
        log.setLevel(level)
    return out_path


# --- reading safetensors ------------------------------------------------------------------------


def _index(model_dir: Path) -> list[_Source]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = sorted({model_dir / name for name in weight_map.values()})
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        bins = list(model_dir.glob("*.bin")) + list(model_dir.glob("*.pt"))
        what = "only PyTorch pickles, which twinlm never loads" if bins else "no model weights"
        raise TwinError(f"{model_dir}: {what}; save the model as safetensors (twinlm merge does)")
    sources: list[_Source] = []
    for path in files:
        try:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
        except (OSError, struct.error, ValueError) as err:
            raise TwinError(f"{path}: not a readable safetensors file ({err})") from None
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise TwinError(f"{path}: tensor {name} is {info['dtype']}; only F32, F16 and BF16 convert")
            begin, end = info["data_offsets"]
            offset = 8 + length + begin
            sources.append(_Source(name, path, info["dtype"], tuple(info["shape"]), offset, end - begin))
    return sorted(sources, key=lambda s: (s.path, s.offset))


def _read(source: _Source, readers: dict[Path, Any]) -> np.ndarray:
    f = readers.get(source.path)
    if f is None:
        f = readers[source.path] = source.path.open("rb", buffering=0)
    data = np.empty(source.shape, dtype=_SAFETENSORS_DTYPES[source.dtype])
    f.seek(source.offset)
    view = memoryview(data).cast("B")
    got = f.readinto(view)
    if got != source.nbytes:
        raise TwinError(f"{source.path}: truncated at tensor {source.name}")
    return data


def _as_f32(data: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32, copy=False)


def _cast(raw: np.ndarray, dtype: str, qtype: Q) -> np.ndarray:
    """Source values (F32, F16, or BF16 as uint16) to f32, f16 or bf16 bytes, rounding to nearest even."""
    try:
        import torch
    except ImportError:  # numpy alone: the same bytes, about half as fast
        f32 = _as_f32(raw, dtype)
        return f32 if qtype == Q.F32 else gguf.quants.quantize(f32, qtype)
    t = (
        torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
        if dtype == "BF16"
        else torch.from_numpy(raw)
    )
    if qtype == Q.BF16:
        return t.to(torch.bfloat16).view(torch.int16).numpy()
    return t.to(torch.float32 if qtype == Q.F32 else torch.float16).numpy()


# --- planning -----------------------------------------------------------------------------------


def _plan(
    model_dir: Path, config: dict[str, Any], arch: gguf.MODEL_ARCH, sources: list[_Source], qtype: Q
) -> list[_Planned]:
    n_layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(arch, n_layers)
    default_tied = arch == ARCH.GEMMA2
    tied = bool(config.get("tie_word_embeddings", default_tied)) or arch == ARCH.GEMMA2
    plan: list[_Planned] = []
    for source in sources:
        hf_name = source.name
        if hf_name.endswith(".rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TwinError(
                f"{source.path}: tensor {hf_name} is not part of a plain {config['architectures'][0]}; "
                f"{CONVERTER_HINT}"
            )
        transform = None
        if arch == ARCH.LLAMA and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            transform = "permute_q"
        elif arch == ARCH.LLAMA and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            transform = "permute_k"
        elif arch == ARCH.GEMMA2 and hf_name.endswith("norm.weight"):
            transform = "plus_one"
        plan.append(_Planned(name, _tensor_type(name, source.shape, qtype), source.shape, source, transform))
    if extra := _llama3_rope_freqs(config, arch):
        plan.insert(0, extra)
    return plan


def _tensor_type(name: str, shape: tuple[int, ...], qtype: Q) -> Q:
    # As llama.cpp's converter: 1-D tensors, norms and biases stay f32 (its kernels expect them so).
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return Q.F32
    if qtype in (Q.F32, Q.F16, Q.BF16):
        return qtype
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else Q.F16  # rows that do not split into blocks


def _embedding_rows(plan: list[_Planned]) -> int:
    embd = next(p for p in plan if p.name == "token_embd.weight")
    return embd.shape[0]


def _llama3_rope_freqs(config: dict[str, Any], arch: gguf.MODEL_ARCH) -> _Planned | None:
    rope = _rope(config)
    if arch != ARCH.LLAMA or str(rope.get("rope_type", "")).lower() != "llama3":
        return None
    # Llama 3.1's frequency scaling, as a per-dimension factor tensor (llama.cpp's converter, numpy).
    base = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    dim = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old = float(rope.get("original_max_position_embeddings", 8192))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    data = np.asarray(factors, dtype=np.float32)
    return _Planned("rope_freqs.weight", Q.F32, data.shape, None, data=data)


# --- writing ------------------------------------------------------------------------------------


def _converted(plan: list[_Planned], config: dict[str, Any]) -> Iterator[Iterator[np.ndarray]]:
    """Each planned tensor's data as row blocks, read and converted by a thread ahead of the writer.

    Reading and converting the next blocks overlaps writing the last ones; a bounded queue keeps
    memory near one tensor plus a few blocks. An error in the thread is raised here."""
    blocks: queue.Queue[Any] = queue.Queue(maxsize=4)
    stop = threading.Event()

    def produce() -> None:
        readers: dict[Path, Any] = {}
        try:
            for p in plan:
                for block in _tensor_blocks(p, readers, config):
                    if stop.is_set():
                        return
                    blocks.put(block)
                blocks.put(_END)
        except BaseException as err:  # handed to the writer, which raises it
            blocks.put(err)
        finally:
            for f in readers.values():
                f.close()

    def tensor() -> Iterator[np.ndarray]:
        while (item := blocks.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    thread = threading.Thread(target=produce, name="gguf-convert", daemon=True)
    thread.start()
    try:
        for _ in plan:
            yield tensor()
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                blocks.get(timeout=0.05)


_END = object()


def _tensor_blocks(p: _Planned, readers: dict[Path, Any], config: dict[str, Any]) -> Iterator[np.ndarray]:
    """The bytes of one GGUF tensor, in row blocks (a whole tensor is never converted at once)."""
    if p.data is not None:
        yield p.data
        return
    assert p.source is not None
    data = _read(p.source, readers)
    if p.transform in ("permute_q", "permute_k"):
        heads = int(config["num_attention_heads"])
        if p.transform == "permute_k":
            heads = int(config.get("num_key_value_heads") or heads)
        data = _permute(data, heads)
    same = (p.source.dtype, p.qtype) in (("F32", Q.F32), ("F16", Q.F16), ("BF16", Q.BF16))
    if same and p.transform != "plus_one":
        yield data  # already in the target type: the bytes as they are
        return
    rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
    step = max(1, _BLOCK_ELEMENTS // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step]
        if p.transform == "plus_one":
            # Gemma's RMSNorm scales by (1 + w), llama.cpp's by w: add 1 in f32, as HF computes it.
            yield gguf.quants.quantize(_as_f32(block, p.source.dtype) + np.float32(1.0), p.qtype)
        elif p.qtype in (Q.F32, Q.F16, Q.BF16):
            yield _cast(block, p.source.dtype, p.qtype)
        else:
            yield gguf.quants.quantize(_as_f32(block, p.source.dtype), p.qtype)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # HF stores each head's rotary halves one after the other; llama.cpp's RoPE wants them interleaved.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _pad(out: Any, alignment: int) -> None:
    pad = -out.tell() % alignment
    if pad:
        out.write(b"\0" * pad)


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` that becomes `path` only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise TwinError(f"{path}: the disk is full; free space there or write elsewhere") from None
        raise TwinError(f"{path}: cannot write it ({err.strerror or err})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_space(path: Path) -> None:
    try:
        free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
    except OSError:
        return
    if free < 64 << 20:
        raise TwinError(f"{path}: the disk is full; free space there or write elsewhere")


# --- configuration ------------------------------------------------------------------------------


def _load_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise TwinError(f"{model_dir}: no config.json; not a Hugging Face model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TwinError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(config, dict):
        raise TwinError(f"{path}: not a model configuration")
    return config


def _architecture(model_dir: Path, config: dict[str, Any]) -> gguf.MODEL_ARCH:
    names = config.get("architectures") or []
    name = names[0] if names else config.get("model_type", "unknown")
    if name not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise TwinError(
            f"{model_dir / 'config.json'}: architecture {name} is not one twinlm converts ({supported}); "
            f"{CONVERTER_HINT}"
        )
    return SUPPORTED_ARCHITECTURES[name]


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    # transformers 5 writes rope_parameters (theta inside), older versions rope_theta + rope_scaling.
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope = dict(rope.get("full_attention", rope))
    if "rope_type" not in rope and "type" in rope:
        rope["rope_type"] = rope["type"]
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return rope


def _hyperparameters(
    writer: gguf.GGUFWriter, model_dir: Path, c: dict[str, Any], arch: gguf.MODEL_ARCH
) -> None:
    where = model_dir / "config.json"
    heads = int(c["num_attention_heads"])
    head_dim = int(c.get("head_dim") or c["hidden_size"] // heads)
    writer.add_context_length(int(c["max_position_embeddings"]))
    writer.add_embedding_length(int(c["hidden_size"]))
    writer.add_block_count(int(c["num_hidden_layers"]))
    writer.add_feed_forward_length(int(c["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(c.get("num_key_value_heads") or heads))
    writer.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
    if c.get("head_dim") is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = _rope(c)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    rope_type = str(rope.get("rope_type") or "default").lower()
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif rope_type not in ("default", "llama3"):
        raise TwinError(f"{where}: RoPE scaling {rope_type!r} is not converted here; {CONVERTER_HINT}")
    if arch == ARCH.LLAMA:
        writer.add_vocab_size(int(c["vocab_size"]))
        writer.add_rope_dimension_count(head_dim)
    elif arch == ARCH.QWEN2 and c.get("use_sliding_window"):
        raise TwinError(f"{where}: use_sliding_window is not in llama.cpp's qwen2; {CONVERTER_HINT}")
    elif arch == ARCH.GEMMA2:
        if c.get("head_dim") is None:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if c.get(key) is None:  # llama.cpp's gemma2 always soft-caps
                raise TwinError(f"{where}: {key} is not set; llama.cpp's gemma2 always applies it")
        writer.add_attn_logit_softcapping(float(c["attn_logit_softcapping"]))
        writer.add_final_logit_softcapping(float(c["final_logit_softcapping"]))
        writer.add_sliding_window(int(c["sliding_window"]))
        # llama.cpp scales queries by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the 46-layer 27B.
        scale = c.get("query_pre_attn_scalar", head_dim)
        llama_scale = c["hidden_size"] // heads if c["num_hidden_layers"] == 46 else head_dim
        if int(scale) != int(llama_scale):
            raise TwinError(
                f"{where}: query_pre_attn_scalar {scale} is not what llama.cpp uses for this model size "
                f"({llama_scale}); the GGUF would not behave like the model"
            )


def _file_type(path: Path) -> tuple[int | None, int]:
    """A GGUF's general.file_type and its number of weights."""
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as err:
        raise TwinError(f"{path}: not a readable GGUF file ({err})") from None
    field = reader.get_field(gguf.Keys.General.FILE_TYPE)
    weights = sum(int(t.n_elements) for t in reader.tensors)
    return (int(field.contents()) if field is not None else None), weights
