"""`twinlm export-data`: the built samples in the formats other fine-tuning tools read.

Every export is a folder, built in a temporary sibling and renamed into place, so a failed export
leaves the previous one (or nothing) behind, never half a dataset. Outputs are byte-identical for the
same input: input order is kept, JSON keys are sorted, nothing time- or machine-dependent is written
(the Axolotl config names the absolute folder, so it is identical for the same `out`).

Layout (a split file is written only when it has records: the tools reject empty JSONL files):

- sharegpt: `train.jsonl`, `eval.jsonl`; a line is {"conversations": [{"from": "system"|"human"|"gpt",
  "value": ...}], "id": ...}.
- alpaca: `train.jsonl`, `eval.jsonl`; one line per trained reply: {"input", "instruction", "output"}:
  instruction = the message answered, input = the conversation before it as "Speaker: text" lines
  ("" when none), output = the reply. Alpaca has no system field: system prompts are left out (noted).
- openai: `train.jsonl`, `eval.jsonl`; {"messages": [{"content", "role"}]}, assistant messages carry
  "weight": 1 when trained, 0 when not (the fine-tuning API's per-message switch).
- mistral: the openai shape, checked against the Mistral fine-tuning API (see `mistral_problem`): a
  sample that breaks a rule is skipped and reported. The training file is split into `train-001.jsonl`,
  `train-002.jsonl`, ... when it would pass the per-file size limit (the API takes several files);
  `eval.jsonl` keeps samples, in order, while they fit the validation-file limit, the rest are skipped.
- axolotl: `train.jsonl`, `eval.jsonl` for the `chat_template` type: {"messages": [{"content", "role",
  "training"}]}; document chunks go to `train_text.jsonl`, `eval_text.jsonl` ({"text": ...}, the
  `completion` type); `axolotl.yaml` holds the `datasets:` / `test_datasets:` entries for them.
- hf: a `datasets.DatasetDict` saved with `save_to_disk`: splits `train` and `validation`, columns
  `id`, `conversation`, `messages` (list of {"role", "content"}).

Every folder also holds `twinlm-export.json`: format, files with record counts, what was skipped and
why (with the first sample ids), and notes. An existing `out` is replaced only when it holds that file.

These formats know only user/assistant roles ("alternating" style, the renderer's convention for
strict templates): the first turn is context (user); turns of the speakers being trained become
assistant messages, everyone else's turns user messages; consecutive turns with the same role (and the
same trained flag) merge into one message, newline-joined. In group chats every turn in a user message
says who spoke ("Name: text"); in assistant-style samples only a trained speaker's words shown as
context do (the user's own prompts stay bare); an assistant message does when the sample trains several
speakers. Formats with a per-message training switch (openai, mistral, axolotl) keep a target speaker's
untrained turn as an assistant message with the switch off; the others (sharegpt, alpaca, hf) cannot
say "do not train this reply", so such a turn becomes user context. Messages after the last trained one
are dropped (they teach nothing and Mistral requires an assistant message last). Document chunks (kind
"document") are exported only where the format has completion text (axolotl), else skipped and counted.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from twinlm.errors import TwinError
from twinlm.prepare.sample import Sample, Turn

MANIFEST = "twinlm-export.json"
STYLES = ("alternating",)
FIRST_IDS = 5  # sample ids kept per skip reason, so the user can look them up


@dataclass(frozen=True, slots=True)
class MistralLimits:
    """The Mistral fine-tuning API's documented limits (docs.mistral.ai fine-tuning FAQ)."""

    # "the size limit for an individual training data file is 512MB"; uploads over 500 MB are refused
    # with 413, so stay under the lower figure.
    max_train_file_bytes: int = 500_000_000
    max_eval_file_bytes: int = 1_000_000  # "The size limit for the validation data is 1MB"


MISTRAL_LIMITS = MistralLimits()


@dataclass(frozen=True, slots=True)
class Msg:
    """One user/assistant message before it is shaped into a format's record."""

    role: Literal["system", "user", "assistant"]
    content: str
    trained: bool
    transcript: str  # the same turns as "Speaker: text" lines, for formats that flatten history


