"""Tensor data for GGUF: safetensors read tensor by tensor and converted in blocks ahead of the writer.

`index_safetensors` finds every tensor's bytes in a model's safetensors files without reading them;
`converted` yields each planned tensor's GGUF data as blocks, read and converted by a thread while the
caller writes the previous ones (twinlm.export.gguf writes them).

Where the time goes, and why it is spent so: a file copy of the same bytes is the floor (its CPU time
is the kernel's two copies, file to buffer and buffer to file). The common tensor, a bf16 or f16
weight cast to f16 (or f32, bf16), is cast a block of whole rows at a time straight from a memory map
of the file (no copy into a buffer) into a reused buffer, which the writer writes: the kernel's one
copy, buffer to file, plus the cast. The cast looks each 16-bit value up in a 65,536-entry table
computed once by llama.cpp's own numpy conversion (the same bytes by construction; ~0.45 s per GiB
here, against ~1.7 s for numpy's float32 -> float16 and torch's ~0.3 s after a ~1.3 s import, which
this path never pays). No per-tensor allocation either (a fresh array costs a page fault per 4 KiB
each time). A tensor already in the target type is read into a reused buffer as it is; f32 weights
rounded to 16 bits go through numpy, or torch where that pays (`_torch_pays`). q/k projections,
permuted per head for llama.cpp's RoPE, are mapped whole and cast from the permuted view a few heads
at a time. q8_0 and Gemma's 1 + w norms take gguf.quants' numpy path on whole rows.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import mmap
import os
import queue
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twinlm.errors import TwinError
from twinlm.export.gguf_import import gguf

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


def _reader(path: Path, readers: dict[Any, Any]) -> Any:
    f = readers.get(path)
    if f is None:
        f = readers[path] = path.open("rb", buffering=0)
        with contextlib.suppress(AttributeError, OSError):  # read-ahead for a model not in the page cache
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return f


def _read_into(path: Path, offset: int, view: memoryview, readers: dict[Any, Any], what: str) -> None:
    """Fill `view` with the bytes of `path` from `offset` (pread: no seek, no Python-side buffer)."""
    f = _reader(path, readers)
    done = 0
    while done < len(view):
        got = os.preadv(f.fileno(), [view[done:]], offset + done)
        if got <= 0:
            raise TwinError(f"{path}: truncated at tensor {what}")
        done += got


@contextlib.contextmanager
def _mapped(source: Source, offset: int, nbytes: int, readers: dict[Any, Any]) -> Iterator[np.ndarray | None]:
    """The bytes [offset, offset + nbytes) of the source's file as a read-only uint8 array straight from
    the page cache (a memory map: no copy into a buffer, which cost ~0.2 s per GiB), or None where the
    file cannot be mapped (the caller reads it instead). Afterwards the pages leave this process's
    memory (MADV_DONTNEED: the page cache keeps them), so its resident size stays flat."""
    key = (source.path, "map")
    if key not in readers:
        try:
            readers[key] = mmap.mmap(_reader(source.path, readers).fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # a file that cannot be mapped (an empty one, a pipe)
            readers[key] = None
    mm = readers[key]
    if mm is None:
        yield None
        return
    if offset + nbytes > len(mm):
        raise TwinError(f"{source.path}: truncated at tensor {source.name}")
    try:
        yield np.frombuffer(mm, np.uint8, nbytes, offset)
    finally:
        start = offset - offset % mmap.PAGESIZE
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED, start, offset + nbytes - start)


def _close(readers: dict[Any, Any]) -> None:
    for f in readers.values():
        if f is not None:
            with contextlib.suppress(BufferError):  # a map still viewed: freed with its last view
                f.close()


def _read(source: Source, readers: dict[Any, Any], into: np.ndarray | None = None) -> np.ndarray:
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
_BITS = {Q.F32: np.uint32, Q.F16: np.uint16, Q.BF16: np.uint16}
_LOOKUP_ELEMENTS = 1 << 17  # values looked up per np.take: its index copy (int64) stays in the cache


def reference_cast(raw: np.ndarray, dtype: str, qtype: Q) -> np.ndarray:
    """Source values (F32, F16, or BF16 as uint16) to f32, f16 or bf16 as llama.cpp's converter
    computes them: through float32 with numpy (round to nearest even), bf16 by gguf.quants."""
    f32 = _as_f32(raw, dtype)
    if qtype == Q.F32:
        return np.array(f32, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # past f16's range: inf, as numpy gives it
        packed = np.ascontiguousarray(gguf.quants.quantize(f32, qtype))
    return packed.view(np.uint8).reshape(-1).view(NUMPY_TYPES[qtype]).reshape(raw.shape)


@functools.cache
def _table(dtype: str, qtype: Q) -> np.ndarray:
    """What `reference_cast` makes of each of the 65,536 values of a 16-bit source type, as bits: a
    16-bit source is cast by looking its values up here, the reference's bytes by construction."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    raw = bits if dtype == "BF16" else bits.view(np.float16)
    return reference_cast(raw, dtype, qtype).view(_BITS[qtype])


