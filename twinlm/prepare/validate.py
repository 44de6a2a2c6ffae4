"""`twinlm validate`: check a built dataset before any GPU time is spent, and estimate that time.

Reads only the dataset folder (samples.jsonl, train/eval.parquet, build.json): problems are found
where they are cheap to fix, by editing the corpus or twin.yaml and building again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from twinlm.errors import TwinError
from twinlm.prepare.sample import Sample

# Dense bf16 tensor throughput (TFLOP/s) from vendors' spec sheets, for the time estimate only.
GPU_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "T4": 65.0,
}
# Share of peak a fine-tuning run reaches in practice (model FLOPs utilisation).
MFU = 0.4
# Training FLOPs per token and parameter: forward 2, backward 4 (full); LoRA skips weight gradients.
# 4-bit bases add ~30% for dequantising. DoRA's extra work (the adapted weights' column norms) is per
# step, not per token: priced as LoRA.
FLOPS_PER_PARAM = {"full": 6.0, "lora": 4.0, "dora": 4.0, "qlora": 5.2, "qdora": 5.2}


@dataclass(slots=True)
class Validation:
    problems: Counter[str] = field(default_factory=Counter)  # must fix: the dataset would mis-train
    warnings: Counter[str] = field(default_factory=Counter)  # worth a look
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first sample ids
    samples: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    trained_tokens: dict[str, int] = field(default_factory=dict)
    max_length: int = 0

    def note(self, bucket: Counter[str], reason: str, sample_id: str) -> None:
        bucket[reason] += 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < 3:
            ids.append(sample_id)


def validate(folder: Path) -> Validation:
    """Check the dataset in `folder` (a `twinlm build` output)."""
    build_json = folder / "build.json"
    if not build_json.is_file():
        raise TwinError(f"{folder}: no dataset here (no build.json); run `twinlm build` first")
    info = orjson.loads(build_json.read_bytes())
    result = Validation(max_length=int(info["config"]["build"]["max_length"]))
    with open(folder / "samples.jsonl", "rb") as f:
        for line in f:
            sample = Sample.from_json(line)
            for turn in sample.turns:
                if not turn.text.strip():
                    result.note(result.problems, "empty turn", sample.id)
                if turn.speaker == "" and sample.kind != "document":
                    result.note(result.problems, "turn without a speaker", sample.id)
            if sample.kind != "document" and not sample.turns[-1].trained:
                result.note(result.warnings, "last turn not trained (context after the target)", sample.id)
    for split in ("train", "eval"):
        path = folder / f"{split}.parquet"
        table = pq.read_table(path, columns=["sample_id", "input_ids", "labels"])
        rows = table.to_pylist()
        result.samples[split] = len(rows)
        result.tokens[split] = sum(len(r["input_ids"]) for r in rows)
        result.trained_tokens[split] = sum(sum(1 for x in r["labels"] if x != -100) for r in rows)
        for row in rows:
            if len(row["input_ids"]) != len(row["labels"]):
                result.note(result.problems, "labels and input ids differ in length", row["sample_id"])
            if all(x == -100 for x in row["labels"]):
                result.note(result.problems, "nothing to train in a sample", row["sample_id"])
            if len(row["input_ids"]) > result.max_length:
                result.note(result.problems, "sample over max_length", row["sample_id"])
    if result.samples.get("eval", 0) == 0:
        result.warnings["no eval samples: no eval loss during training"] += 1
    return result


def estimate_hours(total_tokens: int, params_b: float, method: str, gpu: str, epochs: float = 1.0) -> float:
    """Rough training time: every token, trained or masked, goes through forward and backward."""
    if gpu not in GPU_TFLOPS:
        raise TwinError(f"unknown GPU {gpu!r}; choose one of: {', '.join(GPU_TFLOPS)}")
    if method not in FLOPS_PER_PARAM:
        raise TwinError(f"unknown method {method!r}; choose one of: {', '.join(FLOPS_PER_PARAM)}")
    flops = FLOPS_PER_PARAM[method] * params_b * 1e9 * total_tokens * epochs
    return flops / (GPU_TFLOPS[gpu] * 1e12 * MFU) / 3600