@dataclass(slots=True)
class ExportReport:
    """What an export wrote and what it left out, with reasons: shown by the CLI, kept in the manifest."""

    format: str
    out: Path
    style: str = "alternating"
    files: dict[str, int] = field(default_factory=dict)  # file or split (relative to out) -> records
    samples: Counter[str] = field(default_factory=Counter)  # split -> samples exported
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> samples
    skipped_ids: dict[str, list[str]] = field(default_factory=dict)  # reason -> first sample ids
    notes: Counter[str] = field(default_factory=Counter)  # kept but altered -> count

    def skip(self, reason: str, sample_id: str) -> None:
        self.skipped[reason] += 1
        ids = self.skipped_ids.setdefault(reason, [])
        if len(ids) < FIRST_IDS:
            ids.append(sample_id)

    def to_json(self) -> bytes:
        # No absolute path and no time: the manifest is part of the byte-identical output.
        return (
            orjson.dumps(
                {
                    "format": self.format,
                    "style": self.style,
                    "files": self.files,
                    "samples": dict(self.samples),
                    "skipped": dict(self.skipped),
                    "skipped_ids": self.skipped_ids,
                    "notes": dict(self.notes),
                },
                option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2,
            )
            + b"\n"
        )

    def lines(self) -> list[str]:
        """A short human summary, one fact per line."""
        total = sum(self.samples.values())
        files = ", ".join(f"{name} {count}" for name, count in self.files.items())
        out = [f"{self.format}: {total} samples exported to {self.out} ({files})"]
        for reason, count in sorted(self.skipped.items()):
            out.append(f"skipped {count}: {reason} (first: {', '.join(self.skipped_ids[reason])})")
        out.extend(f"note {count}: {what}" for what, count in sorted(self.notes.items()))
        return out


# ---------------------------------------------------------------------------------------------------
# Samples -> user/assistant messages


def to_messages(sample: Sample, *, weights: bool, report: ExportReport) -> list[Msg] | None:
    """The sample as user/assistant messages (see the module doc), or None when nothing is trained.

    `weights`: the format can switch training off per message, so a target speaker's untrained turn
    stays an assistant message (trained=False) instead of becoming user context.
    """
    turns = [t for t in sample.turns if t.text.strip()]
    if len(turns) < len(sample.turns):
        report.notes["empty turns left out"] += len(sample.turns) - len(turns)
    targets = {t.speaker for t in turns[1:] if t.trained}
    if not targets:
        return None
    if turns[0].trained:
        report.notes["first turn exported as context, not trained"] += 1
    group = sample.kind == "chat"
    msgs: list[Msg] = []
    if sample.system and sample.system.strip():
        msgs.append(Msg("system", sample.system, False, f"system: {sample.system}"))
    for index, turn in enumerate(turns):
        role: Literal["user", "assistant"]
        if index > 0 and (turn.trained or (weights and turn.speaker in targets)):
            role, trained = "assistant", turn.trained
        else:
            role, trained = "user", False
        content = _labelled(turn) if _says_who(turn, role, group, targets) else turn.text
        line = _labelled(turn)
        last = msgs[-1] if msgs else None
        if last and last.role == role and last.trained == trained:
            msgs[-1] = Msg(role, f"{last.content}\n{content}", trained, f"{last.transcript}\n{line}")
        else:
            msgs.append(Msg(role, content, trained, line))
    end = max(i for i, m in enumerate(msgs) if m.trained) + 1
    if end < len(msgs):
        report.notes["messages after the last trained one left out"] += len(msgs) - end
    return msgs[:end]


def _says_who(turn: Turn, role: str, group: bool, targets: set[str]) -> bool:
    # The prefix exists where the role alone does not tell who spoke.
    if role == "assistant":
        return len(targets) > 1
    return group or turn.speaker in targets


def _labelled(turn: Turn) -> str:
    return f"{turn.speaker}: {turn.text}"


