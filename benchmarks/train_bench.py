"""`make bench`, train section: tokens/s of `twinlm train` (packed) against the naive HF recipe.

Both sides fine-tune the tiny preset (Mistral architecture) with the same LoRA adapter (r 16,
alpha 32, dropout 0.05, all linear layers), fp32, learning rate 2e-4, on the same dataset: the one
`twinlm build` makes from a generated 20,000-message Telegram export, i.e. real chat-session
lengths (many short sessions, a long tail).

- **twinlm**: `twinlm.train.loop.train`, packing on (padding-free rows of at most 2,048 tokens,
  positions restarting per sample, block-diagonal attention), grad_accum 1.
- **naive**: what a user writes from the HF docs: the same model + `peft.get_peft_model`,
  `transformers.Trainer`, `DataCollatorForSeq2Seq` padding each batch to its longest sample (labels
  padded with -100), random batches of about as many samples as one packed twinlm row holds.

Each side runs in its own child process pinned to one core with one torch thread. Timed: the wall
clock from the end of the last warm-up step to the end of the last step, so model loading, the
first steps (allocator and kernel warm-up), eval and the final save are excluded. Counted: real
tokens only (no padding) of the timed steps, so both figures are the same unit.
"""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BATCH_TOKENS = 2048
LEARNING_RATE = 2e-4
SEED = 42


def prepare(workspace: Path) -> Path:
    """Build the dataset of `workspace` (its corpus ingested already) into workspace/data, once."""
    data = workspace / "data"
    if not (data / "build.json").is_file():
        from twinlm.config import BuildConfig, TwinConfig
        from twinlm.corpus.db import Corpus
        from twinlm.prepare.build import build

        with Corpus(workspace / "corpus.db") as corpus:
            build(TwinConfig(build=BuildConfig(model="tiny")), corpus, data)
    return data


def length_stats(data: Path) -> dict[str, float]:
    """Tokens per training sample: the distribution both sides train on."""
    import numpy as np
    import pyarrow.parquet as pq

    column = pq.read_table(data / "train.parquet", columns=["input_ids"]).column("input_ids").combine_chunks()
    lengths = np.diff(column.offsets.to_numpy())
    p50, p95, p99 = np.percentile(lengths, [50, 95, 99])
    return {
        "samples": len(lengths),
        "mean": float(lengths.mean()),
        "median": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": int(lengths.max()),
    }


def child(kind: str, workspace: Path) -> None:
    """Runs in a child process (already pinned to one core): one measurement, printed as JSON.

    `kind` is `train-ours:STEPS:WARMUP` or `train-naive:STEPS:WARMUP:BATCH_SIZE`."""
    import torch

    torch.set_num_threads(1)  # one core: more threads would only contend for it
    name, *numbers = kind.split(":")
    steps, warmup = int(numbers[0]), int(numbers[1])
    if name == "train-ours":
        result = _ours(workspace, steps, warmup)
    elif name == "train-naive":
        result = _naive(workspace, steps, warmup, int(numbers[2]))
    else:
        raise SystemExit(f"unknown measurement {kind}")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _ours(
    workspace: Path,
    steps: int,
    warmup: int,
    *,
    method: str = "lora",
    precision: str = "fp32",
    checkpointing: bool = False,
    attention: str = "auto",
) -> dict[str, Any]:
    """`twinlm train` on workspace/data (whose build.json names the model), timed per step."""
    from twinlm.config import BuildConfig, LoraConfig, TrainConfig, TwinConfig
    from twinlm.train.data import load_split, pack
    from twinlm.train.loop import train
    from twinlm.train.metrics import read_metrics

    config = TwinConfig(
        build=BuildConfig(model="tiny"),
        train=TrainConfig(
            method=method,
            lora=LoraConfig(r=16, alpha=32, dropout=0.05, target_modules="all-linear"),
            learning_rate=LEARNING_RATE,
            batch_tokens=BATCH_TOKENS,
            grad_accum=1,
            max_steps=steps,
            packing=True,
            precision=precision,
            gradient_checkpointing=checkpointing,
            attention=attention,
            seed=SEED,
            log_every=1,  # the per-step token counts come from metrics.jsonl
            eval_every=steps,  # eval and save only after the last step, outside the timed span
            save_every=steps,
        ),
    )
    run_name = "bench-train"
    shutil.rmtree(workspace / "runs" / run_name, ignore_errors=True)
    ends: dict[int, float] = {}

    def on_step(step: int, _total: int, _loss: float, _speed: float) -> None:
        _synchronize()
        ends[step] = time.perf_counter()

    result = train(config, workspace, run_name, on_step=on_step)
    metrics = [e for e in read_metrics(result.run_dir) if e["split"] == "train"]
    seen = {e["step"]: e["tokens"] for e in metrics}
    losses = {e["step"]: e["loss"] for e in metrics}
    shutil.rmtree(result.run_dir, ignore_errors=True)
    bins = pack(load_split(workspace / "data", "train"), BATCH_TOKENS, SEED, 0)
    return {
        "steps": steps - warmup,
        "tokens": seen[steps] - seen[warmup],
        "padded_tokens": seen[steps] - seen[warmup],  # packed rows hold no padding
        "seconds": ends[steps] - ends[warmup],
        "samples_per_step": sum(len(b) for b in bins) / len(bins),
        "first_loss": losses[min(losses)],  # same data and seed: every correct kernel starts alike
    }


