"""Free disk space, checked before a large output is written.

A merge or a GGUF is gigabytes: finding the disk full after minutes of work (and a half-written
temporary file removed again) is worse than one line up front naming the folder, the space the output
needs and the space there is. The write itself still turns ENOSPC into one line (another program may
fill the disk meanwhile); this check only catches the common case early.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from twinlm.errors import TwinError

# Beyond the expected size: headers, the tokenizer files, the file system's own blocks.
MARGIN = 16 << 20


def human_size(n: float) -> str:
    """Bytes in decimal units as a file manager shows them: 1.5 GB, 320.0 MB."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover (the loop returns)


def check_free(folder: Path, needed: int, what: str) -> None:
    """Raise a one-line TwinError when `folder` (or, not made yet, its nearest existing parent) has less
    than `needed` bytes (plus MARGIN) free for `what`. Where the space cannot be read, nothing is said:
    the write reports a full disk itself."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < needed + MARGIN:
        raise TwinError(
            f"{folder}: not enough free space for {what}: it needs about {human_size(needed + MARGIN)}, "
            f"{human_size(free)} free there; free some space or write elsewhere"
        )
