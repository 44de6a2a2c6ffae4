"""GPU training benchmark: the Mistral-7B architecture (random weights) at 2,048-token rows.

    python benchmarks/gpu_train.py            # on a CUDA machine; prints a markdown table
    python benchmarks/gpu_train.py --record   # and appends it to benchmarks/RESULTS.md
    python benchmarks/gpu_train.py --size tiny --steps 4 --warmup 1   # a CPU dry run of the script
    python benchmarks/gpu_train.py --attention  # the packed-row attention kernels compared (issue 8)

Measured, each in its own child process so peak memory is that run's own:

- twinlm LoRA, bf16, packed 2,048-token rows: real tokens/s and peak GPU memory;
- the naive recipe on the same model and data (transformers Trainer, bf16, pad to the longest sample
  of each batch, as many samples per batch as a packed row holds): real tokens/s and peak memory;
- twinlm QLoRA (4-bit NF4 base, gradient checkpointing): peak GPU memory, against the 10 GB a 12 GB
  consumer card leaves for training.

Reference: mistral-finetune publishes 5,720 tokens/s per H100 for Mistral-7B LoRA; the goal here is
8,000 tokens/s and at least 2x the naive recipe. Random weights train at the same speed as real ones:
the work per token is the architecture's. The data is `twinlm build` of the same generated
20,000-message Telegram export as `make bench`'s train section (real chat-session lengths), with the
tiny tokenizer's ids, which are valid ids of the 32,768-token vocabulary.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (the benchmarks folder is not a package)
import train_bench  # noqa: E402

SEQ = train_bench.BATCH_TOKENS  # 2,048 tokens per packed row
MISTRAL_FINETUNE_TOKENS_PER_S = 5720  # per H100, mistral-finetune's README

# Mistral-7B v0.3's architecture (its config.json), and a small one for a CPU dry run.
SIZES: dict[str, dict[str, Any]] = {
    "7b": dict(
        vocab_size=32768,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        sliding_window=None,
        rms_norm_eps=1e-5,
    ),
    "tiny": dict(
        vocab_size=32768,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        sliding_window=None,
    ),
}


def make_model(folder: Path, size: str) -> Path:
    """Random-initialised weights of the architecture, saved once as safetensors (bf16 on a GPU)."""
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig

    if (folder / "config.json").is_file():
        return folder
    gpu = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if gpu else "cpu"):  # initialising 7B weights on a CPU takes minutes
        model = AutoModelForCausalLM.from_config(
            MistralConfig(**SIZES[size]), dtype=torch.bfloat16 if gpu else torch.float32
        )
    tmp = folder.with_suffix(".partial")
    model.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def make_workspace(size: str) -> Path:
    """A workspace whose data/ is the benchmark dataset and whose build.json names the random model."""
    from gen_telegram import write_telegram_export

    workspace = bench.DATA / f"gpu-{size}"
    model = make_model(bench.DATA / f"mistral-{size}-random", size)
    n = 20_000
    export = bench._dataset(f"telegram-{n}.json", lambda p: write_telegram_export(p, n, full=True))
    source = train_bench.prepare(bench._build_workspace(export))
    if not (workspace / "data" / "build.json").is_file():
        shutil.copytree(source, workspace / "data.partial", dirs_exist_ok=True)
        info = json.loads((workspace / "data.partial" / "build.json").read_text(encoding="utf-8"))
        info["model"] = str(model)
        (workspace / "data.partial" / "build.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        (workspace / "data.partial").rename(workspace / "data")
    return workspace


def child(kind: str, workspace: Path) -> None:
    """One measurement here, printed as JSON. `kind`: ours:STEPS:WARMUP:METHOD[:ATTENTION] or
    naive:STEPS:WARMUP:BATCH."""
    import torch

    name, steps, warmup, extra, *attention = kind.split(":")
    if name == "ours":
        result = train_bench._ours(
            workspace,
            int(steps),
            int(warmup),
            method=extra,
            precision="auto",  # bf16 on a GPU that supports it
            checkpointing=extra == "qlora",  # what a 12 GB card needs at 2,048 tokens
            attention=attention[0] if attention else "auto",
        )
    else:
        info = json.loads((workspace / "data" / "build.json").read_text(encoding="utf-8"))
        result = train_bench._naive(workspace, int(steps), int(warmup), int(extra), model_path=info["model"])
    if torch.cuda.is_available():
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    else:
        result["peak_gib"] = result["peak_reserved_gib"] = 0.0
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(kind: str, workspace: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(workspace)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="7b")
    parser.add_argument(
        "--steps", type=int, default=40, help="optimizer steps per run (timed: after warm-up)"
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    parser.add_argument(
        "--attention",
        action="store_true",
        help="compare the packed-row attention kernels instead (twinlm_packed, SDPA with a block mask, "
        "FlexAttention with a document mask, flash_attention_2 where installed) on the LoRA run",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (dry run)"
    workspace = make_workspace(args.size)
    if args.attention:
        table = compare_attention(workspace, args, device)
        print(table)
        if args.record:
            with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
                f.write("\n" + table)
        return
    ours = measure(f"ours:{args.steps}:{args.warmup}:lora", workspace)
    batch_size = max(1, round(ours["samples_per_step"]))
    naive = measure(f"naive:{args.steps}:{args.warmup}:{batch_size}", workspace)
    qlora = measure(f"ours:{max(4, args.warmup + 2)}:{1}:qlora", workspace)

    def speed(r: dict[str, Any]) -> float:
        return r["tokens"] / r["seconds"]

    lines = [
        f"### GPU train, {datetime.now(UTC).date()} ({device}, torch {torch.__version__}, "
        f"Python {platform.python_version()})",
        "",
        f"Mistral-7B v0.3 architecture{' (TINY dry run)' if args.size == 'tiny' else ''}, random weights, "
        f"LoRA r 16 all linear layers, {SEQ:,}-token packed rows, {args.steps - args.warmup} timed steps "
        f"after {args.warmup} warm-up steps; data as in the CPU train section.",
        "",
        "| recipe | samples/step | real tokens/s | padding | peak GPU memory (allocated / reserved) |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows = (
        ("twinlm LoRA bf16, packed", ours),
        (f"naive: Trainer bf16, pad to longest, batch {batch_size}", naive),
        ("twinlm QLoRA (NF4, gradient checkpointing), packed", qlora),
    )
    for label, r in rows:
        padding = 1 - r["tokens"] / r["padded_tokens"]
        lines.append(
            f"| {label} | {r['samples_per_step']:.1f} | {speed(r):,.0f} | {padding:.0%} "
            f"| {r['peak_gib']:.1f} / {r['peak_reserved_gib']:.1f} GiB |"
        )
    lines += [
        "",
        f"twinlm / naive: {speed(ours) / speed(naive):.2f}x; twinlm / mistral-finetune's "
        f"{MISTRAL_FINETUNE_TOKENS_PER_S:,} tokens/s per H100: "
        f"{speed(ours) / MISTRAL_FINETUNE_TOKENS_PER_S:.2f}x; "
        f"QLoRA peak {qlora['peak_reserved_gib']:.1f} GiB reserved (target: 10 GB or less).",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.record:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + table)


def compare_attention(workspace: Path, args: argparse.Namespace, device: str) -> str:
    """The same LoRA run with each packed-row kernel: speed, memory, and the first step's loss (a kernel
    whose first loss differs from the others' attends across samples or drops some: not correct)."""
    import importlib.util

    import torch

    kernels = ["twinlm_packed", "sdpa"]
    if torch.cuda.is_available():  # FlexAttention has no backward pass on CPUs
        kernels.append("flex_attention")
        if importlib.util.find_spec("flash_attn") is not None:
            kernels.append("flash_attention_2")
    results = {k: measure(f"ours:{args.steps}:{args.warmup}:lora:{k}", workspace) for k in kernels}
    reference = results["twinlm_packed"]["first_loss"]
    lines = [
        f"### GPU attention kernels, {datetime.now(UTC).date()} ({device}, torch {torch.__version__})",
        "",
        f"Mistral-7B v0.3 architecture{' (TINY dry run)' if args.size == 'tiny' else ''}, random weights, "
        f"LoRA r 16, {SEQ:,}-token packed rows, {args.steps - args.warmup} timed steps after "
        f"{args.warmup} warm-up steps (FlexAttention compiles during warm-up).",
        "",
        "| kernel | real tokens/s | peak GPU memory (allocated / reserved) | first-step loss "
        "| vs twinlm_packed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kernel, r in results.items():
        speed = r["tokens"] / r["seconds"]
        base = results["twinlm_packed"]["tokens"] / results["twinlm_packed"]["seconds"]
        lines.append(
            f"| {kernel} | {speed:,.0f} | {r['peak_gib']:.1f} / {r['peak_reserved_gib']:.1f} GiB "
            f"| {r['first_loss']:.4f} | {speed / base:.2f}x |"
        )
    correct = [k for k, r in results.items() if abs(r["first_loss"] - reference) <= 1e-2 * abs(reference)]
    fastest = max(correct, key=lambda k: results[k]["tokens"] / results[k]["seconds"])
    lines += [
        "",
        f"Correct (first loss within 1% of twinlm_packed's): {', '.join(correct)}; fastest: {fastest}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