# ---------------------------------------------------------------------------------------------------
# Records per format. A record function yields (stream, record); stream "chat" goes to <split>.jsonl,
# "text" to <split>_text.jsonl.

Record = dict[str, Any]
Records = Iterator[tuple[str, Record]]


def _sharegpt(sample: Sample, report: ExportReport) -> Records:
    msgs = _chat(sample, report, weights=False, fmt="sharegpt")
    if msgs:
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        turns = [{"from": names[m.role], "value": m.content} for m in msgs]
        yield "chat", {"id": sample.id, "conversations": turns}


def _alpaca(sample: Sample, report: ExportReport) -> Records:
    msgs = _chat(sample, report, weights=False, fmt="alpaca")
    if not msgs:
        return
    if msgs[0].role == "system":
        report.notes["system prompt left out (alpaca has no system field)"] += 1
        msgs = msgs[1:]
    # weights=False gives strict user/assistant alternation starting with user: every reply has its
    # instruction right before it.
    for index, msg in enumerate(msgs):
        if msg.role == "assistant":
            history = "\n".join(m.transcript for m in msgs[: index - 1])
            yield "chat", {"instruction": msgs[index - 1].content, "input": history, "output": msg.content}


def _openai_messages(msgs: list[Msg]) -> list[Record]:
    out: list[Record] = []
    for m in msgs:
        message: Record = {"role": m.role, "content": m.content}
        if m.role == "assistant":
            message["weight"] = 1 if m.trained else 0
        out.append(message)
    return out


def _openai(sample: Sample, report: ExportReport) -> Records:
    msgs = _chat(sample, report, weights=True, fmt="openai")
    if msgs:
        yield "chat", {"messages": _openai_messages(msgs)}


def _mistral(sample: Sample, report: ExportReport) -> Records:
    msgs = _chat(sample, report, weights=True, fmt="mistral")
    if not msgs:
        return
    record = {"messages": _openai_messages(msgs)}
    problem = mistral_problem(record["messages"])
    if problem:
        report.skip(f"mistral: {problem}", sample.id)
        return
    yield "chat", record


def _axolotl(sample: Sample, report: ExportReport) -> Records:
    if sample.kind == "document":
        text = "\n".join(t.text for t in sample.turns if t.text.strip())
        if text:
            yield "text", {"text": text}
        else:
            report.skip("empty document", sample.id)
        return
    msgs = _chat(sample, report, weights=True, fmt="axolotl")
    if msgs:
        rows = [{"role": m.role, "content": m.content, "training": m.trained} for m in msgs]
        yield "chat", {"messages": rows}


def _hf(sample: Sample, report: ExportReport) -> Records:
    msgs = _chat(sample, report, weights=False, fmt="hf")
    if msgs:
        rows = [{"role": m.role, "content": m.content} for m in msgs]
        yield "chat", {"id": sample.id, "conversation": sample.conversation, "messages": rows}


def _chat(sample: Sample, report: ExportReport, *, weights: bool, fmt: str) -> list[Msg] | None:
    if sample.kind == "document":
        report.skip(f"document ({fmt} has no completion text)", sample.id)
        return None
    msgs = to_messages(sample, weights=weights, report=report)
    if msgs is None:
        report.skip("no trained turn after the first", sample.id)
    return msgs


def mistral_problem(messages: list[Record]) -> str | None:
    """The first rule of the Mistral fine-tuning API this sample breaks, or None.

    Rules (docs.mistral.ai text fine-tuning + mistral_common's finetuning validator): roles are
    system/user/assistant only; at most one system message, and first; then user first, roles
    alternating user/assistant (Mistral's [INST] templates refuse anything else); the last message is
    from the assistant; no empty content; weight is 0 or 1 and at least one reply has weight 1.
    """
    if not messages:
        return "no messages"
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant"):
            return f"role {m.get('role')!r} not allowed (system, user, assistant)"
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return "empty content"
        if m["role"] == "assistant" and m.get("weight", 1) not in (0, 1):
            return "weight is not 0 or 1"
    rest = messages[1:] if messages[0]["role"] == "system" else messages
    if any(m["role"] == "system" for m in rest):
        return "system message not first, or more than one"
    if not rest or rest[0]["role"] != "user":
        return "first message after the system prompt is not from the user"
    if any(a["role"] == b["role"] for a, b in itertools.pairwise(rest)):
        return "roles do not alternate user/assistant"
    if rest[-1]["role"] != "assistant":
        return "last message is not from the assistant"
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in rest):
        return "no assistant message with weight 1"
    return None


