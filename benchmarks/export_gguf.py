"""GGUF conversion speed and memory: twinlm against llama.cpp's own converter and a plain file copy.

A random Llama-architecture model (TinyLlama-1.1B's shape at the default `--size 1.1`: hidden 2048,
22 layers, GQA 32/4, vocabulary 32,000, bfloat16 safetensors as `twinlm merge` writes them) with a
SentencePiece tokenizer.model (what llama.cpp's converter needs) is converted to f16 three ways, each
in its own child process (time from start to exit, peak RSS of that process alone):

- **twinlm**: `twinlm.export.gguf.convert_to_gguf(..., qtype="f16")`;
- **llama.cpp**: `convert_hf_to_gguf.py --outtype f16` from the llama-cpp-python sdist (vendor/llama.cpp);
- **copy**: the safetensors bytes read and written in 16 MiB blocks (what any converter must at least do).

The tensor data of the two GGUF files is then compared byte for byte (tensor by tensor, by name), and
the sizes of the other types are recorded (q8_0 by twinlm, k-quants by llama.cpp's quantizer).
Targets (issue 10): twinlm within 1.5x of the copy time and no slower than llama.cpp's converter.

    python benchmarks/export_gguf.py                 # ~1.1B parameters (needs ~8 GB of disk)
    python benchmarks/export_gguf.py --size 0.2      # a smaller model, for a quick check
    python benchmarks/export_gguf.py --no-quantize   # skip the q8_0 / k-quant sizes
    python benchmarks/export_gguf.py --record        # append the table to benchmarks/RESULTS.md
    python benchmarks/export_gguf.py --repeat 3      # each converter 3 times in turn, the fastest kept

The sdist is looked for in benchmarks/.data, /tmp and pip's cache, else fetched with
`pip download --no-deps --no-binary :all: llama-cpp-python==<installed version>` (`--sdist PATH` to give it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
ROOT = HERE.parent
HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 2048, 5632, 32, 4, 32000


# --- the model ----------------------------------------------------------------------------------


def _layer_params() -> int:
    head_dim = HIDDEN // HEADS
    return 2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV_HEADS * head_dim + 3 * HIDDEN * FFN + 2 * HIDDEN


def write_model(dest: Path, size_b: float, seed: int = 0) -> tuple[Path, int]:
    """A random Llama model of about `size_b` billion parameters in `dest`; returns (folder, parameters)."""
    layers = max(1, round((size_b * 1e9 - 2 * VOCAB * HIDDEN) / _layer_params()))
    head_dim = HIDDEN // HEADS
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (KV_HEADS * head_dim, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * head_dim, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (FFN, HIDDEN),
            p + "mlp.up_proj.weight": (FFN, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, FFN),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        }
    shapes |= {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    dest.mkdir(parents=True, exist_ok=True)
    _write_safetensors(dest / "model.safetensors", shapes, np.random.default_rng(seed))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": VOCAB,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    _tokenizer(dest)
    return dest, sum(int(np.prod(s)) for s in shapes.values())


def _write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> None:
    # Streamed: one tensor in memory at a time, bfloat16 as the top half of float32 normals.
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for shape in shapes.values():
            if len(shape) == 1:
                data = np.ones(shape, np.float32) + rng.standard_normal(shape, np.float32) * 0.1
            else:
                data = rng.standard_normal(shape, np.float32) * 0.02
            f.write((data.view(np.uint32) >> 16).astype(np.uint16).tobytes())


def _tokenizer(dest: Path) -> None:
    # A SentencePiece BPE tokenizer.model plus its tokenizer.json, shaped like Llama 2 / Mistral's.
    sys.path.insert(0, str(ROOT / "tests" / "export"))
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_families import _sentencepiece_tokenizer

    _sentencepiece_tokenizer("mistral", dest)


# --- llama.cpp's converter ----------------------------------------------------------------------


def find_converter(sdist: Path | None) -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist, unpacked under benchmarks/.data."""
    from importlib.metadata import version

    ver = version("llama-cpp-python")
    folder = DATA / f"llama.cpp-{ver}"
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    name = f"llama_cpp_python-{ver}.tar.gz"
    candidates = [sdist] if sdist else []
    candidates += [DATA / name, *Path("/tmp").glob(f"**/{name}")]
    cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    if cache.returncode == 0 and cache.stdout.strip():
        candidates += Path(cache.stdout.strip()).glob(f"**/{name}")
    found = next((c for c in candidates if c and c.is_file()), None)
    if found is None:
        DATA.mkdir(exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, f"llama-cpp-python=={ver}", "-d", str(DATA)], check=True)
        found = DATA / name
    prefix = f"llama_cpp_python-{ver}/vendor/llama.cpp/"
    keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    DATA.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=DATA))
    with tarfile.open(found) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(keep)
        ]
        tar.extractall(tmp, members=members, filter="data")
    (tmp / prefix).rename(folder)
    shutil.rmtree(tmp)
    return folder


# --- measuring ----------------------------------------------------------------------------------


