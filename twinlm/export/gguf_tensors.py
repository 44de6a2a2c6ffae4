"""Tensor data for GGUF: safetensors read tensor by tensor and converted in blocks ahead of the writer.

`index_safetensors` finds every tensor's bytes in a model's safetensors files without reading them;
`converted` yields each planned tensor's GGUF data as blocks, read and converted by a thread while the
caller writes the previous ones (twinlm.export.gguf writes them).

Where the time goes, and why it is spent so: a file copy of the same bytes is the floor. The common
tensor (a weight cast to f16, or copied as it is) is read a block of whole rows at a time with pread
straight into a reused buffer and cast in one pass by torch (the same bytes as numpy's
round-to-nearest-even, about four times faster) into another reused buffer: no per-tensor allocation
(a fresh array costs a page fault per 4 KiB each time) and no extra copy. q/k projections, permuted
per head for llama.cpp's RoPE, are read whole and cast from the permuted view a few heads at a time.
q8_0 and Gemma's 1 + w norms take gguf.quants' numpy path on whole rows.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from twinlm.errors import TwinError

Q = gguf.GGMLQuantizationType

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_BLOCK_ELEMENTS = 1 << 24  # rows converted at a time: ~64 MiB of f32, whatever the tensor's size


@dataclass(frozen=True)
class Source:
    """One tensor in a safetensors file: where its bytes are, without reading them."""

    name: str
    path: Path
    dtype: str  # safetensors dtype: F32, F16, BF16
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass
class Planned:
    """One GGUF tensor: its name, type and shape, and how to produce its data."""

    name: str
    qtype: gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    source: Source | None
    transform: str | None = None  # "permute_q", "permute_k", "plus_one"
    data: np.ndarray | None = None  # a tensor computed here (llama 3's rope_freqs)

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * size


# --- reading safetensors ------------------------------------------------------------------------


def index_safetensors(model_dir: Path) -> list[Source]:
    """Every tensor of the model's safetensors files (the index's, else all), in file order."""
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
    sources: list[Source] = []
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
            sources.append(Source(name, path, info["dtype"], tuple(info["shape"]), offset, end - begin))
    return sorted(sources, key=lambda s: (s.path, s.offset))


def _read_into(path: Path, offset: int, view: memoryview, readers: dict[Path, Any], what: str) -> None:
    """Fill `view` with the bytes of `path` from `offset` (pread: no seek, no Python-side buffer)."""
    f = readers.get(path)
    if f is None:
        f = readers[path] = path.open("rb", buffering=0)
        with contextlib.suppress(AttributeError, OSError):  # read-ahead for a model not in the page cache
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    done = 0
    while done < len(view):
        got = os.preadv(f.fileno(), [view[done:]], offset + done)
        if got <= 0:
            raise TwinError(f"{path}: truncated at tensor {what}")
        done += got


def _read(source: Source, readers: dict[Path, Any], into: np.ndarray | None = None) -> np.ndarray:
    """A whole source tensor, in `into` (a reused buffer of at least its bytes) or a new array."""
    dtype = _SAFETENSORS_DTYPES[source.dtype]
    if into is None:
        data = np.empty(source.shape, dtype=dtype)
    else:
        data = into[: source.nbytes].view(dtype).reshape(source.shape)
    _read_into(source.path, source.offset, memoryview(data.reshape(-1)).cast("B"), readers, source.name)
    return data


def _as_f32(data: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32, copy=False)


NUMPY_TYPES = {Q.F32: np.float32, Q.F16: np.float16, Q.BF16: np.uint16}


def cast(raw: np.ndarray, dtype: str, qtype: Q, out: np.ndarray | None = None) -> np.ndarray:
    """Source values (F32, F16, or BF16 as uint16; any strides) to f32, f16 or bf16, rounding to nearest
    even, in `out` (same shape, contiguous) or a new array. torch where installed (one pass, no
    temporaries), else numpy: the same bytes."""
    if out is None:
        out = np.empty(raw.shape, dtype=NUMPY_TYPES[qtype])
    try:
        import torch
    except ImportError:  # numpy alone: the same bytes, about four times slower
        f32 = _as_f32(raw, dtype)
        if qtype == Q.F32:
            out[...] = f32
        else:  # gguf.quants gives the bytes (uint8)
            packed = np.ascontiguousarray(gguf.quants.quantize(f32, qtype)).view(np.uint8).reshape(-1)
            out.reshape(-1).view(np.uint8)[...] = packed
        return out
    src = (
        torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
        if dtype == "BF16"
        else torch.from_numpy(raw)
    )
    dst = (
        torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)
        if qtype == Q.BF16
        else torch.from_numpy(out)
    )
    dst.copy_(src)
    return out


# --- converting, ahead of the writer --------------------------------------------------------------


class _Buffers:
    """Memory the converter thread reuses: a fresh array per block would cost a page fault per 4 KiB
    each time. `out` hands out a ring of _RING buffers in turn: with at most _QUEUE blocks queued and
    one being written, the buffer being filled is never one the writer still reads."""

    def __init__(self) -> None:
        self.ring: list[np.ndarray] = [np.empty(0, np.uint8) for _ in range(_RING)]
        self.turn = 0
        self.scratch: dict[str, np.ndarray] = {}

    def out(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        i, self.turn = self.turn, (self.turn + 1) % _RING
        if self.ring[i].size < nbytes:
            self.ring[i] = np.empty(nbytes, np.uint8)
        return self.ring[i][:nbytes].view(dtype).reshape(shape)

    def keep(self, name: str, nbytes: int) -> np.ndarray:
        """A buffer only the converter thread uses (a source block, a whole tensor to permute)."""
        have = self.scratch.get(name)
        if have is None or have.size < nbytes:
            have = self.scratch[name] = np.empty(nbytes, np.uint8)
        return have


def converted(plan: list[Planned], config: dict[str, Any]) -> Iterator[Iterator[np.ndarray]]:
    """Each planned tensor's data as blocks, read and converted by a thread ahead of the writer.

    Reading and converting the next blocks overlaps writing the last ones; a bounded queue keeps
    memory near a few blocks (and the largest q/k projection, which is permuted whole). An error in
    the thread is raised here."""
    blocks: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE)
    stop = threading.Event()

    def produce() -> None:
        readers: dict[Path, Any] = {}
        buffers = _Buffers()
        try:
            with _one_torch_thread():
                for p in plan:
                    for block in tensor_blocks(p, readers, config, buffers):
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


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch's casts on this thread alone while converting: a second OpenMP thread takes the core the
    writer needs and spins (measured on 1.15 GiB of bf16 -> f16, 2 cores: 1.3 s CPU and 1.6-2.7 s with
    two threads, 0.5 s CPU and 0.7-0.9 s with one). torch keeps the setting per thread and as the
    default of threads that set none (and MKL's): that default is put back when the conversion ends."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_END = object()
_BLOCK_BYTES = 16 << 20  # tensor data converted and written at a time (whole rows, whole heads)
_QUEUE = 4  # blocks converted ahead of the writer
_RING = _QUEUE + 2  # output buffers in turn: _QUEUE queued, one being written, one being filled


def tensor_blocks(
    p: Planned, readers: dict[Path, Any], config: dict[str, Any], buffers: _Buffers
) -> Iterator[np.ndarray]:
    """The bytes of one GGUF tensor, in blocks of whole rows (a whole tensor is never converted at once).

    The common case, a weight cast to f32/f16/bf16 or copied as it is, reads each block of rows
    straight from the file into a reused buffer and converts it into another; q/k projections are
    read whole (their rows are interleaved per head) and converted a few heads at a time."""
    if p.data is not None:
        yield p.data
        return
    source = p.source
    assert source is not None
    if p.transform == "plus_one" or p.qtype not in NUMPY_TYPES:
        yield from _quantized_blocks(p, _read(source, readers), config)
        return
    dtype = _SAFETENSORS_DTYPES[source.dtype]
    target = NUMPY_TYPES[p.qtype]
    same = np.dtype(dtype) == np.dtype(target)  # F32 -> f32, F16 -> f16, BF16 -> bf16 (both uint16)
    if p.transform in ("permute_q", "permute_k"):
        whole = _read(source, readers, buffers.keep("whole", source.nbytes))
        heads = _heads(p, config)
        view = whole.reshape(heads, 2, whole.shape[0] // heads // 2, *whole.shape[1:]).swapaxes(1, 2)
        step = max(1, _BLOCK_BYTES // max(1, view[0].nbytes))
        for h in range(0, heads, step):
            part = view[h : h + step]
            yield cast(part, source.dtype, p.qtype, buffers.out(part.shape, target))
        return
    shape = source.shape if source.shape else (1,)
    rows = shape[0] if len(shape) > 1 else 1
    row_shape = shape[1:] if len(shape) > 1 else shape
    row_bytes = math.prod(row_shape) * np.dtype(dtype).itemsize
    step = max(1, _BLOCK_BYTES // max(1, row_bytes))
    for start in range(0, rows, step):
        n = min(step, rows - start)
        offset = source.offset + start * row_bytes
        if same:  # already in the target type: the bytes as they are
            block = buffers.out((n, *row_shape), target)
            _read_into(source.path, offset, memoryview(block.reshape(-1)).cast("B"), readers, source.name)
            yield block
            continue
        raw = buffers.keep("source", n * row_bytes)[: n * row_bytes].view(dtype).reshape(n, *row_shape)
        _read_into(source.path, offset, memoryview(raw.reshape(-1)).cast("B"), readers, source.name)
        yield cast(raw, source.dtype, p.qtype, buffers.out(raw.shape, target))


def _quantized_blocks(p: Planned, data: np.ndarray, config: dict[str, Any]) -> Iterator[np.ndarray]:
    """q8_0 (numpy, gguf.quants) and Gemma's 1 + w norms: the whole tensor read, converted in blocks."""
    assert p.source is not None
    if p.transform in ("permute_q", "permute_k"):
        data = _permute(data, _heads(p, config))
    rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
    step = max(1, _BLOCK_ELEMENTS // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step]
        if p.transform == "plus_one":
            # Gemma's RMSNorm scales by (1 + w), llama.cpp's by w: add 1 in f32, as HF computes it.
            yield gguf.quants.quantize(_as_f32(block, p.source.dtype) + np.float32(1.0), p.qtype)
        else:
            yield gguf.quants.quantize(_as_f32(block, p.source.dtype), p.qtype)


def _heads(p: Planned, config: dict[str, Any]) -> int:
    heads = int(config["num_attention_heads"])
    if p.transform == "permute_k":
        heads = int(config.get("num_key_value_heads") or heads)
    return heads


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # HF stores each head's rotary halves one after the other; llama.cpp's RoPE wants them interleaved.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
