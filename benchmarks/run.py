"""`make bench`: ingest throughput and peak memory, twinlm against a plain `json.load` + loop.

Each measurement runs in its own child process pinned to one core, so peak RSS is that run's own.
The baseline is what a glue script does: load the whole file, loop over the messages, pull out
author, time and text. twinlm's figure includes everything the baseline does not: detection,
the full parser rules and the SQLite upsert. The build section times `twinlm build` against the
tokenizer alone on the same texts, and compares its peak RSS at a tenth of the corpus and on the
single chat; the train section (train_bench.py) times `twinlm train` against the naive HF Trainer recipe.

    python benchmarks/run.py            # full sizes (1M-message Telegram, 5,000-conversation ChatGPT, 1 GB)
    python benchmarks/run.py --quick    # small sizes, a smoke run
    python benchmarks/run.py --record   # also append the table to benchmarks/RESULTS.md
    python benchmarks/run.py --only train  # one section: ingest, build or train
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
sys.path.insert(0, str(HERE))


def _child(kind: str, path: Path) -> None:
    """Runs in the child process: one measurement, printed as JSON."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    if kind.startswith("build-"):
        _child_build(kind, path)
        return
    if kind.startswith("train-"):
        from train_bench import child

        child(kind, path)
        return
    if kind == "twinlm":
        from twinlm.corpus.db import Corpus
        from twinlm.ingest import ingest
        from twinlm.model import ParseOptions
    start = time.perf_counter()  # after imports: both sides time reading the file, nothing else
    if kind == "twinlm":
        with tempfile.TemporaryDirectory() as tmp, Corpus(Path(tmp) / "corpus.db") as corpus:
            result = ingest([path], corpus, ParseOptions(timezone="UTC"))
            if result.failed:
                raise SystemExit(result.failed[0].error)
            messages = result.total().report.messages
            if corpus.count("messages") != messages:  # every message read must be one row: ids unique
                raise SystemExit(f"{corpus.count('messages')} rows for {messages} messages read")
    elif kind == "baseline-telegram":
        with open(path, encoding="utf-8") as f:
            export = json.load(f)
        full = "chats" in export
        chats = export["chats"]["list"] + export.get("left_chats", {}).get("list", []) if full else [export]
        rows = []
        for chat in chats:
            for m in chat["messages"]:
                if m.get("type") == "message":
                    text = (
                        m["text"]
                        if isinstance(m["text"], str)
                        else "".join(t if isinstance(t, str) else t.get("text", "") for t in m["text"])
                    )
                    rows.append((m["id"], m.get("from"), m.get("date_unixtime"), text))
        messages = len(rows)
    elif kind == "baseline-discord":
        with open(path, encoding="utf-8") as f:
            export = json.load(f)
        rows = [
            (m["id"], m["author"]["name"], m["timestamp"], m["content"])
            for m in export["messages"]
            if m.get("type") in ("Default", "Reply") and not m["author"].get("isBot")
        ]
        messages = len(rows)
    elif kind == "baseline-chatgpt":
        with open(path, encoding="utf-8") as f:
            export = json.load(f)
        rows = []
        for conversation in export:
            for node in conversation["mapping"].values():
                message = node.get("message")
                if message:
                    parts = message["content"].get("parts") or []
                    rows.append(
                        (
                            message["id"],
                            message["author"]["role"],
                            message.get("create_time"),
                            "".join(p for p in parts if isinstance(p, str)),
                        )
                    )
        messages = len(rows)
    else:
        raise SystemExit(f"unknown measurement {kind}")
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"messages": messages, "seconds": seconds, "peak_rss_mb": peak_mb}))


def _child_build(kind: str, workspace: Path) -> None:
    """Build the dataset of the benchmark workspace (`build-batched`; `build-per-sample` tokenizes one
    sample per call), or time the tokenizer alone on its message texts (`build-tokenizer`)."""
    from twinlm.config import BuildConfig, TwinConfig
    from twinlm.corpus.db import Corpus
    from twinlm.prepare.build import build

    if kind == "build-tokenizer":
        _child_tokenizer(workspace)
        return
    from transformers import AutoTokenizer  # noqa: F401  (loads torch: imported before timing, as in the tokenizer-only pass)

    # The full export's owner is `me`; a single chat's export does not say who exported it.
    me = ["Me Myself"] if "single" in workspace.name else []
    config = TwinConfig(me=me, build=BuildConfig(model="tiny"))
    with Corpus(workspace / "corpus.db") as corpus:
        messages = corpus.count("messages")
        start = time.perf_counter()
        result = build(
            config, corpus, workspace / f"data-{kind}", render_batch_size=1 if "per-sample" in kind else 256
        )
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    samples = sum(result.samples.values())
    print(json.dumps({"messages": messages, "seconds": seconds, "peak_rss_mb": peak_mb, "samples": samples}))


