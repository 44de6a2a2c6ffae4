"""What a hosted job uploads: the built dataset written by `export-data --format mistral`'s own writer
(twinlm.prepare.interop, not a copy of it) into the run folder, measured and checked before anything is sent.

The files uploaded are exactly those in runs/NAME/upload/, kept there so the user can read what left
the machine.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from twinlm.errors import TwinError
from twinlm.hosted.settings import HostedConfig
from twinlm.prepare import interop
from twinlm.prepare.interop import ExportReport, export_samples
from twinlm.prepare.sample import Sample

UPLOAD_DIR = "upload"
CHARS_PER_TOKEN = 4  # a rough, tokenizer-free estimate (Mistral's tokenizers average 3.5-4.5 on chat text)
SHOWN_NAMES = 8


@dataclass
class Upload:
    """The exported files and what they hold, for the confirmation and the run record."""

    folder: Path
    report: ExportReport
    train_files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    conversations: Counter[str] = field(default_factory=Counter)  # split -> conversations exported
    trained: Counter[str] = field(default_factory=Counter)  # speaker -> trained turns (the replies learned)
    context: Counter[str] = field(default_factory=Counter)  # speaker -> turns sent as context only
    characters: int = 0  # of the training files (the token estimate)
    sent_characters: int = 0  # of every file uploaded

    @property
    def tokens(self) -> int:
        """About how many tokens the training files hold."""
        return math.ceil(self.characters / CHARS_PER_TOKEN)

    def files(self) -> list[str]:
        return [*self.train_files, *self.eval_files]


def export_upload(samples: list[Sample], run_dir: Path) -> Upload:
    """Write the Mistral files into run_dir/upload (as `export-data --format mistral` does); describe them."""
    folder = run_dir / UPLOAD_DIR
    report = export_samples(samples, "mistral", folder)
    names = sorted(report.files)
    upload = Upload(
        folder=folder,
        report=report,
        train_files=[n for n in names if n.startswith("train")],
        eval_files=[n for n in names if n.startswith("eval")],
        sizes={n: (folder / n).stat().st_size for n in names},
    )
    skipped = set().union(*report.skipped_ids.values()) if report.skipped_ids else set()
    for sample in samples:
        if sample.kind == "document" or sample.id in skipped:
            continue  # not exported (documents have no place in the messages format)
        upload.conversations[sample.split] += 1
        for turn in sample.turns:
            (upload.trained if turn.trained else upload.context)[turn.speaker] += 1
    for name in upload.files():
        characters = len((folder / name).read_text(encoding="utf-8"))
        upload.sent_characters += characters
        if name in upload.train_files:
            upload.characters += characters
    return upload


def check_upload(upload: Upload, settings: HostedConfig) -> int:
    """Refuse what the API would refuse or what exceeds the token budget; the estimated trained tokens."""
    limits = interop.MISTRAL_LIMITS  # read at call time: the writer's own limits
    if not upload.train_files:
        raise TwinError(
            f"{upload.folder}: no training conversation fits the Mistral format (see its "
            "twinlm-export.json); nothing was sent"
        )
    for name in upload.train_files:
        if upload.sizes[name] > limits.max_train_file_bytes:
            raise TwinError(
                f"{upload.folder / name}: {upload.sizes[name]:,} bytes, over the API's limit of "
                f"{limits.max_train_file_bytes:,} per training file; nothing was sent"
            )
    eval_bytes = sum(upload.sizes[n] for n in upload.eval_files)
    if eval_bytes > limits.max_eval_file_bytes:
        raise TwinError(
            f"{upload.folder}: {eval_bytes:,} bytes of evaluation data, over the API's limit of "
            f"{limits.max_eval_file_bytes:,} in all; nothing was sent"
        )
    trained_tokens = math.ceil(upload.tokens * (settings.epochs or 1))
    if trained_tokens > settings.max_tokens:
        raise TwinError(
            f"about {trained_tokens:,} tokens would be trained (the data's ~{upload.tokens:,} x "
            f"{settings.epochs or 1} epoch(s)), over hosted.max_tokens {settings.max_tokens:,}; raise it in "
            "twin.yaml if you accept the cost, or build a smaller dataset. Nothing was sent"
        )
    return trained_tokens


def names(counts: Counter[str]) -> str:
    """'Alex (120), Sam (80) and 3 others': whose messages, most first."""
    top = counts.most_common(SHOWN_NAMES)
    shown = ", ".join(f"{name or '(document)'} ({count:,})" for name, count in top)
    rest = len(counts) - len(top)
    return f"{shown} and {rest} others" if rest > 0 else shown or "nobody"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
