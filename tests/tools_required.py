"""Tests that need a tool this machine may lack (llama-cpp-python, Go, a browser) call `require` first.

Without the tool the test is skipped with the reason; in CI (`TWINLM_REQUIRE_TOOLS=1`, set by .ci/run,
which installs them) it fails instead, so a missing tool can never turn a test run green by skipping.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

REQUIRE_VARIABLE = "TWINLM_REQUIRE_TOOLS"
# How to get each known tool, for the reason shown (anything else: its name).
_HOW = {
    "llama_cpp": "pip install llama-cpp-python (a twinlm dependency; compiles in ~6 minutes)",
    "mistral_common": "pip install -e '.[dev]'",
    "go": "apt-get install golang-go",
    "chromium": "apt-get install chromium",
    "chromedriver": "apt-get install chromium-driver",
}


def missing(name: str) -> bool:
    """A Python module that cannot be found, or a program not on PATH."""
    if shutil.which(name) is not None:
        return False
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):  # a dotted name whose parent is missing, or an odd name
        return True


def require(name: str) -> None:
    """Skip the calling test where `name` (a Python module or a program) is missing; fail under CI."""
    if not missing(name):
        return
    reason = f"needs {name}: {_HOW.get(name, 'install it')}"
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE}=1: required tools may not be skipped)", pytrace=False)
    pytest.skip(reason)
