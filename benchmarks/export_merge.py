"""`make bench`, merge section: twinlm's shard-wise merge against peft's `merge_and_unload` + save_pretrained.

Input: a random-initialised Llama-architecture model of about `--size` billion parameters (default 1.1:
TinyLlama's shape, hidden 2048, 22 layers, vocabulary 32,000), stored in bf16 as a hub model is, in
safetensors shards of about 1 GB; and a random LoRA adapter (r 16, alpha 32, fp32 as twinlm saves it) on
q, k, v, o, gate, up and down of every layer, saved as a twinlm run folder.

- **twinlm**: `twinlm.export.merge.merge_run(run, out)`: one base tensor read, merged and written at a time.
- **peft**: what the peft docs show: `AutoModelForCausalLM.from_pretrained(base, dtype=bfloat16)`,
  `PeftModel.from_pretrained`, `merge_and_unload()`, `save_pretrained(out)` (same shard size).

Each runs in its own child process (one at a time, nothing else measured alongside), which reports its
own peak RSS (`getrusage`) and the wall time of the merge and save (imports excluded). The two outputs are
then compared tensor by tensor. Target (issue 10): twinlm's peak RSS under half of peft's.

    python benchmarks/export_merge.py               # ~1.1B parameters (needs ~7 GB of disk, ~5 GB RAM)
    python benchmarks/export_merge.py --size 0.05   # a quick check
    python benchmarks/export_merge.py --record      # also append the table to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 16, 32
VOCAB = 32_000


def shape_for(size_b: float) -> dict[str, int]:
    """A Llama config of about `size_b` billion parameters: TinyLlama's widths, narrower when small."""
    if size_b >= 0.5:
        hidden, inter, heads = 2048, 5632, 32
    elif size_b >= 0.15:
        hidden, inter, heads = 1024, 2816, 16
    else:
        hidden, inter, heads = 512, 1408, 8
    kv = 4
    per_layer = 2 * hidden * hidden + 2 * hidden * (hidden * kv // heads) + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((size_b * 1e9 - 2 * VOCAB * hidden) / per_layer))
    return {"hidden": hidden, "inter": inter, "heads": heads, "kv": kv, "layers": layers}


def make_model(folder: Path, size_b: float, shard_bytes: int) -> int:
    """Write the random bf16 base in shards (one shard's tensors in memory at a time); returns parameters."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    s = shape_for(size_b)
    h, kv_dim = s["hidden"], s["hidden"] * s["kv"] // s["heads"]
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, h))]
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv_dim, h)),
            (p + "self_attn.v_proj.weight", (kv_dim, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (s["inter"], h)),
            (p + "mlp.up_proj.weight", (s["inter"], h)),
            (p + "mlp.down_proj.weight", (h, s["inter"])),
        ]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (VOCAB, h))]
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = 0
    for name, shape in shapes:
        n = 2 * torch.Size(shape).numel()
        if groups[-1] and used + n > shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append((name, shape))
        used += n
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for k, group in enumerate(groups, start=1):
        file = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shape in group:
            if len(shape) == 1:
                tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
            else:
                tensors[name] = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
            weight_map[name] = file
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        del tensors
    total = sum(torch.Size(shape).numel() for _, shape in shapes)
    index = {"metadata": {"total_size": 2 * total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=h,
        intermediate_size=s["inter"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    config.save_pretrained(folder)
    return total


def make_run(workspace: Path, base: Path) -> Path:
    """A twinlm run folder whose final/ is a random LoRA adapter of `base` (A and B both non-zero)."""
    import torch
    from peft import LoraConfig
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = workspace / "runs" / "bench"
    final = run / "final"
    final.mkdir(parents=True)
    generator = torch.Generator().manual_seed(1)
    adapter = {}
    index = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    for name, file in index.items():
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] in TARGETS:
            with safe_open(str(base / file), "pt") as f:
                out_dim, in_dim = f.get_slice(name).get_shape()
            prefix = f"base_model.model.{module}"
            adapter[f"{prefix}.lora_A.weight"] = (
                torch.randn((RANK, in_dim), generator=generator) / in_dim**0.5
            )
            adapter[f"{prefix}.lora_B.weight"] = torch.randn((out_dim, RANK), generator=generator) * 0.01
    save_file(adapter, str(final / "adapter_model.safetensors"), metadata={"format": "pt"})
    LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=TARGETS,
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(base),
    ).save_pretrained(str(final))
    record = {
        "twinlm_run": 1,
        "model": str(base),
        "config": {"train": {"method": "lora"}},
        "template_style": "named",
    }
    (run / "config.json").write_text(json.dumps(record))
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "tokenizer_config.json").write_text("{}")  # merge copies it; not part of the work
    return run


def child(kind: str, run: Path, out: Path, shard_bytes: int) -> None:
    """One measured merge, in this process; prints its time and peak RSS as JSON."""
    if kind == "twinlm":
        import torch  # imported before the clock starts, as on the peft side

        import twinlm.prepare.persona
        import twinlm.train.checkpoint  # noqa: F401
        from twinlm.export.merge import merge_run

        start = time.perf_counter()
        merge_run(run, out)
    else:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = json.loads((run / "config.json").read_text())["model"]
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
        model = PeftModel.from_pretrained(model, str(run / "final"))
        merged = model.merge_and_unload()
        merged.save_pretrained(str(out), max_shard_size=shard_bytes)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb}))


def compare(ours: Path, theirs: Path) -> dict[str, float]:
    """Tensor by tensor: how many are bit-identical, and the largest absolute difference."""
    from safetensors import safe_open

    def files(folder: Path) -> dict[str, Path]:
        found = {}
        for file in folder.glob("*.safetensors"):
            with safe_open(str(file), "pt") as f:
                found.update(dict.fromkeys(f.keys(), file))
        return found

    a, b = files(ours), files(theirs)
    if set(a) != set(b):
        raise SystemExit(f"the outputs hold different tensors: {sorted(set(a) ^ set(b))[:5]}")
    same, worst = 0, 0.0
    for name in sorted(a):
        with safe_open(str(a[name]), "pt") as f, safe_open(str(b[name]), "pt") as g:
            x, y = f.get_tensor(name), g.get_tensor(name)
        same += int(x.dtype == y.dtype and bool((x == y).all()))
        worst = max(worst, float((x.float() - y.float()).abs().max()))
    return {"tensors": len(a), "identical": same, "max_abs_diff": worst}


def _measure(kind: str, run: Path, out: Path, shard_bytes: int) -> dict[str, float]:
    return _child_process(kind, run, out, shard_bytes)


def _child_process(kind: str, *args: object) -> dict:
    """Run one step in a fresh process and return the JSON it prints last. Everything heavy happens in
    children: this process stays small, since a child's peak RSS (ru_maxrss) starts from its parent's
    at fork."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def section(size_b: float, shard_mb: int | None, keep: Path | None = None) -> list[str]:
    """Build the inputs, measure both merges, and return the markdown table."""
    root = Path(keep or tempfile.mkdtemp(prefix="twinlm-merge-bench-"))
    try:
        params_guess = size_b * 1e9
        shard_bytes = (
            shard_mb or (1024 if size_b >= 0.5 else max(1, int(params_guess * 2 / 4 / 2**20)))
        ) * 2**20
        base = root / "base"
        if not (base / "config.json").is_file():
            print(f"writing a random {size_b}B Llama in {root} ...", file=sys.stderr, flush=True)
            shutil.rmtree(base, ignore_errors=True)
            _child_process("make-model", base, size_b, shard_bytes)
        shutil.rmtree(root / "runs", ignore_errors=True)
        run = root / "runs" / "bench"
        _child_process("make-run", root, base)
        config = json.loads((base / "config.json").read_text())
        index = json.loads((base / "model.safetensors.index.json").read_text())
        params = index["metadata"]["total_size"] // 2
        shards = len(set(index["weight_map"].values()))
        results = {}
        for kind in ("twinlm", "peft"):
            out = root / f"out-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            print(f"merging with {kind} ...", file=sys.stderr, flush=True)
            results[kind] = _measure(kind, run, out, shard_bytes)
        check = _child_process("compare", root / "out-twinlm", root / "out-peft")
        largest = max(p.stat().st_size for p in base.glob("*.safetensors"))
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    ours, theirs = results["twinlm"], results["peft"]
    lines = [
        f"### Merge, {datetime.now(UTC).date()} ({_cpu_name()}, Python {platform.python_version()})",
        "",
        f"Random Llama-architecture model, {params / 1e9:.2f}B parameters (hidden {config['hidden_size']}, "
        f"{config['num_hidden_layers']} layers), bf16 in {shards} safetensors shards of at most "
        f"{shard_bytes / 2**30:.2f} GiB; random LoRA r {RANK} on {', '.join(TARGETS)}.",
        "",
        "| merge | seconds | peak RSS |",
        "| --- | --- | --- |",
        f"| twinlm merge_run (shard by shard) | {ours['seconds']:,.1f} | {ours['peak_rss_mb']:,.0f} MiB |",
        f"| peft merge_and_unload + save_pretrained | {theirs['seconds']:,.1f} "
        f"| {theirs['peak_rss_mb']:,.0f} MiB |",
        "",
        f"Peak RSS twinlm / peft: {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f} (target: under 0.5); "
        f"time {ours['seconds'] / theirs['seconds']:.2f}x peft's. Outputs: {check['identical']}/"
        f"{check['tensors']} tensors bit-identical, max abs difference {check['max_abs_diff']:.3g}. "
        f"Largest base shard: {largest / 2**20:,.0f} MiB.",
    ]
    return lines


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=float, default=1.1, help="parameters, in billions (default 1.1)")
    parser.add_argument(
        "--shard-mb", type=int, help="base shard size in MiB (default 1024; a quarter when small)"
    )
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (the base is reused)")
    parser.add_argument("--record", action="store_true", help="append the results to benchmarks/RESULTS.md")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "make-model":
            print(json.dumps({"params": make_model(Path(rest[0]), float(rest[1]), int(rest[2]))}))
        elif kind == "make-run":
            make_run(Path(rest[0]), Path(rest[1]))
            print("{}")
        elif kind == "compare":
            print(json.dumps(compare(Path(rest[0]), Path(rest[1]))))
        else:
            child(kind, Path(rest[0]), Path(rest[1]), int(rest[2]))
        return
    table = "\n".join(section(args.size, args.shard_mb, args.keep)) + "\n"
    print("\n" + table)
    if args.record:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + table)


if __name__ == "__main__":
    main()
