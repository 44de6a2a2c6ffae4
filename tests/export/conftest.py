"""Export test fixtures: the tiny model of each preset family, built once per session, and its GGUFs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_families import tiny_family_model

from twinlm.export.gguf import convert_to_gguf, quantize_gguf

FamilyModel = Callable[[str], Path]
FamilyGguf = Callable[[str, str], Path]


@pytest.fixture(scope="session")
def family_model(tmp_path_factory: pytest.TempPathFactory) -> FamilyModel:
    """`family_model("qwen2")`: the tiny HF folder of that family (tests/export/tiny_families.py), shared."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = tiny_family_model(family, tmp_path_factory.mktemp(f"model-{family}") / "model")
        return built[family]

    return get


@pytest.fixture(scope="session")
def family_gguf(tmp_path_factory: pytest.TempPathFactory, family_model: FamilyModel) -> FamilyGguf:
    """`family_gguf("qwen2", "q4_k_m")`: that model converted (k-quants through an f16 file), shared."""
    made: dict[tuple[str, str], Path] = {}
    folder = tmp_path_factory.mktemp("gguf")

    def get(family: str, qtype: str) -> Path:
        if (family, qtype) not in made:
            out = folder / f"{family}-{qtype}.gguf"
            if qtype in ("f32", "f16", "bf16", "q8_0"):
                convert_to_gguf(family_model(family), out, qtype=qtype)
            else:
                quantize_gguf(get(family, "f16"), out, qtype)
            made[family, qtype] = out
        return made[family, qtype]

    return get
