"""Loading checkpoint files without unpickling: what resume reads through libraries (accelerate, DeepSpeed,
torch.distributed.checkpoint) is read weights-only, or by an unpickler that builds only known metadata
types. A pickle runs code when loaded, and a checkpoint may come from elsewhere (a shared run folder, a
download): a file that holds anything but tensors, numbers and strings is refused in one line, never run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from twinlm.errors import TwinError


class UnsafeCheckpoint(TwinError, ValueError):
    """A checkpoint file holds pickled objects beyond tensors, numbers and strings: refused, never run."""

    def __init__(self, folder: Path, files: list[str]) -> None:
        names = ", ".join(dict.fromkeys(Path(f).name for f in files))
        super().__init__(
            f"{folder}: refusing to resume from {names}: it holds pickled objects, not only tensors and "
            "numbers, and loading it could run code (a file twinlm did not write?); resume from another "
            "checkpoint, or train again"
        )


@contextlib.contextmanager
def weights_only_loading() -> Iterator[list[str]]:
    """Within: every `torch.load` is weights-only, whatever its caller asks, and torch.distributed.checkpoint
    reads its `.metadata` with `_MetadataUnpickler`. Yields the list of files refused so far; an error
    raised after a refusal (libraries wrap or swallow it) leaves as `UnsafeCheckpoint`."""
    refused: list[str] = []
    original = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("pickle_module", None)  # torch refuses weights_only with a pickle module of one's own
        kwargs["weights_only"] = True
        try:
            return original(f, *args, **kwargs)
        except pickle.UnpicklingError:
            refused.append(str(f) if isinstance(f, str | os.PathLike) else repr(f))
            raise UnsafeCheckpoint(Path(str(f)).parent, refused[-1:]) from None

    filesystem = _dcp_filesystem()
    torch.load = load  # type: ignore[assignment]
    saved = filesystem.pickle if filesystem is not None else None
    if filesystem is not None:
        filesystem.pickle = _SafeMetadataPickle(refused)
    try:
        yield refused
    except BaseException as e:  # torch.distributed.checkpoint wraps errors in a BaseException
        if refused and not isinstance(e, KeyboardInterrupt | SystemExit | UnsafeCheckpoint):
            raise UnsafeCheckpoint(Path(refused[0]).parent, refused) from None
        raise
    finally:
        torch.load = original
        if filesystem is not None:
            filesystem.pickle = saved


def _dcp_filesystem() -> Any:
    """torch.distributed.checkpoint's file reader module (it unpickles `.metadata`), or None."""
    if not torch.distributed.is_available():
        return None
    import torch.distributed.checkpoint.filesystem as filesystem

    return filesystem if hasattr(filesystem, "pickle") else None


class _MetadataUnpickler(pickle.Unpickler):
    """Builds what torch.distributed.checkpoint's metadata holds (its dataclasses, sizes, dtypes, paths)
    and nothing else: any other global (a function to call, a class with a __reduce__) is refused."""

    _MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
    _GLOBALS = frozenset(
        {
            ("torch", "Size"),
            ("torch.serialization", "_get_layout"),
            ("collections", "OrderedDict"),
            ("builtins", "set"),
            ("builtins", "frozenset"),
            ("pathlib", "PosixPath"),
            ("pathlib", "PurePosixPath"),
            ("pathlib", "WindowsPath"),
            ("pathlib", "PureWindowsPath"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._GLOBALS:
            return super().find_class(module, name)
        if module == "torch":
            value = getattr(torch, name, None)
            if isinstance(value, torch.dtype | torch.layout | torch.memory_format):
                return value
        if module in self._MODULES:
            value = super().find_class(module, name)
            if isinstance(value, type) and (dataclasses.is_dataclass(value) or issubclass(value, enum.Enum)):
                return value
        raise pickle.UnpicklingError(f"global {module}.{name} is not checkpoint metadata")


class _SafeMetadataPickle:
    """Stands in for the `pickle` module inside torch.distributed.checkpoint.filesystem: `load` is
    restricted; everything else (dump, for saving) is pickle's."""

    def __init__(self, refused: list[str]) -> None:
        self._refused = refused

    def load(self, file: Any) -> Any:
        try:
            return _MetadataUnpickler(file).load()
        except (pickle.UnpicklingError, AttributeError, TypeError) as e:
            name = getattr(file, "name", None) or ".metadata"
            self._refused.append(str(name))
            raise UnsafeCheckpoint(Path(str(name)).parent, [str(name)]) from e

    def loads(self, data: bytes) -> Any:
        return self.load(io.BytesIO(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)
