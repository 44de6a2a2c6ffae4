"""`make mutate`: a small mutation run: does the suite notice a one-line bug?

For each target module, every mutable spot (a comparison, an arithmetic or boolean operator, a small
integer constant, True/False, a `not`, a `return` value) is changed one at a time, in a private copy
of the tree, and the module's own tests are run against it. A mutant the tests still pass is a
*survivor*: either a test is missing or the change is equivalent (explain those in the issue note).

Written by hand rather than with mutmut or cosmic-ray: both need their own project layout or a
session database and run the whole suite per mutant; here each module maps to the few test files
that cover it, which keeps a run within an hour on two cores. Not part of CI.

    python tools/mutate.py                      # every target below, at most --limit mutants each
    python tools/mutate.py twinlm/prepare/sessions.py --limit 0   # one module, every mutant
    python tools/mutate.py --list               # the targets and their tests
    python tools/mutate.py twinlm/train/data.py --only 412   # re-run one mutant (its #index)
    python tools/mutate.py twinlm/train/data.py --only 412 --tests tests/train/test_mutants_data.py

The `--limit` sample is a hash of each mutant's (module, node index, change), so it stays the same
while the module's source does; an edit to the module renumbers its nodes and changes the sample.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PARSER_MUTANTS = "tests/sources/test_mutants_parsers.py"
# The generated-export property tests (all five parsers each, ~10 s together).
PARSER_FUZZ = [
    "tests/test_ingest_fuzz.py::test_generated_export_parses_to_exactly_its_messages",
    "tests/test_ingest_fuzz.py::test_damaged_export_fails_in_one_line_or_keeps_the_rest_in_order",
]
CHECKPOINT_MUTANTS = "tests/train/test_mutants_checkpoint.py"

# module -> the test files that should kill its mutants (a file not in the tree yet is left out of the run)
TARGETS: dict[str, list[str]] = {
    "twinlm/prepare/render.py": ["tests/prepare/test_render.py", "tests/prepare/test_mutants_render.py"],
    "twinlm/prepare/tokens.py": [
        "tests/prepare/test_byte_offsets.py",
        "tests/prepare/test_layout_formats.py",
        "tests/prepare/test_render.py",
    ],
    "twinlm/prepare/sessions.py": ["tests/prepare/test_select_sessions_persona.py"],
    "twinlm/prepare/redact.py": [
        "tests/prepare/test_redact.py",
        "tests/prepare/test_redact_labelled.py",
        "tests/prepare/test_mutants_redact.py",
    ],
    "twinlm/train/data.py": [
        "tests/train/test_data_loss.py",
        "tests/train/test_attention.py",
        "tests/train/test_sliding_windows.py",
        "tests/train/test_mutants_data.py",
    ],
    "twinlm/train/loss.py": ["tests/train/test_data_loss.py", "tests/train/test_loop_reference.py"],
    "twinlm/train/loop.py": [
        "tests/train/test_loop.py",
        "tests/train/test_loop_reference.py",
        "tests/train/test_mutants_loop.py",
    ],
    "twinlm/train/checkpoint.py": ["tests/train/test_checkpoint.py", CHECKPOINT_MUTANTS],
    "twinlm/sources/whatsapp.py": [
        "tests/sources/test_whatsapp.py",
        "tests/sources/test_whatsapp_locales.py",
        PARSER_MUTANTS,
        *PARSER_FUZZ,
    ],
    "twinlm/sources/telegram.py": ["tests/sources/test_telegram.py", PARSER_MUTANTS, *PARSER_FUZZ],
    "twinlm/sources/discord.py": ["tests/sources/test_discord.py", PARSER_MUTANTS, *PARSER_FUZZ],
    "twinlm/sources/messenger.py": ["tests/sources/test_messenger.py", PARSER_MUTANTS, *PARSER_FUZZ],
    "twinlm/sources/chatgpt.py": ["tests/sources/test_chatgpt.py", PARSER_MUTANTS, *PARSER_FUZZ],
}

_SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.Div: ast.Mult}
_SWAP_CMP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}


@dataclass(frozen=True, slots=True)
class Mutant:
    module: str
    index: int  # the node's position in ast.walk order
    line: int
    description: str


def _mutations(node: ast.AST) -> Iterator[str]:
    """The changes this script knows for one node (names only; _apply does them)."""
    if isinstance(node, ast.BinOp) and type(node.op) in _SWAP_BINOP:
        yield f"{type(node.op).__name__} -> {_SWAP_BINOP[type(node.op)].__name__}"
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _SWAP_CMP:
        yield f"{type(node.ops[0]).__name__} -> {_SWAP_CMP[type(node.ops[0])].__name__}"
    elif isinstance(node, ast.BoolOp):
        yield "and <-> or"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "drop not"
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        yield f"{node.value} -> {not node.value}"
    elif isinstance(node, ast.Constant) and type(node.value) is int and abs(node.value) <= 4096:
        yield f"{node.value} -> {node.value + 1}"


def _apply(node: ast.AST) -> None:
    if isinstance(node, ast.BinOp):
        node.op = _SWAP_BINOP[type(node.op)]()
    elif isinstance(node, ast.Compare):
        node.ops = [_SWAP_CMP[type(node.ops[0])]()]
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.UnaryOp):
        # `not x` -> `x`: replace in place by turning it into unary plus over a bool() of the operand
        node.op = ast.UAdd()
        node.operand = ast.Call(ast.Name("bool", ast.Load()), [node.operand], [])
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        node.value = not node.value
    elif isinstance(node, ast.Constant):
        node.value = node.value + 1


def _skippable(tree: ast.Module) -> set[int]:
    """Node ids not worth mutating: annotations, docstrings and module-level constants' literal tables."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations.append(node.returns)
            args = node.args
            annotations += [a.annotation for a in [*args.args, *args.kwonlyargs, *args.posonlyargs]]
        for annotation in annotations:
            if annotation is not None:
                skip.update(id(n) for n in ast.walk(annotation))
    return skip