class _CountingCollator:
    """Wraps the user's collator only to count what each batch holds; batch i is step i + 1."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.inner = inner
        self.real: list[int] = []
        self.padded: list[int] = []

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        self.real.append(int(batch["attention_mask"].sum()))
        self.padded.append(int(batch["input_ids"].numel()))
        return batch


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()  # GPU work is asynchronous: a step ends when its kernels do


def _naive(
    workspace: Path, steps: int, warmup: int, batch_size: int, *, model_path: str | None = None
) -> dict[str, Any]:
    """The plain recipe on the same data and model: bf16 on a GPU that supports it, else fp32."""
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from twinlm.models import resolve_model

    data = workspace / "data"
    tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
    table = pq.read_table(data / "train.parquet", columns=["input_ids", "labels"])
    dataset = Dataset.from_dict(table.to_pydict())
    torch.manual_seed(SEED)
    gpu = torch.cuda.is_available()
    bf16 = gpu and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(
        model_path or resolve_model("tiny", workspace),
        dtype=torch.bfloat16 if bf16 else torch.float32,
        attn_implementation="sdpa",
    ).to("cuda" if gpu else "cpu")
    lora = LoraConfig(
        task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"
    )
    model = get_peft_model(model, lora)
    collator = _CountingCollator(
        DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
    )
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _synchronize()
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            learning_rate=LEARNING_RATE,
            lr_scheduler_type="cosine",
            warmup_steps=int(0.03 * steps),
            max_steps=steps,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            use_cpu=not gpu,
            bf16=bf16,
            seed=SEED,
            disable_tqdm=True,
        )
        Trainer(
            model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[Clock()]
        ).train()
    return {
        "steps": steps - warmup,
        "tokens": sum(collator.real[warmup:steps]),
        "padded_tokens": sum(collator.padded[warmup:steps]),
        "seconds": ends[steps - 1] - ends[warmup - 1],
        "samples_per_step": batch_size,
    }


def section(
    workspace: Path, quick: bool, measure: Callable[[str, Path], dict[str, float]], header: str
) -> list[str]:
    """The train section's markdown lines; `measure(kind, workspace)` runs one child."""
    stats = length_stats(prepare(workspace))
    steps, warmup = (30, 5) if quick else (120, 20)
    ours = measure(f"train-ours:{steps}:{warmup}", workspace)
    batch_size = max(1, round(ours["samples_per_step"]))
    naive = measure(f"train-naive:{steps}:{warmup}:{batch_size}", workspace)
    lines = [
        header,
        "",
        f"Dataset: `twinlm build` of a generated 20,000-message Telegram export, tiny tokenizer: "
        f"{stats['samples']:,} training samples, tokens per sample mean {stats['mean']:.0f}, "
        f"median {stats['median']:.0f}, p95 {stats['p95']:.0f}, p99 {stats['p99']:.0f}, "
        f"max {stats['max']:,}. Tiny Mistral model, LoRA r 16, fp32, one core, "
        f"{steps - warmup} timed steps after {warmup} warm-up steps.",
        "",
        "| recipe | samples/step | real tokens/s | padding | steps/s | peak RSS |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows = (
        (f"twinlm, packed ({BATCH_TOKENS:,}-token rows)", ours),
        (f"naive: Trainer, pad to longest, batch {batch_size}", naive),
    )
    for label, r in rows:
        padding = 1 - r["tokens"] / r["padded_tokens"]
        lines.append(
            f"| {label} | {r['samples_per_step']:.1f} | {r['tokens'] / r['seconds']:,.0f} | {padding:.0%} "
            f"| {r['steps'] / r['seconds']:.2f} | {r['peak_rss_mb']:,.0f} MiB |"
        )
    ratio = (ours["tokens"] / ours["seconds"]) / (naive["tokens"] / naive["seconds"])
    lines.append(f"\ntwinlm / naive (real tokens/s): {ratio:.2f}x.")
    return lines
