"""An HF model folder (safetensors) to GGUF, streamed one tensor at a time, for the preset architectures.

`convert_to_gguf` writes f32, f16, bf16 and q8_0 in Python with the `gguf` package; `quantize_gguf`
makes the k-quants (q4_k_m, q5_k_m, q6_k) from such a file with llama.cpp's own quantizer through
llama-cpp-python. What llama.cpp expects of each architecture follows its convert_hf_to_gguf.py:
Llama and Mistral q/k projections permuted to llama.cpp's RoPE layout (Qwen2 and Gemma 2 are not),
Gemma 2's norm weights stored as 1 + w, 1-D tensors and norms kept in f32, a tied output left out
(llama.cpp reuses the embeddings). The tokenizer metadata comes from `gguf_vocab`.

Memory stays near a few blocks (and the largest q/k projection): the tensor data is read from the
safetensors files block by block, converted by a thread that runs ahead of the writer, and written
(twinlm.export.gguf_tensors, which says where the time goes). The vocabulary is read from the
tokenizer files without transformers where they decide it; elsewhere that reading is a guess written
at once while transformers' exact reading runs beside the conversion, and a wrong guess means the
metadata, or the file, is written again (twinlm.export.gguf_vocab_fast). Long metadata arrays are
packed in one go (`_Writer`). The output is checked against the free space first, and appears whole
or not at all: a temporary file beside the target is renamed when complete.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twinlm.errors import TwinError
from twinlm.export.gguf_import import gguf
from twinlm.export.gguf_tensors import Planned, Source, converted, index_safetensors
from twinlm.export.gguf_vocab import CONVERTER_HINT, Vocab
from twinlm.export.gguf_vocab_fast import VocabInBackground
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
    sources = index_safetensors(model_dir)
    plan = _plan(model_dir, config, arch, sources, tensor_type)
    total = sum(p.nbytes for p in plan)
    check_free(out_path.parent, total, out_path.name)

    model = _Model(model_dir, config, arch, file_type, tensor_type, plan)
    vocabs = VocabInBackground(model_dir, _embedding_rows(plan))
    with _atomic_path(out_path) as tmp:
        offset = _write(tmp, model, vocabs.guess, progress)
        exact = vocabs.exact()
        # A tokenizer transformers completes or rebuilds: its vocabulary. Usually a flag, an id or a
        # pre-tokenizer name differs and the metadata takes the same room: rewritten in place.
        if exact != vocabs.guess and not _rewrite_metadata(tmp, model, exact, offset):
            _write(tmp, model, exact, progress)
    return out_path


@dataclass(frozen=True)
class _Model:
    """What the GGUF says about the model, besides its vocabulary."""

    folder: Path
    config: dict[str, Any]
    arch: gguf.MODEL_ARCH
    file_type: gguf.LlamaFileType
    tensor_type: Q
    plan: list[Planned]


def _metadata(path: Path, model: _Model, vocab: Vocab) -> _Writer:
    """A writer of the file `path` (replaced if there), its header, metadata and tensor infos written."""
    writer = _Writer(path, gguf.MODEL_ARCH_NAMES[model.arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(model.folder.name)
    _hyperparameters(writer, model.folder, model.config, model.arch)
    writer.add_file_type(model.file_type)
    if model.tensor_type not in (Q.F32, Q.F16, Q.BF16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.add_to(writer)
    for p in model.plan:
        # add_tensor_info takes the element shape when the dtype is not uint8.
        writer.add_tensor_info(p.name, p.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    return writer


def _write(path: Path, model: _Model, vocab: Vocab, progress: Callable[[int, int], None] | None) -> int:
    """The whole GGUF file at `path` (replaced if there); returns where its tensor data starts."""
    total = sum(p.nbytes for p in model.plan)
    writer = _metadata(path, model, vocab)
    assert writer.fout is not None
    out = writer.fout[0]
    _pad(out, writer.data_alignment)
    offset = out.tell()
    done = 0
    with contextlib.closing(writer), contextlib.closing(converted(model.plan, model.config)) as tensors:
        for p, blocks in zip(model.plan, tensors, strict=True):
            _pad(out, writer.data_alignment)
            for block in blocks:
                out.write(memoryview(block).cast("B"))
            done += p.nbytes
            if progress is not None:
                progress(done, total)
        _pad(out, writer.data_alignment)
    return offset


def _rewrite_metadata(path: Path, model: _Model, vocab: Vocab, offset: int) -> bool:
    """Put `vocab`'s metadata over the start of the GGUF `path` where it ends at the same aligned
    `offset` as what is there (the tensor data stays); False, nothing changed, where it does not."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".head", dir=path.parent)
    os.close(fd)
    try:
        writer = _metadata(Path(name), model, vocab)
        writer.close()
        head = Path(name).read_bytes()
    finally:
        Path(name).unlink(missing_ok=True)
    head += b"\0" * (-len(head) % writer.data_alignment)
    if len(head) != offset:
        return False
    with path.open("r+b") as f:
        f.write(head)
    return True


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


# --- planning -----------------------------------------------------------------------------------


def _plan(
    model_dir: Path, config: dict[str, Any], arch: gguf.MODEL_ARCH, sources: list[Source], qtype: Q
) -> list[Planned]:
    n_layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(arch, n_layers)
    default_tied = arch == ARCH.GEMMA2
    tied = bool(config.get("tie_word_embeddings", default_tied)) or arch == ARCH.GEMMA2
    plan: list[Planned] = []
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
        plan.append(Planned(name, _tensor_type(name, source.shape, qtype), source.shape, source, transform))
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


def _embedding_rows(plan: list[Planned]) -> int:
    embd = next(p for p in plan if p.name == "token_embd.weight")
    return embd.shape[0]


def _llama3_rope_freqs(config: dict[str, Any], arch: gguf.MODEL_ARCH) -> Planned | None:
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
    return Planned("rope_freqs.weight", Q.F32, data.shape, None, data=data)


# --- writing ------------------------------------------------------------------------------------


class _Writer(gguf.GGUFWriter):
    """gguf's writer, packing the long arrays of the vocabulary (tokens, scores, types, merges) in one go
    instead of value by value (a 150,000-token vocabulary took seconds): the same bytes (tested)."""

    def _pack_val(
        self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool, sub_type: gguf.GGUFValueType | None = None
    ) -> bytes:
        V = gguf.GGUFValueType
        if (
            vtype != V.ARRAY
            or self.endianess != gguf.GGUFEndian.LITTLE
            or not isinstance(val, list)
            or not val
        ):
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        kind = sub_type if sub_type is not None else V.get_type(val[0])
        if kind == V.STRING and all(isinstance(v, (str, bytes, bytearray)) for v in val):
            encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in val]
            body = b"".join([b for e in encoded for b in (struct.pack("<Q", len(e)), e)])
        elif kind == V.INT32 and all(isinstance(v, int) and not isinstance(v, bool) for v in val):
            body = struct.pack(f"<{len(val)}i", *val)
        elif kind == V.FLOAT32 and all(isinstance(v, float) for v in val):
            body = struct.pack(f"<{len(val)}f", *val)
        else:  # anything else (nested, mixed: the stock writer's error) as gguf packs it
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        return (struct.pack("<I", vtype) if add_vtype else b"") + struct.pack("<IQ", kind, len(val)) + body


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
