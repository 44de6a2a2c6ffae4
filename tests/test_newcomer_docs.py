"""The docs a newcomer reads first stay true (issue 12, items 4-6): every preset and whether it is gated
in docs/models.md and the README, and the demo's settings load and point at the bundled samples."""

from __future__ import annotations

import re
from pathlib import Path

from twinlm.config import load_config
from twinlm.models.presets import PRESETS

ROOT = Path(__file__).parent.parent


def test_every_preset_is_documented_with_its_gating() -> None:
    models = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([^`]+)` \|.*$", models, re.MULTILINE)}
    assert set(rows) == set(PRESETS)
    for name, preset in PRESETS.items():
        assert rows[name].rstrip(" |").endswith("**yes**" if preset.gated else "no"), rows[name]
        if preset.hub_id:
            assert preset.hub_id in rows[name]
        if preset.gated:
            assert f"`{name}`" in readme or name in readme
    assert "HF_TOKEN" in models and "HF_TOKEN" in readme


def test_the_demo_settings_load_and_point_at_the_samples() -> None:
    config = load_config(ROOT / "examples" / "demo.yaml")
    demo = ROOT / ".demo"  # `make demo` copies the file there: its paths are relative to that folder
    for path in [*config.ingest.paths, *config.ingest.documents]:
        assert (demo / path).resolve().is_dir(), path
    assert config.build.model == "tiny" and config.export.type == "q8_0"
    assert config.chat.sampling.temperature == 0  # the demo's answer is the same every time
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "A tiny model only memorises" in readme