def _child_tokenizer(workspace: Path) -> None:
    """The fast tokenizer alone on every message text of the corpus, 256 texts per call: the ceiling a
    build's rate is compared with (issue 18). Reading the texts is not timed."""
    from transformers import AutoTokenizer

    from twinlm.corpus.db import Corpus
    from twinlm.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny", workspace)).backend_tokenizer
    with Corpus(workspace / "corpus.db") as corpus:
        messages = corpus.count("messages")
        texts = [row[0] for row in corpus.db.execute("SELECT coalesce(user_text, text) FROM messages")]
    start = time.perf_counter()
    for i in range(0, len(texts), 256):
        tokenizer.encode_batch(texts[i : i + 256], add_special_tokens=False)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"messages": messages, "seconds": seconds, "peak_rss_mb": peak_mb, "samples": 0}))


def _build_workspace(export: Path) -> Path:
    """A workspace whose corpus holds `export` (made once, cached) and the tiny tokenizer."""
    from twinlm.corpus.db import Corpus
    from twinlm.ingest import ingest
    from twinlm.model import ParseOptions
    from twinlm.models import resolve_model

    workspace = DATA / f"build-{export.stem}"
    if not (workspace / "corpus.db").exists():
        print(f"ingesting {export.name} for the build benchmark ...", file=sys.stderr, flush=True)
        tmp = workspace.with_suffix(".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        with Corpus(tmp / "corpus.db") as corpus:
            ingest([export], corpus, ParseOptions(timezone="UTC"))
        tmp.rename(workspace)
    resolve_model("tiny", workspace)
    return workspace


def _build_section(exports: dict[str, Path], quick: bool, runs: int) -> list[str]:
    """The build on the full export, against the tokenizer alone on the same texts; peak RSS against a
    build of an export a tenth its size and of the single-chat export (memory flat: issue 18).

    The tokenizer-only pass and the full build alternate `runs` times and the ratio is the median of
    the pairs': a shared VM's speed drifts by tens of percent over minutes, so one pass of each, minutes
    apart, can say anything (one such pair gave 0.70 where alternating pairs gave 0.47-0.54)."""
    full_workspace = _build_workspace(exports["full"])
    pairs = []
    for _ in range(runs):
        tokenizer = _measure("build-tokenizer", full_workspace)
        full = _measure("build-batched", full_workspace)
        pairs.append((tokenizer["seconds"] / full["seconds"], full, tokenizer))
    pairs.sort(key=lambda pair: pair[0])
    ratio, full, tokenizer = pairs[len(pairs) // 2]
    measured = {"full": full}
    for name in ("tenth", "single"):
        measured[name] = _measure("build-batched", _build_workspace(exports[name]))
    lines = [
        f"### Build, {datetime.now(UTC).date()} ({_cpu_name()}, Python {platform.python_version()}"
        f"{', QUICK' if quick else ''})",
        "",
        "Tiny tokenizer, one core, 256 texts per tokenizer call. The tokenizer-only pass tokenizes every "
        "message text of the full export's corpus (texts read before timing); it and the full build "
        + (
            f"alternate {runs} times, and the rows below are the pair with the median ratio."
            if runs > 1
            else "run once each."
        ),
        "",
        "| corpus | messages | samples | messages/s | seconds | peak RSS |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    titles = {
        "full": "Telegram full export",
        "tenth": "Telegram full export, a tenth",
        "single": "Telegram single chat",
    }
    for name, r in measured.items():
        lines.append(
            f"| {titles[name]} | {r['messages']:,} | {r['samples']:,} | {r['messages'] / r['seconds']:,.0f} "
            f"| {r['seconds']:,.1f} | {r['peak_rss_mb']:,.0f} MiB |"
        )
    t = tokenizer
    lines.append(
        f"| tokenizer only (full export's texts) | {t['messages']:,} | - | "
        f"{t['messages'] / t['seconds']:,.0f} | {t['seconds']:,.1f} | {t['peak_rss_mb']:,.0f} MiB |"
    )
    base = measured["tenth"]["peak_rss_mb"]
    single = measured["single"]["peak_rss_mb"]
    each = ", ".join(f"{r:.2f}" for r, _, _ in pairs)
    lines.append(
        f"\nBuild / tokenizer only: {ratio:.2f} (median of {runs}: {each}). Peak RSS minus the tenth's: full "
        f"{full['peak_rss_mb'] - base:+,.0f} MiB, single chat {single - base:+,.0f} MiB."
    )
    return lines


def _train_section(quick: bool) -> list[str]:
    """Tokens/s of `twinlm train` (packed) against the naive Trainer recipe: train_bench.py."""
    from train_bench import section

    from gen_telegram import write_telegram_export

    n = 20_000  # ~1,200 chat sessions: enough for the timed steps, and the same at --quick
    export = _dataset(f"telegram-{n}.json", lambda p: write_telegram_export(p, n, full=True))
    header = (
        f"### Train, {datetime.now(UTC).date()} ({_cpu_name()}, Python {platform.python_version()}"
        f"{', QUICK' if quick else ''})"
    )
    return section(_build_workspace(export), quick, _measure, header)


def _measure(kind: str, path: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} on {path.name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _dataset(name: str, make: object) -> Path:
    path = DATA / name
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        tmp = path.with_suffix(".partial")
        print(f"generating {name} ...", file=sys.stderr, flush=True)
        make(tmp)  # type: ignore[operator]
        tmp.rename(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small inputs: a smoke run, not a measurement")
    parser.add_argument("--record", action="store_true", help="append the results to benchmarks/RESULTS.md")
    parser.add_argument("--only", choices=("ingest", "build", "train"), help="run one section only")
    parser.add_argument(
        "--build-runs",
        type=int,
        default=3,
        help="times the full build and the tokenizer-only pass alternate (the ratio is their median)",
    )
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]))
        return

    from gen_chatgpt import write_chatgpt_export
    from gen_discord import write_discord_export
    from gen_telegram import write_telegram_export

    scale = 0.02 if args.quick else 1.0
    n_tg, n_gpt, n_big = int(1_000_000 * scale), max(50, int(5_000 * scale)), int(2_800_000 * scale)
    n_dc = int(500_000 * scale)
    cases = [
        (
            f"Telegram full export, {n_tg:,} messages",
            "baseline-telegram",
            _dataset(f"telegram-{n_tg}.json", lambda p: write_telegram_export(p, n_tg, full=True)),
        ),
        (
            f"ChatGPT export, {n_gpt:,} conversations",
            "baseline-chatgpt",
            _dataset(f"chatgpt-{n_gpt}.json", lambda p: write_chatgpt_export(p, n_gpt)),
        ),
        (
            f"Discord channel, {n_dc:,} messages",
            "baseline-discord",
            _dataset(f"discord-{n_dc}.json", lambda p: write_discord_export(p, n_dc)),
        ),
        (
            f"Telegram single chat, {n_big:,} messages",
            "baseline-telegram",
            _dataset(f"telegram-single-{n_big}.json", lambda p: write_telegram_export(p, n_big)),
        ),
    ]
    lines: list[str] = []
    if args.only in (None, "ingest"):
        lines += [
            f"### Ingest, {datetime.now(UTC).date()} ({platform.processor() or platform.machine()}, "
            f"{_cpu_name()}, Python {platform.python_version()}{', QUICK' if args.quick else ''})",
            "",
            "| input | size | twinlm msg/s | twinlm peak RSS | baseline msg/s | baseline peak RSS "
            "| speed ratio |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for title, baseline_kind, path in cases:
            ours = _measure("twinlm", path)
            base = _measure(baseline_kind, path)
            rate, base_rate = ours["messages"] / ours["seconds"], base["messages"] / base["seconds"]
            size_mib = path.stat().st_size / 2**20
            lines.append(
                f"| {title} | {size_mib:,.0f} MiB | {rate:,.0f} | {ours['peak_rss_mb']:,.0f} MiB "
                f"| {base_rate:,.0f} | {base['peak_rss_mb']:,.0f} MiB | {rate / base_rate:.2f}x |"
            )
            print(lines[-1], flush=True)
        lines.append("")
    if args.only in (None, "build"):
        n_tenth = n_tg // 10
        tenth = _dataset(f"telegram-{n_tenth}.json", lambda p: write_telegram_export(p, n_tenth, full=True))
        exports = {"full": cases[0][2], "tenth": tenth, "single": cases[3][2]}
        lines += _build_section(exports, args.quick, 1 if args.quick else args.build_runs)
    if args.only in (None, "train"):
        lines += [""] if lines else []
        lines += _train_section(args.quick)
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.record:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + table)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