def cast(
    raw: np.ndarray, dtype: str, qtype: Q, out: np.ndarray | None = None, *, use_torch: bool = False
) -> np.ndarray:
    """Source values (F32, F16, or BF16 as uint16; any strides) to f32, f16 or bf16, in `out` (same
    shape, contiguous) or a new array: `reference_cast`'s bytes.

    16-bit sources: a table lookup (numpy, ~0.45 s per GiB here, no temporaries beyond the cache).
    F32 sources: numpy's cast (~1.7 s per GiB to f16), or torch's (~0.3 s) with `use_torch`, for
    callers that have torch imported already or enough f32 to pay for its import (~1.3 s)."""
    if out is None:
        out = np.empty(raw.shape, dtype=NUMPY_TYPES[qtype])
    if dtype in ("F16", "BF16"):
        table = _table(dtype, qtype)
        _lookup(table, raw.view(np.uint16), out.view(table.dtype))
        return out
    if qtype == Q.F32:
        out[...] = raw
    elif use_torch:
        import torch

        dst = torch.from_numpy(out.view(np.int16)).view(torch.bfloat16) if qtype == Q.BF16 else None
        (dst if dst is not None else torch.from_numpy(out)).copy_(torch.from_numpy(raw))
    else:
        out[...] = reference_cast(raw, dtype, qtype)
    return out


def _lookup(table: np.ndarray, raw: np.ndarray, out: np.ndarray) -> None:
    """out[...] = table[raw], in pieces of about _LOOKUP_ELEMENTS: np.take copies its indices to int64
    first, and a small copy stays in the cache. A strided `raw` (heads of a permuted q/k) is split along
    its first axes, never copied whole. "clip": no bounds check (a uint16 always indexes the table)
    and no buffered output."""
    if raw.flags.c_contiguous:
        src, dst = raw.reshape(-1), out.reshape(-1)
        for start in range(0, src.size, _LOOKUP_ELEMENTS):
            end = start + _LOOKUP_ELEMENTS
            np.take(table, src[start:end], out=dst[start:end], mode="clip")
    elif raw.ndim > 1 and raw.size > _LOOKUP_ELEMENTS:
        for i in range(raw.shape[0]):
            _lookup(table, raw[i], out[i])
    else:
        np.take(table, raw, out=out, mode="clip")


# --- converting, ahead of the writer --------------------------------------------------------------


class _Buffers:
    """Memory the converter thread reuses: a fresh array per block would cost a page fault per 4 KiB
    each time. `out` hands out a ring of _RING buffers in turn: with at most _QUEUE blocks queued and
    one being written, the buffer being filled is never one the writer still reads."""

    def __init__(self, use_torch: bool = False) -> None:
        self.use_torch = use_torch  # cast F32 sources with torch (see `cast`)
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
    use_torch = _torch_pays(plan)

    def produce() -> None:
        readers: dict[Any, Any] = {}  # open files and their maps, by path
        buffers = _Buffers(use_torch)
        try:
            with _one_torch_thread(use_torch):
                for p in plan:
                    for block in tensor_blocks(p, readers, config, buffers):
                        if stop.is_set():
                            return
                        blocks.put(block)
                    blocks.put(_END)
        except BaseException as err:  # handed to the writer, which raises it
            blocks.put(err)
        finally:
            _close(readers)

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


