"""`twinlm run`'s memory: what each stage last ran on, so a stage whose inputs and settings did not
change is skipped, and a killed training resumes.

Each stage has a fingerprint: content hashes of its inputs plus the config section that shapes it.
.twinlm/run-state.json keeps, per stage, the fingerprint it last finished with (written atomically
after each stage), and for training also the run started on that fingerprint, recorded before it
trains, so a killed run is found and resumed. The command (twinlm.cli.run) calls the verbs themselves.

Inputs per stage:
- ingest: every file under ingest.paths and ingest.documents (content) and the ingest section;
- build: the corpus (what ingest and curation wrote: its row counts and newest ids per table), who is
  who (me, people) and the build section;
- train: the built dataset's files (the digests training records) and the train section;
- eval: the run's final weights, the dataset and the eval section (and chat.sampling, which its replies use);
- export: the run's final weights, its picked.json (the checkpoint export takes) and the export section.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

from twinlm.config import TwinConfig
from twinlm.corpus.db import data_version, read_only
from twinlm.files import write_atomic

STATE = Path(".twinlm") / "run-state.json"
STAGES = ("ingest", "build", "train", "eval", "export")


def _digest(parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(root: Path, paths: list[str]) -> dict[str, str]:
    """{path: sha256} of every file at or under `paths` (as twin.yaml gives them, relative to the workspace
    `root`; a missing one is recorded as missing). Keyed by those paths, not by where the workspace is: the
    same workspace named from inside it (`-w .`) or moved elsewhere gives the same digest."""
    found: dict[str, str] = {}
    for given in paths:
        path = root / given
        if path.is_file():
            found[given] = file_digest(path)
        elif path.is_dir():
            for item in sorted(path.rglob("*")):
                if item.is_file():
                    found[f"{given}/{item.relative_to(path).as_posix()}"] = file_digest(item)
        else:
            found[given] = "missing"
    return found


def corpus_signature(db: Path) -> str:
    """The corpus's `data_version`, read without writing (a Corpus would bring the schema up to date)."""
    if not db.is_file():
        return ""
    with read_only(db) as conn:
        return data_version(conn)


def fingerprints(root: Path, config: TwinConfig, stage: str, run: str | None = None) -> str:
    """The fingerprint of `stage`'s inputs and settings now (`run`: the run eval and export work on)."""
    from twinlm.export.pipeline import folder_fingerprint
    from twinlm.train.run import data_fingerprint

    data = root / "data"
    if stage == "ingest":
        paths = [*config.ingest.paths, *config.ingest.documents]
        return _digest([config.ingest.model_dump(mode="json"), tree_digest(root, paths)])
    if stage == "build":
        who = {"me": config.me, "people": config.people}
        return _digest([config.build.model_dump(mode="json"), who, corpus_signature(root / "corpus.db")])
    if stage == "train":
        return _digest([config.train.model_dump(mode="json"), data_fingerprint(data)])
    assert run is not None
    weights = folder_fingerprint(root / "runs" / run / "final")
    if stage == "eval":
        settings = [config.eval.model_dump(mode="json"), config.chat.sampling.model_dump(mode="json")]
        return _digest([run, settings, weights, data_fingerprint(data)])
    if stage == "export":
        pick = root / "runs" / run / "picked.json"
        picked = file_digest(pick) if pick.is_file() else None
        return _digest([run, config.export.model_dump(mode="json"), weights, picked])
    raise ValueError(stage)


def read_state(root: Path) -> dict[str, Any]:
    path = root / STATE
    try:
        state = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {"twinlm_run": 1, "stages": {}}
    return state if isinstance(state, dict) and isinstance(state.get("stages"), dict) else {"stages": {}}


def write_state(root: Path, state: dict[str, Any]) -> None:
    path = root / STATE
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_atomic(path, orjson.dumps(state, option=orjson.OPT_INDENT_2).decode() + "\n")


def is_fresh(state: dict[str, Any], stage: str, fingerprint: str) -> bool:
    entry = state["stages"].get(stage)
    return isinstance(entry, dict) and entry.get("fingerprint") == fingerprint and bool(entry.get("done"))


def record(root: Path, state: dict[str, Any], stage: str, fingerprint: str, **extra: Any) -> None:
    """Mark `stage` finished on `fingerprint`; the later stages are kept (their own fingerprints decide)."""
    state["stages"][stage] = {"fingerprint": fingerprint, "done": True, **extra}
    write_state(root, state)
