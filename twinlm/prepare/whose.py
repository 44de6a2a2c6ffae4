"""Whose words a dataset trains: trained turns and tokens per speaker and per source, and warnings.

A wrong `me:` does not fail a build: the chats lose every trained turn and what is left (ChatGPT's
replies, documents) trains happily. So the build says who is trained, and warns when `me` matched
nobody in the chats or when most trained tokens are not the chosen speakers' own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from twinlm.prepare.sample import IGNORE_INDEX, Sample

DOCUMENTS = "(documents)"  # the speaker of a document chunk: trained whole, nobody's turns


@dataclass(slots=True)
class Tally:
    """Trained turns and tokens per speaker (as the samples name them) and per source."""

    turns: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    source_turns: Counter[str] = field(default_factory=Counter)
    source_tokens: Counter[str] = field(default_factory=Counter)
    kind_tokens: Counter[str] = field(default_factory=Counter)  # chat | assistant | document | dataset

    def add_sample(self, sample: Sample) -> None:
        """Count a sample's trained turns (once per sample, whatever its rows)."""
        for turn in sample.turns:
            if turn.trained:
                self.turns[_speaker(sample, turn.speaker)] += 1
                self.source_turns[sample.source] += 1

    def add_row(self, sample: Sample, labels: Sequence[int]) -> None:
        """Count the trained tokens of one of `sample`'s rows by whose turn they are."""
        self.add_runs(sample, _runs(labels))

    def add_runs(self, sample: Sample, runs: list[int]) -> None:
        """`add_row` of a row whose runs of trained labels are known (render's Row.runs)."""
        total = sum(runs)
        self.source_tokens[sample.source] += total
        self.kind_tokens[sample.kind] += total
        for speaker, n in _attribute(sample, runs).items():
            self.tokens[speaker] += n

    def report(self) -> dict[str, dict[str, dict[str, int]]]:
        return {
            "by_speaker": _table(self.turns, self.tokens),
            "by_source": _table(self.source_turns, self.source_tokens),
        }


def tally(samples: Iterable[Sample], rows: Iterable[tuple[str, Sequence[int], Sequence[int]]]) -> Tally:
    """Count what `rows` (sample id, input ids, labels: the rendered dataset) train, by whose turn.

    A row's labelled tokens come in one run per trained turn, in order, so runs are matched to the
    sample's trained turns where the counts agree. Where they do not (a long sample split into
    windows, or an alternating template rendering one trained speaker at a time), a single trained
    speaker gets the whole row, and otherwise the row is shared by trained characters (approximate).
    """
    by_id = {s.id: s for s in samples}
    t = Tally()
    for sample in by_id.values():
        t.add_sample(sample)
    for sample_id, _, labels in rows:
        t.add_row(by_id[sample_id], labels)
    return t


def warnings(
    t: Tally, *, chats_seen: bool, me_in_chats: bool, me_targeted: bool, targets: str, me_name: str
) -> list[str]:
    """What a user must read before training: `me` matched nobody, or most tokens are someone else's."""
    found = []
    if chats_seen and me_targeted and not me_in_chats:
        found.append(
            f"`me` matched no account in the chats: none of {me_name}'s messages there are trained. Run "
            "`twinlm people` and put your names or ids (e.g. discord:1234) under me: in twin.yaml"
        )
    total = sum(t.kind_tokens.values())
    mine = t.kind_tokens["assistant"] if targets == "assistant" else t.kind_tokens["chat"]
    if chats_seen and total and mine * 2 < total:
        who = "the assistant's replies" if targets == "assistant" else "the target speakers' chat turns"
        others = ", ".join(
            f"{name}: {n / total:.0%}" for name, n in t.tokens.most_common(3) if n and n * 10 >= total
        )
        found.append(
            f"only {mine / total:.0%} of the trained tokens are {who} ({others}); check me:, build.targets "
            "and build.sources if this is not what you meant"
        )
    return found


def _runs(labels: Sequence[int] | np.ndarray) -> list[int]:
    """The lengths of the runs of trained labels, in order."""
    if isinstance(labels, np.ndarray):  # in numpy: a Python loop over its items makes a scalar each
        trained = np.concatenate(([False], labels != IGNORE_INDEX, [False]))
        edges = np.flatnonzero(trained[1:] != trained[:-1])  # starts and ends, alternating
        return (edges[1::2] - edges[::2]).tolist()
    runs: list[int] = []
    inside = False
    for label in labels:
        if label != IGNORE_INDEX:
            if inside:
                runs[-1] += 1
            else:
                runs.append(1)
            inside = True
        else:
            inside = False
    return runs


def _attribute(sample: Sample, runs: list[int]) -> Counter[str]:
    trained = [t for t in sample.turns if t.trained]
    found: Counter[str] = Counter()
    total = sum(runs)
    if not total:
        return found
    names = [_speaker(sample, t.speaker) for t in trained] or [_speaker(sample, "")]
    if len(set(names)) == 1:
        found[names[0]] = total
    elif len(runs) == len(trained):
        for name, n in zip(names, runs, strict=True):
            found[name] += n
    else:
        # An alternating template renders one trained speaker per row: the speaker with that many turns.
        per: Counter[str] = Counter(names)
        fits = [name for name, k in per.items() if k == len(runs)]
        if len(fits) == 1:
            found[fits[0]] = total
        else:
            chars: Counter[str] = Counter()
            for name, turn in zip(names, trained, strict=True):
                chars[name] += len(turn.text) or 1
            whole = sum(chars.values())
            shares = {name: total * c // whole for name, c in chars.items()}
            shares[max(chars, key=chars.__getitem__)] += total - sum(shares.values())
            found.update(shares)
    return found


def _speaker(sample: Sample, name: str) -> str:
    return DOCUMENTS if sample.kind == "document" and not name else name


def _table(turns: Counter[str], tokens: Counter[str]) -> dict[str, dict[str, int]]:
    keys = sorted(set(turns) | set(tokens), key=lambda k: (-tokens[k], -turns[k], k))
    return {k: {"turns": turns[k], "tokens": tokens[k]} for k in keys}