# ---------------------------------------------------------------------------------------------------
# Writers: each fills a fresh folder; `export_samples` makes that atomic.

Writer = Callable[[Iterable[Sample], Path, ExportReport], None]
RecordFn = Callable[[Sample, ExportReport], Records]


def _dumps(record: Record) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n"


class _Files:
    """Append-only JSONL files in the export folder, opened on first write (empty files never appear)."""

    def __init__(self, folder: Path, report: ExportReport) -> None:
        self.folder = folder
        self.report = report
        self.handles: dict[str, Any] = {}
        self.sizes: Counter[str] = Counter()

    def write(self, name: str, line: bytes) -> None:
        if name not in self.handles:
            self.handles[name] = (self.folder / name).open("wb")
            self.report.files[name] = 0
        self.handles[name].write(line)
        self.sizes[name] += len(line)
        self.report.files[name] += 1

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def _file_name(split: str, stream: str) -> str:
    return f"{split}.jsonl" if stream == "chat" else f"{split}_{stream}.jsonl"


def _jsonl_writer(records: RecordFn) -> Writer:
    def write(samples: Iterable[Sample], folder: Path, report: ExportReport) -> None:
        files = _Files(folder, report)
        try:
            for sample in samples:
                written = 0
                for stream, record in records(sample, report):
                    files.write(_file_name(sample.split, stream), _dumps(record))
                    written += 1
                if written:
                    report.samples[sample.split] += 1
        finally:
            files.close()

    return write


def _write_mistral(samples: Iterable[Sample], folder: Path, report: ExportReport) -> None:
    limits = MISTRAL_LIMITS
    files = _Files(folder, report)
    part = 1
    try:
        for sample in samples:
            for _, record in _mistral(sample, report):
                line = _dumps(record)
                if sample.split == "eval":
                    if files.sizes["eval.jsonl"] + len(line) > limits.max_eval_file_bytes:
                        full = f"mistral: validation file full ({limits.max_eval_file_bytes} bytes)"
                        report.skip(full, sample.id)
                        continue
                    files.write("eval.jsonl", line)
                else:
                    if len(line) > limits.max_train_file_bytes:
                        report.skip("mistral: one sample larger than the file size limit", sample.id)
                        continue
                    if files.sizes[f"train-{part:03d}.jsonl"] + len(line) > limits.max_train_file_bytes:
                        part += 1
                    files.write(f"train-{part:03d}.jsonl", line)
                report.samples[sample.split] += 1
    finally:
        files.close()
    if part == 1 and "train-001.jsonl" in report.files:
        # One file is the common case: give it the plain name the other formats use.
        os.replace(folder / "train-001.jsonl", folder / "train.jsonl")
        report.files = {("train.jsonl" if k == "train-001.jsonl" else k): v for k, v in report.files.items()}


def _write_axolotl(samples: Iterable[Sample], folder: Path, report: ExportReport) -> None:
    _jsonl_writer(_axolotl)(samples, folder, report)
    (folder / "axolotl.yaml").write_text(_axolotl_config(report), encoding="utf-8")


