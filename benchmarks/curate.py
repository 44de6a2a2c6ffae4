"""`make bench` (curation, issue 13): listing and searching a 1,000,000-message corpus on one core.

The corpus is the ingest benchmark's Telegram full export (benchmarks/.data, generated once by
gen_telegram.py), ingested into a temporary workspace. Measured in a child process pinned to one core,
each a fresh connection as a command or a page request opens it:

- the one-off set-up the first curation command does (two indexes, the FTS5 search table), shown apart;
- the first page of `twinlm conversations` / the review list (50 conversations with message counts);
- the first page filtered by chat name;
- a text search: the first page of conversations holding two words, and the matching messages;
- the largest conversation's first 20 sessions as the build sees them (the review page), and a session
  halfway through it, the first time and again, for information.

Targets (issue 13): the first page under 200 ms, a text search under 1 s.

    python benchmarks/curate.py            # 1,000,000 messages
    python benchmarks/curate.py --quick    # 20,000 messages: a smoke run, not a measurement
    python benchmarks/curate.py --record   # also append the table to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TARGETS = {"first page": 0.2, "first page, chat name filter": 0.2, "text search, first page": 1.0}
REPEAT = 5


def _timed(call: object) -> tuple[float, object]:
    start = time.perf_counter()
    value = call()  # type: ignore[operator]
    return time.perf_counter() - start, value


def _child(workspace: Path) -> None:
    """One core; prints {measure: seconds} as JSON."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from twinlm.corpus.browse import Selector, list_conversations, prepare, select_messages, update_search
    from twinlm.corpus.db import Corpus
    from twinlm.curate import view as view_module
    from twinlm.curate.view import Viewer
    from twinlm.workspace import open_workspace

    ws = open_workspace(workspace)
    found: dict[str, float] = {}
    with Corpus(ws.corpus_path) as corpus:
        found["set-up: indexes (once per corpus)"], _ = _timed(lambda: prepare(corpus))
        found["set-up: search table (once, then per import)"], _ = _timed(lambda: update_search(corpus))
        messages = corpus.count("messages")
        biggest = corpus.db.execute(
            "SELECT conversation FROM messages GROUP BY conversation ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()[0]
        title = corpus.db.execute("SELECT title FROM conversations WHERE id = ?", (biggest,)).fetchone()[0]

    def fresh(run: object) -> float:
        """Median over REPEAT runs, each on a new connection (as each command and request opens one)."""
        times = []
        for _ in range(REPEAT):
            with Corpus(ws.corpus_path) as c:
                times.append(_timed(lambda c=c: run(c))[0])  # type: ignore[operator]
        return statistics.median(times)

    word = title.split()[0] if title.split() else title
    found["first page"] = fresh(lambda c: list_conversations(c, Selector(), ws.config, limit=50))
    found["first page, chat name filter"] = fresh(
        lambda c: list_conversations(c, Selector(chat=word), ws.config, limit=50)
    )
    query = "tomorrow water"
    found["text search, first page"] = fresh(
        lambda c: list_conversations(c, Selector(search=query), ws.config, limit=50)
    )
    found["text search, matching messages"] = fresh(
        lambda c: select_messages(c, Selector(search=query), ws.config)
    )
    found["first 20 sessions of the largest conversation (information)"] = fresh(
        lambda c: Viewer(ws.config, c).conversation(biggest, 0, 20)
    )
    # A page halfway through: the first time, the sessions before it are cleaned to number its samples as
    # the build does; then they are kept with the conversation's cut (one run each way, then the median).
    with Corpus(ws.corpus_path) as c:
        halfway = Viewer(ws.config, c).conversation(biggest, 0, 1).total_parts // 2
        view_module._PARTS.clear()
        found["a session halfway through it, first time (information)"], _ = _timed(
            lambda: Viewer(ws.config, c).conversation(biggest, halfway, 1)
        )
    found["the same session again (information)"] = fresh(
        lambda c: Viewer(ws.config, c).conversation(biggest, halfway, 1)
    )
    print(json.dumps({"messages": messages, "times": found}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20,000 messages: a smoke run")
    parser.add_argument("--record", action="store_true", help="append the results to benchmarks/RESULTS.md")
    parser.add_argument("--child", metavar="WORKSPACE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(Path(args.child))
        return

    from run import _cpu_name, _dataset

    from twinlm.config import TwinConfig
    from twinlm.corpus.db import Corpus
    from twinlm.ingest import ingest
    from twinlm.model import ParseOptions
    from twinlm.workspace import init_workspace

    from gen_telegram import write_telegram_export

    n = 20_000 if args.quick else 1_000_000
    export = _dataset(f"telegram-{n}.json", lambda p: write_telegram_export(p, n, full=True))
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "twin"
        init_workspace(workspace, TwinConfig(name="bench", me=["Alice"]))
        print(f"ingesting {export.name} ...", file=sys.stderr, flush=True)
        with Corpus(workspace / "corpus.db") as corpus:
            result = ingest([export], corpus, ParseOptions(timezone="UTC"))
            if result.failed:
                raise SystemExit(result.failed[0].error)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(workspace)], capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        raise SystemExit(f"the measurement failed:\n{proc.stderr[-3000:]}")
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = [
        f"### Curation, {datetime.now(UTC).date()} ({platform.machine()}, {_cpu_name()}, one core, "
        f"Python {platform.python_version()}{', QUICK' if args.quick else ''})",
        "",
        f"Corpus: {measured['messages']:,} messages (Telegram full export). Median of {REPEAT} runs, each on "
        "a fresh connection; set-up rows are one run.",
        "",
        "| measure | time | target |",
        "| --- | --- | --- |",
    ]
    failed = []
    for measure, seconds in measured["times"].items():
        target = TARGETS.get(measure)
        verdict = ""
        if target is not None:
            ok = seconds < target
            verdict = f"< {target * 1000:.0f} ms: {'yes' if ok else 'NO'}"
            if not ok:
                failed.append(measure)
        lines.append(f"| {measure} | {seconds * 1000:,.0f} ms | {verdict} |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.record:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + table)
    if failed and not args.quick:
        raise SystemExit(f"over target: {', '.join(failed)}")


if __name__ == "__main__":
    main()