_TORCH_PAYS_BYTES = 1 << 30  # f32 rounded to f16/bf16 that torch's faster cast pays its import for


def _torch_pays(plan: list[Planned]) -> bool:
    """Whether F32 sources are cast with torch: only where some are rounded to 16 bits, and torch is
    imported already (the export pipeline, after a merge) or there are enough of them (a GiB: numpy
    takes ~1.4 s longer per GiB, torch's import ~1.3 s). 16-bit sources never need it."""
    f32 = sum(p.source.nbytes for p in plan if p.source and p.source.dtype == "F32" and p.qtype != Q.F32)
    if not f32:
        return False
    if "torch" in sys.modules or f32 >= _TORCH_PAYS_BYTES:
        return importlib.util.find_spec("torch") is not None
    return False


@contextlib.contextmanager
def _one_torch_thread(use_torch: bool) -> Iterator[None]:
    """torch's casts on this thread alone while converting: a second OpenMP thread takes the core the
    writer needs and spins (measured on 1.15 GiB of bf16 -> f16, 2 cores: 1.3 s CPU and 1.6-2.7 s with
    two threads, 0.5 s CPU and 0.7-0.9 s with one). torch keeps the setting per thread and as the
    default of threads that set none (and MKL's): that default is put back when the conversion ends."""
    if not use_torch:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_END = object()
# Tensor data converted and written at a time (whole rows, whole heads). Small enough that a block is
# still in the cache when the writer's write() copies it into the page cache: 1 MiB against 16 MiB,
# alternating on the 1.1B benchmark model (2 cores): median 2.6 s against 3.1 s, half the peak RSS.
_BLOCK_BYTES = 1 << 20
_QUEUE = 4  # blocks converted ahead of the writer
_RING = _QUEUE + 2  # output buffers in turn: _QUEUE queued, one being written, one being filled


def tensor_blocks(
    p: Planned, readers: dict[Any, Any], config: dict[str, Any], buffers: _Buffers
) -> Iterator[np.ndarray]:
    """The bytes of one GGUF tensor, in blocks of whole rows (a whole tensor is never converted at once).

    The common case, a weight cast to f32/f16/bf16, casts each block of rows from the mapped file into
    a reused buffer; a tensor already in the target type is read into one as it is; q/k projections
    (their rows are interleaved per head) are mapped whole and cast a few heads at a time."""
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
        with _mapped(source, source.offset, source.nbytes, readers) as mapped:
            if mapped is None:
                whole = _read(source, readers, buffers.keep("whole", source.nbytes))
            else:
                whole = mapped.view(dtype).reshape(source.shape)
            heads = _heads(p, config)
            view = whole.reshape(heads, 2, whole.shape[0] // heads // 2, *whole.shape[1:]).swapaxes(1, 2)
            step = max(1, _BLOCK_BYTES // max(1, view[0].nbytes))
            for h in range(0, heads, step):
                part = view[h : h + step]
                out = buffers.out(part.shape, target)
                yield cast(part, source.dtype, p.qtype, out, use_torch=buffers.use_torch)
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
        out = buffers.out((n, *row_shape), target)
        with _mapped(source, offset, n * row_bytes, readers) as mapped:
            if mapped is None:
                raw = buffers.keep("source", n * row_bytes)[: n * row_bytes]
                _read_into(source.path, offset, memoryview(raw), readers, source.name)
            else:
                raw = mapped
            cast(
                raw.view(dtype).reshape(n, *row_shape),
                source.dtype,
                p.qtype,
                out,
                use_torch=buffers.use_torch,
            )
        yield out


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
