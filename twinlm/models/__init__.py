"""Base models: presets and the local tiny model for CPU runs, the demo and the tests."""

from __future__ import annotations

from pathlib import Path

from twinlm.models import presets
from twinlm.models.tiny import NAME as TINY
from twinlm.models.tiny import ensure_tiny


def resolve_model(name: str, workspace: Path) -> str:
    """A model setting as something `from_pretrained` can load: the tiny preset is built in the
    workspace on first use; a preset name becomes its hub id; a local folder or a hub id is passed
    through."""
    if name == TINY:
        return str(ensure_tiny(workspace / "models" / TINY))
    return presets.resolve(name)
