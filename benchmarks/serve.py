"""`twinlm serve` overhead: time to first token and tokens/s through the server against calling the
llama.cpp backend directly, in the same run, on the same GGUF, with the same prompt and sampling.

Two models, each its own table:

- **1.1B** (the one that says something about real use): a random Llama-architecture model of
  TinyLlama-1.1B's shape (benchmarks/export_gguf.py's `write_model`, with the tiny preset's ChatML
  tokenizer), converted with twinlm's own functions (`convert_to_gguf` f16, then `quantize_gguf`
  q4_k_m) into an export folder that `twinlm serve` loads (export/llama/: the GGUF, merged/ with the
  tokenizer and twinlm-export.json). A token takes tens of ms on a CPU, as with the 7B models people
  chat with. Built once (~2 minutes, 2.2 GB of temporary disk) and kept in benchmarks/.data/serve-llama-1.1b.
  The special tokens' rows of its output layer are zero, so a greedy reply never ends before
  max_tokens: every reply has the same number of tokens, direct or served.
- **tiny**: the demo's model (`make demo`, workspace .demo), ~8,000 tokens/s: there the server's fixed
  cost per token outweighs the model, so its figures show that cost, not what a user sees. Seeded
  sampling (a greedy reply of it ends after a few tokens); replies end at its end-of-turn token.

First, the backend alone with twinlm's threads (one per physical core, twinlm/serve/cpu_share.py)
against llama-cpp-python's default (half the logical CPUs to decode), alternating, same requests.

Then, for each server setting (`--workers`, default 1 and 4: one reply at a time, and four decoded in
one batch; `twinlm serve` started as a child
process: uvicorn, the worker threads, SSE; one streaming httpx client per thread):

- **direct** and **server, 1 client**, alternating (direct, served, direct, ...), so that whatever else
  the machine does hits both alike: time to the first piece of text (direct: from before the prompt is
  made, as the server makes it per request) and tokens/s of each reply (its tokens over its whole time).
- **server, 8 clients**: 8 client threads at once, each sending `--per-client` requests back to back;
  aggregate tokens/s over the whole wall time, median and worst time to first token (requests queue
  first come first served: with one worker the last waits for the seven before it).

Request k's chat opens with its own letter (a new message, as in a chat: the system prompt is in
llama.cpp's cache, the message's ~30 tokens are evaluated before the first token). Before measuring,
each server worker and the direct backend answer a warm-up request (which puts the system prompt in
every cache alike). The replies' texts are compared: each request's, direct and served
one client at a time, must be the same; the 8 clients' replies are counted where they differ from
the direct reply (decoded in one batch they may: see the table's notes).
Targets (issue 11): the server's overhead under 5% for one client (TTFT and tokens/s), and aggregate
tokens/s with 8 clients at least that of one.

    python benchmarks/serve.py                      # both models, --workers 1 and 4 (~7 minutes on a
                                                    # quiet 2-core machine, +2 to build the 1.1B model)
    python benchmarks/serve.py --model 1.1b         # the real-size model only
    python benchmarks/serve.py --model tiny -w WS [SOURCE]   # another workspace / export / GGUF
    python benchmarks/serve.py --workers 1          # one server setting only
    python benchmarks/serve.py --record             # append the tables to benchmarks/RESULTS.md

Never record figures taken while anything else runs on the machine: llama.cpp evaluates a prompt on
all cores, its threads meeting at a barrier after each step, so a core taken by other work stretches a
30-token evaluation from milliseconds to hundreds (seen on a shared 2-core machine: the tiny model's
first token 0.4 s instead of ~1 ms), and the 1.1B model's TTFT by seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / ".data"
ME, FRIEND = "Alex Rivera", "Sam"
# Request k opens with its own letter: as with a new message in a chat, the model has the prompt up to
# there in its cache (system prompt, speaker) and evaluates the rest (~30 tokens) before its first token.
# Each letter is its own token and every prompt is as long as the others, so whatever other request came
# before, a request gets the same reply. Never the same request twice in a row on one model: llama.cpp
# would then evaluate only its last token, whose logits differ in the last bits from a batch's, enough
# to change a random model's choice.
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXY"
WARM_UP = -1


def messages(k: int) -> list[dict[str, str]]:
    letter = "Z" if k == WARM_UP else LETTERS[k % len(LETTERS)]
    text = f"{letter}! hey, how was your weekend? tell me everything about the trip"
    return [{"role": "user", "content": text}]


GREEDY = {"temperature": 0.0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0, "seed": 1234}
# Sampled, not greedy: a greedy reply of the tiny model ends after a few tokens. One seed: the same
# tokens each time, direct or served.
SAMPLED = {"temperature": 1.0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0, "seed": 1234}


# --- the real-size model ---------------------------------------------------------------------------------


def big_workspace(size_b: float = 1.1, qtype: str = "q4_k_m") -> Path:
    """A workspace whose export/llama/ holds a random ~`size_b`B Llama as a `qtype` GGUF (built once)."""
    ws = DATA / f"serve-llama-{size_b}b"
    export = ws / "export" / "llama"
    gguf = export / f"llama-{qtype}.gguf"
    if gguf.is_file() and (ws / "twin.yaml").is_file():
        return ws
    sys.path.insert(0, str(HERE))
    import export_gguf
    from transformers import AutoTokenizer

    from twinlm.config import TwinConfig
    from twinlm.export.gguf import convert_to_gguf, quantize_gguf
    from twinlm.export.provenance import PROVENANCE
    from twinlm.files import write_atomic
    from twinlm.models.tiny import build_tiny_tokenizer
    from twinlm.workspace import init_workspace

    print(f"building a {size_b}B random Llama model ({qtype}) in {ws} ...", file=sys.stderr, flush=True)
    if not (ws / "twin.yaml").is_file():
        init_workspace(ws, TwinConfig(me=[ME]))
    DATA.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="serve-model-", dir=DATA))
    try:
        tokenizer_dir = build_tiny_tokenizer(work / "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        export_gguf.VOCAB = len(tokenizer)  # write_model reads it: the model's vocabulary is the tokenizer's
        model, params = export_gguf.write_model(work / "model", size_b)
        for f in model.glob("tokenizer*"):  # write_model's SentencePiece tokenizer: not this one
            f.unlink()
        for f in tokenizer_dir.iterdir():
            shutil.copy2(f, model / f.name)
        config = json.loads((model / "config.json").read_text())
        config.update(bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
        config.update(pad_token_id=tokenizer.pad_token_id)
        (model / "config.json").write_text(json.dumps(config, indent=2))
        specials = [tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens]
        _zero_rows(model / "model.safetensors", "lm_head.weight", specials)
        f16 = convert_to_gguf(model, work / "f16.gguf", qtype="f16")
        merged = export / "merged"  # what `twinlm export` leaves beside a GGUF, less the weights
        merged.mkdir(parents=True, exist_ok=True)
        for f in model.iterdir():
            if f.suffix != ".safetensors":
                shutil.copy2(f, merged / f.name)
        prompt = "You are {name}, chatting with {others} on {platform}. Today is {date}."
        info = {  # the fields of twinlm/export/provenance.py's record that chat and serve read
            "twinlm_export": 1,
            "run": "llama",
            "step": "final",
            "base_model": f"random Llama, {params / 1e9:.2f}B parameters (benchmarks/serve.py)",
            "method": "full",
            "dtype": "bfloat16",
            "max_length": 2048,
            "template_style": "named",
            "me": ME,
            "personas": {
                p: prompt.format(name=p, others="someone", platform="Telegram", date="2026-12-06")
                for p in (ME, FRIEND)
            },
            "persona_settings": {"system_prompt": prompt, "targets": [ME, FRIEND], "platform": "telegram"},
        }
        write_atomic(merged / PROVENANCE, json.dumps(info, indent=2) + "\n")
        quantize_gguf(f16, gguf, qtype)  # last: its presence says the workspace is complete
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ws


def _zero_rows(safetensors: Path, name: str, rows: list[int]) -> None:
    """Zero rows of a bf16 matrix in place. For the output layer: the special tokens' logits are then 0,
    far below the largest of the others, so a greedy reply never picks one (never ends early)."""
    with safetensors.open("r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        entry = json.loads(f.read(n))[name]
        cols = entry["shape"][1]
        for row in rows:
            f.seek(8 + n + entry["data_offsets"][0] + row * cols * 2)
            f.write(bytes(cols * 2))


# --- one reply, direct or served ---------------------------------------------------------------------------


@dataclass
class Reply:
    k: int  # the request (its messages)
    ttft: float  # seconds to the first piece of text
    seconds: float  # the whole reply
    tokens: int
    text: str


@dataclass
class Direct:
    """The llama.cpp backend in this process, as `twinlm chat` uses it."""

    workspace: Path
    source: str | None
    persona: str | None
    sampling: dict[str, Any]
    twin: Any = field(init=False)
    name: str = field(init=False)

    def __post_init__(self) -> None:
        from twinlm.serve.twin import open_twin

        self.twin = open_twin(self.workspace, self.source, backend="llama.cpp")
        self.name = self.twin.persona(self.persona)

    def reply(self, max_tokens: int, k: int) -> Reply:
        from twinlm.serve.backends import Sampling

        sampling = Sampling(**self.sampling, max_tokens=max_tokens)
        start = time.perf_counter()
        first = None
        # The prompt is made each time, as the server makes it for each request.
        prompt = self.twin.prompt_from_messages(self.name, messages(k), max_new_tokens=max_tokens)
        with self.twin.backend.generate(prompt, sampling) as generation:
            for piece in generation:
                if first is None and piece:
                    first = time.perf_counter()
        end = time.perf_counter()
        return Reply(k, (first or end) - start, end - start, generation.completion_tokens, generation.text)

    def close(self) -> None:
        self.twin.backend.close()


def start_server(workspace: Path, source: str | None, workers: int) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "twinlm", "serve", "-w", str(workspace), "--port", "0"]
    command += ["--backend", "llama.cpp", "--workers", str(workers)]
    if source:
        command.insert(4, source)
    env = {k: v for k, v in os.environ.items() if k != "TWINLM_API_KEY"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://\S+?)/?$", line.strip())
    if not match:
        process.kill()
        raise SystemExit(f"twinlm serve did not start: {line!r}")
    return process, match[1]


def stop_server(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


def served_reply(
    client: httpx.Client, url: str, model: str, sampling: dict[str, Any], max_tokens: int, k: int
) -> Reply:
    body = {
        "model": model,
        "messages": messages(k),
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling,
        "max_tokens": max_tokens,
    }
    start = time.perf_counter()
    first = None
    tokens = -1
    text: list[str] = []
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and (content := chunk["choices"][0]["delta"].get("content")):
                first = first or time.perf_counter()
                text.append(content)
    end = time.perf_counter()
    return Reply(k, (first or end) - start, end - start, tokens, "".join(text))


def concurrent(
    url: str, model: str, sampling: dict[str, Any], max_tokens: int, ks: list[list[int]]
) -> tuple[list[Reply], float]:
    """A thread per list in `ks` at once, each sending its requests back to back: (replies, wall seconds)."""
    replies: list[Reply] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(ks) + 1)

    def client_loop(mine: list[int]) -> None:
        with httpx.Client(timeout=600) as client:
            barrier.wait()
            for k in mine:
                reply = served_reply(client, url, model, sampling, max_tokens, k)
                with lock:
                    replies.append(reply)

    threads = [threading.Thread(target=client_loop, args=(mine,)) for mine in ks]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return replies, time.perf_counter() - start


# --- one model -------------------------------------------------------------------------------------------


def rate(replies: list[Reply]) -> float:
    """Tokens per second of replies taken one after another (their tokens over their time)."""
    return sum(r.tokens for r in replies) / sum(r.seconds for r in replies)


def median_ms(values: Any) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


def default_threads_rows(direct: Direct, args: argparse.Namespace) -> list[str]:
    """The backend with twinlm's threads (cpu_share: every physical core) against llama-cpp-python's
    default (half the logical CPUs to decode, all of them for prompts), alternating, same requests."""
    from twinlm.serve.cpu_share import CoreShare

    backend = direct.twin.backend
    ours_share = backend.cores
    logical = os.cpu_count() or 1
    theirs_share = CoreShare(max(logical // 2, 1), logical)
    ours: list[Reply] = []
    theirs: list[Reply] = []
    try:
        for k in range(args.runs):  # requests of their own: a repeated one would find its prompt cached
            backend.cores = theirs_share
            theirs.append(direct.reply(args.max_tokens, 2 * k))
            backend.cores = ours_share
            ours.append(direct.reply(args.max_tokens, 2 * k + 1))
    finally:
        backend.cores = ours_share
    base_ttft, base_rate = statistics.median(r.ttft for r in theirs), rate(theirs)
    rows = []
    for what, share, replies in (
        ("llama-cpp-python's default threads", theirs_share, theirs),
        ("twinlm's threads", ours_share, ours),
    ):
        ttft, speed = statistics.median(r.ttft for r in replies), rate(replies)
        decode, prompt = share.threads()
        rows.append(
            f"| direct, {what} ({decode} to decode, {prompt} for prompts) | {ttft * 1000:.1f} ms | "
            f"{ttft / base_ttft - 1:+.1%} | {speed:.1f} | {speed / base_rate - 1:+.1%} | {speed:.1f} |"
        )
    return rows


def bench_model(
    label: str, workspace: Path, source: str | None, sampling: dict[str, Any], args: argparse.Namespace
) -> str:
    from twinlm.serve.serve_api import slug

    print(f"{label}: direct, warm-up ...", file=sys.stderr, flush=True)
    direct = Direct(workspace, source, args.persona, sampling)
    direct.reply(args.max_tokens, WARM_UP)  # warm-up: page faults, the system prompt in llama.cpp's cache
    direct_replies: list[Reply] = []
    rows: list[str] = []
    notes: list[str] = []
    if direct.twin.backend.name == "llama.cpp":
        print(f"{label}: direct, twinlm's threads / llama-cpp-python's ...", file=sys.stderr, flush=True)
        rows += default_threads_rows(direct, args)
    texts: dict[int, set[str]] = {}
    reference: list[Reply] = []
    at_once: list[tuple[int, int, int]] = []  # (workers, replies unlike the direct one, replies)
    try:
        for workers in args.workers:
            process, url = start_server(workspace, source, workers)
            try:
                models = httpx.get(f"{url}/v1/models", timeout=60).json()["data"]
                model = next(m["id"] for m in models if m["name"] == direct.name)
                # Warm-up: each worker answers once (as many requests at once as workers).
                concurrent(url, model, sampling, args.max_tokens, [[WARM_UP]] * workers)
                print(f"{label}: --workers {workers}: direct / 1 client ...", file=sys.stderr, flush=True)
                ours: list[Reply] = []
                theirs: list[Reply] = []
                with httpx.Client(timeout=600) as client:
                    for k in range(args.runs):  # alternating: a disturbance hits both alike
                        theirs.append(direct.reply(args.max_tokens, k))
                        ours.append(served_reply(client, url, model, sampling, args.max_tokens, k))
                print(f"{label}: --workers {workers}: {args.clients} clients", file=sys.stderr, flush=True)
                # Requests of their own (not those above), whose direct replies are taken once, untimed.
                n, each = args.clients, args.per_client
                ks = [[args.runs + c + n * i for i in range(each)] for c in range(n)]
                many, wall = concurrent(url, model, sampling, args.max_tokens, ks)
                if not reference:
                    reference = [
                        direct.reply(args.max_tokens, k) for k in range(args.runs, args.runs + n * each)
                    ]
            finally:
                stop_server(process)
            direct_replies += theirs
            for r in theirs + ours:  # by the request's messages
                texts.setdefault(r.k % len(LETTERS), set()).add(r.text)
            alone = {r.k: r.text for r in reference}
            at_once.append((workers, sum(r.text != alone[r.k] for r in many), len(many)))
            one_rate, direct_rate = rate(ours), rate(theirs)
            aggregate = sum(r.tokens for r in many) / wall
            ttfts = statistics.median(r.ttft for r in ours), statistics.median(r.ttft for r in theirs)
            ttft_one = ttfts[0] / ttfts[1]
            rows += [
                f"| direct, beside --workers {workers} | {median_ms(r.ttft for r in theirs)} | | "
                f"{direct_rate:.1f} | | {direct_rate:.1f} |",
                f"| server --workers {workers}, 1 client | {median_ms(r.ttft for r in ours)} | "
                f"{ttft_one - 1:+.1%} | {one_rate:.1f} | {one_rate / direct_rate - 1:+.1%} | "
                f"{one_rate:.1f} |",
                f"| server --workers {workers}, {args.clients} clients | {median_ms(r.ttft for r in many)} "
                f"(worst {max(r.ttft for r in many) * 1000:.0f} ms) | | "
                f"{statistics.median(r.tokens / r.seconds for r in many):.1f} | | {aggregate:.1f} "
                f"({aggregate / one_rate:.2f}x 1 client) |",
            ]
            notes.append(
                f"--workers {workers}: 1 client against the direct runs beside it: TTFT {ttft_one - 1:+.1%} "
                f"({(ttfts[0] - ttfts[1]) * 1000:+.1f} ms), "
                f"tokens/s {one_rate / direct_rate - 1:+.1%} (target: overhead under 5%); {args.clients} "
                f"clients' aggregate {aggregate / one_rate:.2f}x one client's (target: at least 1)."
            )
    finally:
        direct.close()
    tokens = sorted({r.tokens for r in direct_replies})
    head = [
        f"#### {label}: twinlm serve vs the llama.cpp backend, {datetime.now(UTC).date()} "
        f"({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{direct.twin.description}; persona {slug(direct.name)}; {args.max_tokens} tokens at most a "
        f"reply, {'greedy' if sampling['temperature'] == 0 else 'sampled, one seed'}; {args.runs} replies "
        f"each way, alternating; {args.clients} clients x {args.per_client})",
        "",
        "| | TTFT (median) | vs direct | tokens/s per reply | vs direct | aggregate tokens/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    differ = sorted(k for k, seen in texts.items() if len(seen) > 1)
    same = "yes" if not differ else f"NO (requests {differ})"
    unlike = ", ".join(f"{d} of {n} with --workers {w}" for w, d, n in at_once)
    same += f"; the {args.clients} clients' replies unlike the direct reply to the same request: {unlike}"
    if any(d for _, d, _ in at_once):
        same += (
            " (replies decoded in one batch, --workers > 1 on a GGUF, differ from a reply alone in the "
            "last bits of their logits, as llama-server's do; a random model's near-equal logits turn "
            "that into other greedy picks)"
        )
    notes.append(f"Tokens a reply: {tokens}; each request's reply the same text, direct and served: {same}.")
    return "\n".join(head + rows + [""] + notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", nargs="?", help="tiny: a run, export or GGUF (default: newest export)")
    parser.add_argument(
        "-w", "--workspace", type=Path, default=ROOT / ".demo", help="tiny: the workspace (default .demo)"
    )
    parser.add_argument("--model", choices=("all", "1.1b", "tiny"), default="all", help="default: all")
    parser.add_argument("--size", type=float, default=1.1, help="the real-size model, billions (default 1.1)")
    parser.add_argument("--persona", help="the persona to talk to (default: me)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens a reply (default 64)")
    parser.add_argument(
        "--runs",
        type=int,
        default=10,
        help="replies each way, 1 client (default 10; medians of 5 moved ~10%%)",
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--per-client", type=int, default=1, help="requests each (default 1)")
    parser.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 4],
        help="the server settings to measure, e.g. 1,4 (default)",
    )
    parser.add_argument("--record", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = parser.parse_args()

    tables = []
    if args.model in ("all", "1.1b"):
        ws = big_workspace(args.size)
        tables.append(bench_model(f"{args.size}B random Llama, q4_k_m", ws, None, GREEDY, args))
        print("\n" + tables[-1], flush=True)
    if args.model in ("all", "tiny"):
        if not (args.workspace / "twin.yaml").is_file():
            raise SystemExit(f"{args.workspace}: no workspace; run `make demo` first or pass -w WORKSPACE")
        tiny = dict(vars(args), runs=max(args.runs, 16), max_tokens=128)
        tables.append(
            bench_model(
                "tiny demo model (the server's fixed cost per token, not real use)",
                args.workspace,
                args.source,
                SAMPLED,
                argparse.Namespace(**tiny),
            )
        )
        print("\n" + tables[-1], flush=True)
    if args.record:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n### twinlm serve (benchmarks/serve.py)\n\n" + "\n".join(tables))


if __name__ == "__main__":
    main()
