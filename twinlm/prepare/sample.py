"""The unit of a dataset: one session (or document chunk) as speaker turns, some of them trained.

Everything after selection works on `Sample`s: rendering with a chat template, label masks,
export to other tools' formats, previews. Its readable form is one JSON object per line
(`samples.jsonl`), for people and for export-data; training reads the token rows (train.parquet), so a
change to what trains goes through the corpus (`twinlm edit`, the review page) and a new build.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from twinlm.errors import TwinError

SampleKind = Literal["chat", "assistant", "document", "dataset"]
# The label of a token that is not trained: what PyTorch's cross_entropy and transformers ignore. Defined
# once here, the lowest layer with labels (rendering, the built dataset, training all import it).
IGNORE_INDEX = -100
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Turn:
    speaker: str  # the display name: a person's canonical name, "user"/"assistant" for assistant chats
    text: str  # consecutive messages of one speaker, newline-joined
    trained: bool  # a target turn: its content and end-of-turn token are learned


@dataclass(frozen=True, slots=True)
class Sample:
    id: str  # stable: same corpus and config give the same id
    conversation: str  # "source:native id": the train/eval split never separates one conversation
    source: str
    kind: SampleKind
    turns: tuple[Turn, ...]
    system: str | None = None  # the persona's system prompt (or ChatGPT custom instructions)
    split: Literal["train", "eval"] = "train"

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "conversation": self.conversation,
                "source": self.source,
                "kind": self.kind,
                "split": self.split,
                "system": self.system,
                "turns": [{"speaker": t.speaker, "text": t.text, "trained": t.trained} for t in self.turns],
            }
        )

    @staticmethod
    def from_json(line: bytes | str) -> Sample:
        return Sample.from_dict(orjson.loads(line))

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Sample:
        return Sample(
            id=data["id"],
            conversation=data["conversation"],
            source=data["source"],
            kind=data["kind"],
            split=data.get("split", "train"),
            system=data.get("system"),
            turns=tuple(Turn(t["speaker"], t["text"], bool(t["trained"])) for t in data["turns"]),
        )


def read_samples(path: Path) -> Iterator[Sample]:
    """The samples of a samples.jsonl, read as used; a missing file or a line that is not a sample (a disk
    error, a hand edit gone wrong) is one error line naming the file and the line."""
    return _read(path, Sample.from_dict)


# Of a sample, its conversation and (trained, characters) per turn.
Outline = tuple[str, list[tuple[bool, int]]]


def read_sample_outlines(path: Path) -> Iterator[Outline]:
    """`read_samples` reduced to what per-conversation figures need (`twinlm conversations`), without a
    Sample a line: 742,250 samples (a 10M-message build) read in a fraction of the time."""
    return _read(
        path,
        lambda data: (data["conversation"], [(bool(t["trained"]), len(t["text"])) for t in data["turns"]]),
    )


def _read(path: Path, make: Callable[[dict[str, Any]], T]) -> Iterator[T]:
    if not path.is_file():
        raise TwinError(f"{path}: not found; run `twinlm build` first")
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield make(orjson.loads(line))
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                problem = f"not JSON ({err})" if isinstance(err, orjson.JSONDecodeError) else "not a sample"
                raise TwinError(f"{path}: line {n}: {problem}; run `twinlm build` again") from None
