"""Where a build's time goes (issue 18): the build's own stages, each cumulative, one process each.

    python benchmarks/build_stages.py [WORKSPACE] [--rounds N]

WORKSPACE is one the build bench made (benchmarks/.data/build-telegram-1000000 by default: run
`python benchmarks/run.py --only build` once first). Each stage runs in its own process pinned to one
core, with the cycle collector paused as in the build, and includes the stages above it, through the
build's own functions:

  read       every conversation's messages from the corpus (select.chats)
  rules      + the message rules and redaction (build._cleaned)
  samples    + sessions, session rules, turns and prompts: the samples (build._samples_of)
  render     + rendering, tokenizing and labels (render.render_arrays), nothing written
  build      the whole build (prepare.build: + samples.jsonl, the spill, the split, Parquet)
  tokenizer  the fast tokenizer alone on every message text (run.py's tokenizer-only pass)

The stages alternate for `--rounds` rounds and the table shows each stage's median, in seconds and
microseconds a message. Not part of `make bench`: it explains that bench's build / tokenizer ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("read", "rules", "samples", "render", "build", "tokenizer")


def _child(stage: str, workspace: Path) -> None:
    if stage in ("build", "tokenizer"):
        kind = "build-batched" if stage == "build" else "build-tokenizer"
        os.execv(sys.executable, [sys.executable, str(HERE / "run.py"), "--child", kind, str(workspace)])
    from contextlib import closing

    from transformers import AutoTokenizer  # noqa: F401  (loads torch before timing, as run.py does)

    from twinlm.collector import collector_paused
    from twinlm.config import BuildConfig, TwinConfig
    from twinlm.corpus.db import Corpus
    from twinlm.corpus.queries import account_names, owners
    from twinlm.identities import Identities
    from twinlm.models import resolve_model
    from twinlm.prepare import build as build_module
    from twinlm.prepare.redact import Redactor
    from twinlm.prepare.render import detect_style, render_arrays
    from twinlm.prepare.select import chats

    me = ["Me Myself"] if "single" in workspace.name else []
    config = TwinConfig(me=me, build=BuildConfig(model="tiny"))
    settings = config.build
    with Corpus(workspace / "corpus.db") as corpus:
        messages = corpus.count("messages")
        start = time.perf_counter()
        tokenizer = build_module.load_tokenizer(resolve_model(settings.model, workspace))
        style = detect_style(tokenizer)
        identities = Identities(config, owners(corpus), account_names(corpus))
        counts: Counter[str] = Counter()
        redactor = Redactor(settings.redact, config.people)
        started: dict[str, int | None] = {}
        me_name = config.me[0] if config.me else "me"

        def samples() -> object:
            with closing(
                chats(corpus, identities.speaker, counts, stream_over=build_module.STREAM_OVER)
            ) as found:
                for chat in found:
                    if stage == "read":
                        for _ in chat.lines:
                            pass
                    elif stage == "rules":
                        for _ in build_module._cleaned(chat, settings, counts, redactor):
                            pass
                    else:
                        yield from build_module._samples_of(
                            chat, settings, me_name, counts, style, started, redactor
                        )

        made = samples()
        with collector_paused():  # as prepare.build runs: the stages stay comparable with the whole build
            if stage == "render":
                for _ in render_arrays(made, tokenizer, settings.max_length, counts):
                    pass
            else:
                for _ in made:
                    pass
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"messages": messages, "seconds": seconds, "peak_rss_mb": peak_mb}))


def _measure(stage: str, workspace: Path) -> dict[str, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", stage, str(workspace)]
    if sys.platform.startswith("linux"):
        command = ["taskset", "-c", str(max(os.sched_getaffinity(0))), *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=HERE.parent).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workspace", nargs="?", type=Path, default=HERE / ".data" / "build-telegram-1000000")
    parser.add_argument("--rounds", type=int, default=3, help="times every stage runs (the table: medians)")
    parser.add_argument("--child", nargs=2, metavar=("STAGE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]))
        return
    if not (args.workspace / "corpus.db").exists():
        raise SystemExit(f"{args.workspace}: no corpus.db; run `python benchmarks/run.py --only build` first")
    seconds: dict[str, list[float]] = {stage: [] for stage in STAGES}
    messages = 0
    for _ in range(args.rounds):
        for stage in STAGES:
            found = _measure(stage, args.workspace)
            seconds[stage].append(found["seconds"])
            messages = int(found["messages"])
            print(f"{stage}: {found['seconds']:.1f} s", file=sys.stderr)
    print(f"{args.workspace.name}: {messages:,} messages, one core, median of {args.rounds}\n")
    print("| stage | seconds | us a message | each run |")
    print("| --- | --- | --- | --- |")
    for stage in STAGES:
        median = statistics.median(seconds[stage])
        each = ", ".join(f"{s:.1f}" for s in seconds[stage])
        print(f"| {stage} | {median:.1f} | {median / messages * 1e6:.1f} | {each} |")
    ratio = statistics.median(seconds["tokenizer"]) / statistics.median(seconds["build"])
    print(f"\nBuild / tokenizer only (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
