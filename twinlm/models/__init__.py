"""Base models: presets and the local tiny model for CPU runs, the demo and the tests."""

from __future__ import annotations

from pathlib import Path

from twinlm.models import presets
from twinlm.models.tiny import NAME as TINY
from twinlm.models.tiny import ensure_tiny
from twinlm.privacy import fetch_model, is_hub_id


def resolve_model(name: str, workspace: Path) -> str:
    """A model setting as something `from_pretrained` can load: the tiny preset is built in the
    workspace on first use; a preset name or a hub id becomes the folder of its local copy (downloaded,
    once, when it is not on disk: twinlm.privacy.fetch_model); a local folder is passed through."""
    if name == TINY:
        return str(ensure_tiny(workspace / "models" / TINY))
    resolved = presets.resolve(name)
    if not is_hub_id(resolved):
        return resolved
    if (workspace / resolved).is_dir():  # a folder inside the workspace (as `validate` reads it)
        return str(workspace / resolved)
    # A hub id is loaded from its local copy: the hub is asked nothing when the model is on disk.
    return fetch_model(resolved)