def mutants(module: str, root: Path = ROOT) -> list[Mutant]:
    tree = ast.parse((root / module).read_text())
    skip = _skippable(tree)
    found = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip:
            continue
        for description in _mutations(node):
            found.append(Mutant(module, index, getattr(node, "lineno", 0), description))
    return found


def mutated_source(mutant: Mutant, source: str) -> str:
    tree = ast.parse(source)  # a fresh tree: walk order is deterministic
    _apply(list(ast.walk(tree))[mutant.index])
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def _sample(items: list[Mutant], limit: int) -> list[Mutant]:
    """A deterministic spread of at most `limit` mutants (0: all)."""
    if not limit or len(items) <= limit:
        return items
    key = lambda m: hashlib.blake2b(f"{m.module}:{m.index}:{m.description}".encode()).digest()  # noqa: E731
    return sorted(sorted(items, key=key)[:limit], key=lambda m: (m.line, m.index))


def run(modules: list[str], limit: int, timeout: float, only: list[int], tests_given: list[str]) -> int:
    survivors: list[Mutant] = []
    failed_baseline: list[str] = []
    with tempfile.TemporaryDirectory(prefix="twinlm-mutate-") as tmp:
        copy_root = Path(tmp) / "tree"
        # A private copy: the working tree is never touched, even if this run is killed.
        shutil.copytree(
            ROOT, copy_root, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", ".demo")
        )
        env = {**os.environ, "PYTHONPATH": str(copy_root), "PYTHONDONTWRITEBYTECODE": "1"}

        def tests_pass(tests: list[str]) -> bool:
            command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
            done = subprocess.run(command, cwd=copy_root, env=env, capture_output=True, timeout=timeout)
            return done.returncode == 0

        for module in modules:
            tests = [t for t in tests_given or TARGETS[module] if (copy_root / t.split("::")[0]).exists()]
            # From the copy, never the live tree: another edit there would renumber the nodes mid-run.
            found = mutants(module, copy_root)
            chosen = [m for m in found if m.index in only] if only else _sample(found, limit)
            original = (copy_root / module).read_text()
            lines = original.splitlines()
            print(f"{module}: {len(chosen)} mutant(s) against {' '.join(tests)}", flush=True)
            # Without a green baseline every mutant would count as killed: say so and skip the module.
            if not tests_pass(tests):
                print(f"  skipped: the tests fail on the unmutated tree ({' '.join(tests)})", flush=True)
                failed_baseline.append(module)
                continue
            killed = 0
            try:
                for mutant in chosen:
                    (copy_root / module).write_text(mutated_source(mutant, original))
                    started = time.perf_counter()
                    try:
                        alive = tests_pass(tests)
                    except subprocess.TimeoutExpired:
                        alive = False  # a mutant that hangs the tests is caught (by the timeout)
                    seconds = time.perf_counter() - started
                    status = "SURVIVED" if alive else "killed"
                    print(
                        f"  {status:8} line {mutant.line:4} #{mutant.index}: {mutant.description}"
                        f" ({seconds:.0f} s)  | {lines[mutant.line - 1].strip()[:70]}",
                        flush=True,
                    )
                    if alive:
                        survivors.append(mutant)
                    else:
                        killed += 1
            finally:
                (copy_root / module).write_text(original)
            print(f"  {killed}/{len(chosen)} killed", flush=True)
    print(f"\n{len(survivors)} survivor(s)")
    for mutant in survivors:
        print(f"  {mutant.module}:{mutant.line} #{mutant.index}: {mutant.description}")
    if failed_baseline:
        print(f"not run (tests fail unmutated): {', '.join(failed_baseline)}")
    return 1 if failed_baseline else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help="target modules (default: all in TARGETS)")
    parser.add_argument(
        "--limit", type=int, default=25, help="mutants per module, spread deterministically; 0: all"
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds per test run before a mutant counts as killed"
    )
    parser.add_argument(
        "--only", type=int, action="append", default=[], help="only the mutant with this #index (repeatable)"
    )
    parser.add_argument(
        "--tests", action="append", default=[], help="run these tests instead of the mapped ones (repeatable)"
    )
    parser.add_argument(
        "--list", action="store_true", help="print the targets, their tests and mutant counts"
    )
    args = parser.parse_args()
    modules = args.modules or list(TARGETS)
    unknown = [m for m in modules if m not in TARGETS]
    if unknown:
        parser.error(f"no tests mapped for {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    if args.list:
        for module in modules:
            print(f"{module}: {len(mutants(module))} mutant(s); tests: {' '.join(TARGETS[module])}")
        return 0
    return run(modules, args.limit, args.timeout, args.only, args.tests)


if __name__ == "__main__":
    raise SystemExit(main())
