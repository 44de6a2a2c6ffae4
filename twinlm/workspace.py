"""A workspace is one folder per twin: twin.yaml, corpus.db, data/, runs/, export/, reports/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from twinlm.config import CONFIG_NAME, TwinConfig, load_config, render_config
from twinlm.errors import TwinError
from twinlm.files import write_atomic

SUBFOLDERS = ("data", "runs", "export", "reports")


@dataclass(frozen=True, slots=True)
class Workspace:
    root: Path
    config: TwinConfig

    @property
    def corpus_path(self) -> Path:
        return self.root / "corpus.db"


def init_workspace(root: Path, config: TwinConfig, *, force: bool = False) -> Path:
    """Create the workspace folder with a commented twin.yaml; refuses to overwrite one."""
    config_path = root / CONFIG_NAME
    if config_path.exists() and not force:
        raise TwinError(f"{config_path}: already exists; edit it, or pass --force to overwrite it")
    for sub in SUBFOLDERS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    write_atomic(config_path, render_config(config))
    return config_path


def open_workspace(root: Path) -> Workspace:
    config_path = root / CONFIG_NAME
    if not config_path.is_file():
        raise TwinError(
            f"{root}: not a twinlm workspace (no {CONFIG_NAME}); create one with "
            f"`twinlm init {root}` or pass -w DIR"
        )
    return Workspace(root=root, config=load_config(config_path))
