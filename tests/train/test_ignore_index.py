"""The label of an untrained token is one constant, defined once: a second literal -100 is a place
that will disagree the day the value or its meaning changes."""

from __future__ import annotations

import io
import itertools
import tokenize
from pathlib import Path

import twinlm
from twinlm.prepare import render, sample
from twinlm.train import data, loss

PACKAGE = Path(twinlm.__file__).parent


def _literal_minus_100(path: Path) -> list[int]:
    """Lines of `path` whose code (not strings or comments) holds the number -100."""
    tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline))
    return [
        b.start[0]
        for a, b in itertools.pairwise(tokens)
        if a.type == tokenize.OP and a.string == "-" and b.type == tokenize.NUMBER and b.string == "100"
    ]


def test_ignore_index_is_defined_once_and_imported_everywhere_else() -> None:
    found = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := _literal_minus_100(path))
    }
    assert list(found) == ["prepare/sample.py"], found
    assert found["prepare/sample.py"] == [_definition_line()]
    assert sample.IGNORE_INDEX == -100
    assert render.IGNORE_INDEX is data.IGNORE_INDEX is loss.IGNORE_INDEX is sample.IGNORE_INDEX


def _definition_line() -> int:
    lines = (PACKAGE / "prepare" / "sample.py").read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith("IGNORE_INDEX = -100"))
