"""A workspace is one folder per twin: twin.yaml, corpus.db, data/, runs/, export/, reports/.

It holds private text, so it is its owner's only: the folder is 0700 (set at init, and again when an
existing workspace is opened), and everything written inside it is private through the command line's
umask (twinlm.privacy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from twinlm.config import CONFIG_NAME, TwinConfig, load_config, render_config
from twinlm.errors import TwinError
from twinlm.files import write_atomic
from twinlm.privacy import make_private

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
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_private(root)  # a folder the user made beforehand has their umask's mode (often 0755)
    for sub in SUBFOLDERS:
        (root / sub).mkdir(mode=0o700, exist_ok=True)
    write_atomic(config_path, render_config(config))
    return config_path


def open_workspace(root: Path) -> Workspace:
    config_path = root / CONFIG_NAME
    if not config_path.is_file():
        raise TwinError(
            f"{root}: not a twinlm workspace (no {CONFIG_NAME}); create one with "
            f"`twinlm init {root}` or pass -w DIR"
        )
    _keep_private(root)
    return Workspace(root=root, config=load_config(config_path))


def _keep_private(root: Path) -> None:
    """A workspace made by an older twinlm (or copied) may be open to other users: closing its root closes
    everything in it (nobody else can enter the folder to read corpus.db or the runs)."""
    try:
        if root.stat().st_mode & 0o077:
            make_private(root)
    except PermissionError:  # someone else's workspace, readable to us: theirs to change
        pass