def _axolotl_config(report: ExportReport) -> str:
    """The `datasets:` entries for the files written (paths absolute: axolotl resolves from its cwd)."""
    chat = (
        "    type: chat_template\n"
        "    field_messages: messages\n"
        "    message_property_mappings:\n"
        "      role: role\n"
        "      content: content\n"
        "    roles_to_train: [assistant]\n"
        "    train_on_eos: turn\n"
        "    message_field_training: training\n"
    )
    text = "    type: completion\n    field: text\n"
    base = report.out.resolve()
    out = [
        "# Written by `twinlm export-data --format axolotl`: merge these entries into your axolotl config.",
        "# Each message's `training` flag decides what is learned; roles_to_train is the fallback.",
    ]
    for key, split in (("datasets", "train"), ("test_datasets", "eval")):
        entries = [
            f"  - path: {base / name}\n    ds_type: json\n    split: train\n{body}"
            for name, body in ((f"{split}.jsonl", chat), (f"{split}_text.jsonl", text))
            if name in report.files
        ]
        if entries:
            out.append(f"{key}:\n" + "".join(entries).rstrip("\n"))
    return "\n".join(out) + "\n"


def _write_hf(samples: Iterable[Sample], folder: Path, report: ExportReport) -> None:
    # Rows are collected in memory: Dataset.from_generator would write to the user's HF cache.
    import datasets
    from datasets import Dataset, DatasetDict, Features, List, Value

    rows: dict[str, list[Record]] = {"train": [], "validation": []}
    for sample in samples:
        for _, record in _hf(sample, report):
            rows["train" if sample.split == "train" else "validation"].append(record)
            report.samples[sample.split] += 1
    message = {"role": Value("string"), "content": Value("string")}
    features = Features({"id": Value("string"), "conversation": Value("string"), "messages": List(message)})
    columns = list(features)
    data = DatasetDict(
        {
            # from_dict, not from_list: from_list loses the columns of an empty split.
            split: Dataset.from_dict({c: [row[c] for row in items] for c in columns}, features=features)
            for split, items in rows.items()
        }
    )
    report.files = {split: len(items) for split, items in rows.items()}
    shown = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        # An empty split still gets one (empty) shard: with none, load_from_disk fails on it.
        data.save_to_disk(str(folder), num_shards={s: 1 for s, items in rows.items() if not items} or None)
    finally:
        if shown:
            datasets.enable_progress_bars()


FORMATS: dict[str, Writer] = {
    "sharegpt": _jsonl_writer(_sharegpt),
    "alpaca": _jsonl_writer(_alpaca),
    "openai": _jsonl_writer(_openai),
    "mistral": _write_mistral,
    "axolotl": _write_axolotl,
    "hf": _write_hf,
}


# ---------------------------------------------------------------------------------------------------


def export_samples(
    samples: Iterable[Sample], fmt: str, out: Path, *, style: str = "alternating"
) -> ExportReport:
    """Write `samples` as `fmt` into the folder `out` (replaced whole, atomically); see the module doc."""
    writer = FORMATS.get(fmt)
    if writer is None:
        raise TwinError(f"export-data: unknown format {fmt!r}; use one of: {', '.join(sorted(FORMATS))}")
    if style not in STYLES:
        raise TwinError(
            f"export-data: style {style!r} is not available for {fmt} (user/assistant roles only); "
            f"use {' or '.join(STYLES)}"
        )
    out = Path(out)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = ExportReport(format=fmt, out=out, style=style)
    # mkdtemp makes it 0700: the export holds private text, readable by its owner only (twinlm.privacy).
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        writer(samples, tmp, report)
        if not sum(report.samples.values()):
            why = "; ".join(f"{n} {reason}" for reason, n in sorted(report.skipped.items()))
            raise TwinError(f"export-data: nothing to export as {fmt} ({why or 'no samples given'})")
        (tmp / MANIFEST).write_bytes(report.to_json())
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _check_replaceable(out: Path) -> None:
    # Never delete a folder this command did not make (e.g. `--out export/` next to a GGUF model).
    if out.exists() and not out.is_dir():
        raise TwinError(f"export-data: {out} is a file; give a folder path for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise TwinError(
            f"export-data: {out} is not empty and was not written by export-data; "
            "choose a new or empty folder"
        )


def _replace_folder(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old)  # onto the empty placeholder folder: POSIX rename allows that
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
