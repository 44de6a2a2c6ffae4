"""tests/tools_required.py: a missing tool skips a test on a developer's machine and fails it in CI."""

from __future__ import annotations

import pytest
from tools_required import REQUIRE_VARIABLE, require

ABSENT = "twinlm_no_such_tool_9f3c"


def test_present_module_and_program_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_VARIABLE, "1")
    require("json")  # a module
    require("sh")  # a program on PATH


def test_missing_tool_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"needs {ABSENT}"):
        require(ABSENT)
    with pytest.raises(pytest.skip.Exception, match="golang-go"):
        monkeypatch.setenv("PATH", "/nonexistent")
        require("go")


def test_missing_tool_fails_when_tools_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match=f"needs {ABSENT}.*{REQUIRE_VARIABLE}=1"):
        require(ABSENT)
    with pytest.raises(pytest.fail.Exception):
        require("twinlm_missing_parent.child")  # a dotted name whose parent is missing
