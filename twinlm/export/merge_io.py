"""safetensors files read and written one tensor at a time, for `twinlm.export.merge`.

`safetensors.safe_open` maps the whole file: every tensor read stays resident in the process (mapped
pages count in its RSS) until the file is closed, and `save_file` needs the whole output shard in memory
as a dict. A merge holds both, i.e. two shards. Here the reader `readinto`s one tensor at a time (the
page cache is the kernel's, not the process's) and the writer writes the header first, from the shapes
and dtypes known in advance, then each tensor's bytes as it comes: the merge holds one tensor, not a shard.
The format (8-byte little-endian header length, a JSON header of dtype / shape / data_offsets, then the
data) is safetensors' own: files written here load with safetensors and transformers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from twinlm.errors import TwinError

# safetensors dtype names <-> torch dtype attribute names
_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
_CODES = {name: code for code, name in _DTYPES.items()}
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_MAX_HEADER = 100_000_000  # safetensors' own limit


def dtype_name(code: str) -> str:
    """The torch dtype name of a safetensors dtype code ("BF16" -> "bfloat16")."""
    return _DTYPES[code]


def read_header(path: Path) -> dict[str, dict[str, Any]]:
    """{tensor name: {"dtype", "shape", "data_offsets"}} of a safetensors file (metadata left out)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > _MAX_HEADER:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(f.read(size))
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        raise TwinError(f"{path}: not a safetensors file ({err})") from None
    header.pop("__metadata__", None)
    for name, info in header.items():
        if info.get("dtype") not in _DTYPES:
            raise TwinError(f"{path}: tensor {name} has dtype {info.get('dtype')}, which merge cannot read")
    return header


def read_tensors(path: Path, names: list[str]) -> Iterator[tuple[str, Any]]:
    """Each named tensor of the file, read from disk when the caller asks for it (in `names` order)."""
    import torch

    header = read_header(path)
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        start = 8 + size
        for name in names:
            info = header[name]
            begin, end = info["data_offsets"]
            buffer = bytearray(end - begin)
            f.seek(start + begin)
            if f.readinto(buffer) != len(buffer):
                raise TwinError(f"{path}: truncated (tensor {name} runs past the end of the file)")
            dtype = getattr(torch, _DTYPES[info["dtype"]])
            tensor = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
            yield name, tensor.reshape(info["shape"])
            del tensor, buffer  # before the next read: one tensor at a time


class ShardWriter:
    """A safetensors file written tensor by tensor, in the order and with the shapes and dtypes given
    up front (`add` checks each); `close` checks that every tensor came."""

    def __init__(self, path: Path, layout: list[tuple[str, str, list[int]]]) -> None:
        """`layout`: (name, torch dtype name, shape) of each tensor, in the order they will be added."""
        import torch

        self.path = path
        self.layout = layout
        self.position = 0
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape in layout:
            n = torch.Size(shape).numel() * getattr(torch, dtype).itemsize
            header[name] = {
                "dtype": _CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + n],
            }
            offset += n
        self.size = offset
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        self.file: IO[bytes] = open(path, "wb")  # noqa: SIM115  (closed in close())
        self.file.write(struct.pack("<Q", len(encoded)) + encoded)

    def add(self, name: str, tensor: Any) -> None:
        import torch

        expected = self.layout[self.position]
        if (name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)) != (
            expected[0],
            expected[1],
            list(expected[2]),
        ):
            raise ValueError(
                f"{self.path}: tensor {name} {tensor.dtype} {list(tensor.shape)} is not {expected}"
            )
        data = tensor.contiguous().reshape(-1)
        if data.numel():
            self.file.write(data.view(torch.uint8).numpy().data)
        self.position += 1

    def close(self, *, complete: bool = True) -> None:
        """Close the file; with `complete`, check that every tensor of the layout was written."""
        self.file.close()
        if complete and self.position != len(self.layout):
            raise ValueError(f"{self.path}: {len(self.layout) - self.position} tensors never written")