def _run(cmd: list[str], out: Path) -> dict[str, float]:
    """Wall time, CPU time (user + system) and peak RSS of one child process (its own, from wait4).

    Each run starts without its output file `out`, every converter alike: one that truncates the file
    of the previous run (the copy, llama.cpp's converter) frees its page-cache pages before writing,
    one that writes a temporary file and renames it (twinlm) only after, and the kernel's cost of
    writing into the page cache varied here (a VM) from 0.2 to 2.3 s of system time per GiB."""
    out.unlink(missing_ok=True)
    os.sync()  # the previous run's dirty pages are written before this one starts
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{err[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": usage.ru_maxrss / 1024}


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The fastest of repeated runs (the least disturbed by other work), with the highest peak RSS."""
    fastest = min(runs, key=lambda r: r["seconds"])
    return fastest | {"peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": len(runs)}


def _child(kind: str, src: str, out: str) -> None:
    if kind == "write":  # here, so that the parent stays small: a child's peak RSS starts at its parent's
        _, params = write_model(Path(out), float(src))
        print(params)
    elif kind == "twinlm":
        from twinlm.export.gguf import convert_to_gguf

        convert_to_gguf(Path(src), Path(out), qtype="f16")
    elif kind == "copy":
        with open(src, "rb", buffering=0) as f, open(out, "wb", buffering=0) as g:
            buf = bytearray(16 << 20)
            view = memoryview(buf)
            while n := f.readinto(buf):
                g.write(view[:n])


def compare_tensors(a: Path, b: Path) -> tuple[int, int, list[str]]:
    """(identical, compared, names that differ or exist in one file only) over the two GGUFs' tensors."""
    import gguf

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    differ = sorted(set(ta) ^ set(tb))
    same = 0
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        if x.tensor_type == y.tensor_type and np.asarray(x.data).tobytes() == np.asarray(y.data).tobytes():
            same += 1
        else:
            differ.append(name)
    return same, len(set(ta) & set(tb)), differ


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=float, default=1.1, help="parameters, in billions (default 1.1)")
    parser.add_argument("--sdist", type=Path, help="the llama-cpp-python sdist (.tar.gz)")
    parser.add_argument("--no-quantize", action="store_true", help="skip the q8_0 and k-quant sizes")
    parser.add_argument("--record", action="store_true", help="append the results to benchmarks/RESULTS.md")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each converter N times in turn and keep the fastest"
    )
    parser.add_argument("--workdir", type=Path, help="where the model and GGUFs go (default: a temp dir)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    converter = find_converter(args.sdist)
    work = Path(tempfile.mkdtemp(prefix="gguf-bench-", dir=args.workdir))
    try:
        print(f"writing a {args.size}B random Llama model ...", file=sys.stderr, flush=True)
        me = [sys.executable, __file__, "--child"]
        model = work / "model"
        params = int(
            subprocess.run(
                [*me, "write", str(args.size), str(model)], check=True, capture_output=True, text=True
            ).stdout.split()[-1]
        )
        src = model / "model.safetensors"
        # llama.cpp's converter runs with its own gguf-py (vendor/llama.cpp/gguf-py), as shipped.
        script = str(converter / "convert_hf_to_gguf.py")
        commands = {
            "twinlm": [*me, "twinlm", str(model), str(work / "twinlm-f16.gguf")],
            "llama.cpp": [
                sys.executable,
                script,
                str(model),
                "--outtype",
                "f16",
                "--outfile",
                str(work / "lc.gguf"),
            ],
            "copy": [*me, "copy", str(src), str(work / "copy.bin")],
        }
        outputs = {name: work / f for name, f in (("twinlm", "twinlm-f16.gguf"), ("llama.cpp", "lc.gguf"))}
        outputs["copy"] = work / "copy.bin"
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
        for _ in range(args.repeat):  # in turn, so that a disturbance hits all three alike
            for name, cmd in commands.items():
                runs[name].append(_run(cmd, outputs[name]))
        ours, theirs, copy = (_best(runs[name]) for name in commands)
        same, compared, differ = compare_tensors(work / "twinlm-f16.gguf", work / "lc.gguf")
        sizes = {"safetensors (bf16)": src.stat().st_size, "f16": (work / "twinlm-f16.gguf").stat().st_size}
        if not args.no_quantize:
            from twinlm.export.gguf import convert_to_gguf, quantize_gguf

            sizes["q8_0"] = convert_to_gguf(model, work / "q8_0.gguf", qtype="q8_0").stat().st_size
            (work / "q8_0.gguf").unlink()
            for q in ("q6_k", "q5_k_m", "q4_k_m"):
                sizes[q] = quantize_gguf(work / "twinlm-f16.gguf", work / f"{q}.gguf", q).stat().st_size
                (work / f"{q}.gguf").unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    gib = sizes["safetensors (bf16)"] / 2**30
    lines = [
        f"### GGUF f16 conversion, {datetime.now(UTC).date()} ({platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {params / 1e9:.2f}B parameters, {gib:.2f} GiB bf16)",
        "",
        "| converter | seconds | CPU seconds | GiB/s (input) | peak RSS | vs copy | vs llama.cpp |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in (("twinlm", ours), ("llama.cpp convert_hf_to_gguf.py", theirs), ("file copy", copy)):
        lines.append(
            f"| {name} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {gib / r['seconds']:.2f} "
            f"| {r['peak_rss_mb']:,.0f} MiB "
            f"| {r['seconds'] / copy['seconds']:.2f}x | {r['seconds'] / theirs['seconds']:.2f}x |"
        )
    if args.repeat > 1:
        lines += [
            "",
            f"Seconds: the fastest of {args.repeat} runs each, taken in turn; peak RSS: the highest.",
        ]
    lines += [
        "",
        f"Tensor data, twinlm vs llama.cpp: {same}/{compared} tensors byte-identical"
        + (f"; differ or one-sided: {', '.join(differ[:10])}" if differ else ""),
        "",
        "| type | size |",
        "| --- | --- |",
        *(f"| {k} | {v / 2**30:.2f} GiB |" for k, v in sizes.items()),
    ]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.record:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + table)


if __name__ == "__main__":
    main()
