"""`twinlm export`: merge, GGUF, quantize, Modelfile and the parity check in one go, into export/<run>/.

    export/<run>/merged/            the run merged into its base (twinlm.export.merge), + twinlm-export.json
    export/<run>/<run>-<type>.gguf  the GGUF of that type (twinlm.export.gguf; k-quants via an f16 file)
    export/<run>/Modelfile          Ollama's, for one persona (twinlm.export.ollama)
    export/<run>/export.json        what was made from what: per step a fingerprint of its inputs, the
                                    files, the parity report, the status (ok / failed / unchecked)

Each step records the fingerprint of its inputs (the run's weights and record, the GGUF type, the
persona, the Modelfile settings, the twinlm version); a step whose fingerprint is unchanged and whose
output is there is skipped, so running the same export again does no work. Every output appears whole
or not at all (written under a temporary name, then renamed; leftovers of a killed export are removed
on the next run), and a full disk is one line naming the folder and the space the step needs.
`twinlm merge`, `gguf` and `ollama` are this pipeline stopped after their step.
"""

from __future__ import annotations

import errno
import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from twinlm import __version__
from twinlm.errors import TwinError
from twinlm.export.provenance import PROVENANCE, read_provenance
from twinlm.export.space import check_free
from twinlm.files import write_atomic

SUMMARY = "export.json"
PICKED = "picked.json"  # twinlm eval --pick
MODELFILE = "Modelfile"
MERGED = "merged"
K_QUANTS = ("q4_k_m", "q5_k_m", "q6_k")
QTYPES = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16", "f32")
# Bytes per weight of each GGUF type (llama.cpp's bits per weight / 8), to say how much space a step needs.
BYTES_PER_WEIGHT = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 1.0625,
    "q6_k": 0.82,
    "q5_k_m": 0.71,
    "q4_k_m": 0.61,
}
Step = Literal["merge", "gguf", "modelfile", "check"]
STEPS: tuple[Step, ...] = ("merge", "gguf", "modelfile", "check")
_HASHED_UP_TO = 256 << 20  # files larger than this are fingerprinted by size and time, not read whole
_LEFTOVER = re.compile(r"^\..+\.(tmp-.*|old-.*|.*\.part|partial.*)$")

Progress = Callable[[int, int], None]


class Events(Protocol):
    """What the pipeline tells its caller (the CLI shows progress bars and skipped steps)."""

    def start(self, step: Step, label: str) -> Progress | None: ...

    def finish(self, step: Step, label: str) -> None: ...

    def skip(self, step: Step, label: str) -> None: ...


class _Quiet:
    def start(self, step: Step, label: str) -> Progress | None:
        return None

    def finish(self, step: Step, label: str) -> None:
        pass

    def skip(self, step: Step, label: str) -> None:
        pass


@dataclass
class ExportResult:
    folder: Path
    run: str
    qtype: str | None
    persona: str | None
    status: Literal["ok", "failed", "unchecked"]
    done: list[Step] = field(default_factory=list)  # steps that ran
    skipped: list[Step] = field(default_factory=list)  # steps whose output was up to date
    files: dict[str, int] = field(default_factory=dict)  # path relative to the workspace -> bytes
    parity: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    personas: list[str] = field(default_factory=list)
    ollama_name: str | None = None
    checkpoint: str | None = None  # "step-N", None: the final weights

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "run": self.run,
            "checkpoint": self.checkpoint or "final",
            "type": self.qtype,
            "persona": self.persona,
            "status": self.status,
            "done": self.done,
            "skipped": self.skipped,
            "files": self.files,
            "parity": self.parity,
            "problems": self.problems,
            "commands": self.commands,
        }


# --- which run ------------------------------------------------------------------------------------


def find_run(root: Path, name: str | None) -> Path:
    """runs/<name>, or the latest run (the newest runs/*/config.json) when no name is given."""
    runs = root / "runs"
    found = sorted(
        (p.parent for p in runs.glob("*/config.json") if not p.parent.name.startswith(".")),
        key=lambda p: (p / "config.json").stat().st_mtime,
    )
    if name is None:
        if not found:
            raise TwinError(f"{runs}: no trained run to export; train one first with `twinlm train`")
        return found[-1]
    if "/" in name or name in (".", "..") or not (runs / name / "config.json").is_file():
        have = ", ".join(p.name for p in found) or "none"
        raise TwinError(f"{runs / name}: no such run (runs: {have})")
    return runs / name


def picked_checkpoint(run: Path) -> str | None:
    """runs/RUN/picked.json's checkpoint ("step-N", written by `twinlm eval --pick`); None for the final
    weights, or where nothing was picked. Read here, not through twinlm.evaluate (which sits above)."""
    try:
        data = orjson.loads((run / PICKED).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    value = data.get("checkpoint") if isinstance(data, dict) and data.get("twinlm_pick") == 1 else None
    return value if isinstance(value, str) and value.strip() else None


def weights_dir(run: Path, checkpoint: str | None) -> Path | None:
    """The folder of the weights an export merges (None where it is missing: merge says why)."""
    if checkpoint is None:
        return run / "final"
    match = re.fullmatch(r"step-0*(\d+)", checkpoint.strip())
    if match is None:
        return None
    for folder in (run / "checkpoints").glob("step-*"):
        if folder.name.removeprefix("step-").lstrip("0") == match.group(1).lstrip("0"):
            return folder
    return None


# --- fingerprints ---------------------------------------------------------------------------------


def _file_digest(path: Path) -> str:
    info = path.stat()
    if info.st_size > _HASHED_UP_TO:  # a full fine-tune's shards: size and time say enough
        return f"{info.st_size}:{info.st_mtime_ns}"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def folder_fingerprint(folder: Path | None) -> dict[str, str]:
    """{relative path: digest} of every file under `folder` (empty where there is none)."""
    if folder is None or not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): _file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _hash(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


# --- the summary file -------------------------------------------------------------------------------


def read_summary(folder: Path) -> dict[str, Any]:
    path = folder / SUMMARY
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError):
        return {}  # unreadable: every step runs again and rewrites it
    return data if isinstance(data, dict) else {}


def _write_summary(folder: Path, summary: dict[str, Any]) -> None:
    write_atomic(folder / SUMMARY, orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")


def _remove_leftovers(folder: Path) -> None:
    """What a killed export left under temporary names (never under a final one)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _LEFTOVER.match(path.name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# --- a full disk ----------------------------------------------------------------------------------


def _disk_full(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "disk is full" in str(seen) or "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _free(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


class _Guard:
    """A step's outputs: a full disk becomes one line naming the folder and the space the step needs."""

    def __init__(self, folder: Path, what: str, needed: int) -> None:
        self.folder, self.what, self.needed = folder, what, needed

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> bool:
        if error is not None and isinstance(error, Exception) and _disk_full(error):
            raise TwinError(
                f"{self.folder}: the disk is full (writing {self.what}); it needs about "
                f"{_size(self.needed)} free there ({_size(_free(self.folder))} free now): free some space, "
                "or move the workspace to a larger disk"
            ) from None
        return False


# --- the pipeline ---------------------------------------------------------------------------------


def export_run(
    root: Path,
    run: str | None = None,
    *,
    qtype: str = "q4_k_m",
    until: Step = "check",
    persona: str | None = None,
    checkpoint: str | None = None,
    temperature: float | None = None,
    merged_out: Path | None = None,
    events: Events | None = None,
) -> ExportResult:
    """Export run `run` (default: the latest) of the workspace `root` up to step `until` (see the module doc).

    Raises TwinError for bad input (an unknown run, a missing base model, an unsupported architecture,
    a full disk). A failed parity check is not an exception: the result (and export.json) says
    status "failed" with the problems."""
    if qtype not in QTYPES:
        raise TwinError(f"--type {qtype}: expected one of {', '.join(QTYPES)}")
    events = events or _Quiet()
    run_dir = find_run(root, run)
    # No --checkpoint: the one `twinlm eval --pick` chose, else the final weights ("final" says so).
    checkpoint = picked_checkpoint(run_dir) if checkpoint is None else checkpoint
    checkpoint = None if checkpoint is not None and checkpoint.strip() == "final" else checkpoint
    name = run_dir.name
    folder = root / "export" / name
    folder.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    summary = read_summary(folder)
    steps: dict[str, Any] = summary.setdefault("steps", {})
    summary.update({"twinlm_export": 1, "run": name, "run_folder": str(run_dir)})
    result = ExportResult(folder=folder, run=name, qtype=None, persona=None, status="unchecked")
    result.checkpoint = _checkpoint_label(checkpoint) if checkpoint else None
    params = _parameters(run_dir)

    # 1. merge
    # A checkpoint's export sits beside the final weights' (merged-step-N/, RUN-step-N-TYPE.gguf).
    suffix = f"-{_checkpoint_label(checkpoint)}" if checkpoint else ""
    merged = merged_out or folder / f"{MERGED}{suffix}"
    inputs = {
        "twinlm": __version__,
        "checkpoint": suffix.lstrip("-") or "final",
        "weights": folder_fingerprint(weights_dir(run_dir, checkpoint)),
        "record": folder_fingerprint(run_dir / "tokenizer") | {"config.json": _digest_or_none(run_dir)},
    }
    merge_print = _hash("merge", inputs, str(merged.resolve()))
    if _fresh(steps.get(f"merge{suffix}"), merge_print) and (merged / PROVENANCE).is_file():
        events.skip("merge", f"{_rel(root, merged)} (up to date)")
        result.skipped.append("merge")
    else:
        from twinlm.export import merge

        progress = events.start("merge", f"merging {name} into its base")
        with _Guard(merged.parent, f"the merged model {merged.name}/", 2 * params):
            merge.merge_run(run_dir, merged, checkpoint=checkpoint, progress=progress)
        events.finish("merge", _rel(root, merged))
        steps[f"merge{suffix}"] = {"fingerprint": merge_print, "path": str(merged)}
        _write_summary(folder, summary)
        result.done.append("merge")
    result.files[_rel(root, merged)] = _tree_size(merged)
    provenance = read_provenance(merged)
    personas: dict[str, str | None] = provenance.get("personas") or {}
    result.personas = list(personas)
    # The persona before any GGUF work: a misspelt --as fails at once, not after a long conversion.
    chosen = _persona(personas, persona) if until in ("modelfile", "check") else None
    if until == "merge":
        return _finish(result, summary, folder)

    # 2. GGUF (k-quants: an f16 file first, quantized by llama.cpp, then removed)
    result.qtype = qtype
    gguf_path = folder / f"{name}{suffix}-{qtype}.gguf"
    gguf_print = _hash("gguf", merge_print, qtype)
    gguf_steps: dict[str, Any] = steps.setdefault("gguf", {})
    if _fresh(gguf_steps.get(qtype + suffix), gguf_print) and gguf_path.is_file():
        events.skip("gguf", f"{_rel(root, gguf_path)} (up to date)")
        result.skipped.append("gguf")
    else:
        _make_gguf(root, merged, gguf_path, qtype, params, events)
        gguf_steps[qtype + suffix] = {"fingerprint": gguf_print, "path": str(gguf_path)}
        _write_summary(folder, summary)
        result.done.append("gguf")
    result.files[_rel(root, gguf_path)] = gguf_path.stat().st_size
    if until == "gguf":
        return _finish(result, summary, folder)

    # 3. Modelfile, for one persona
    result.persona = chosen
    modelfile = folder / MODELFILE
    modelfile_print = _hash("modelfile", gguf_print, chosen, personas.get(chosen or ""), temperature)
    from twinlm.export import ollama

    result.ollama_name = ollama.model_name(name, chosen or "twin")
    if _fresh(steps.get("modelfile"), modelfile_print) and modelfile.is_file():
        events.skip("modelfile", f"{_rel(root, modelfile)} (up to date)")
        result.skipped.append("modelfile")
    else:
        events.start("modelfile", "writing the Modelfile")
        with _Guard(folder, MODELFILE, 1 << 20):
            ollama.write_modelfile(merged, gguf_path, modelfile, persona=chosen, temperature=temperature)
        events.finish("modelfile", _rel(root, modelfile))
        steps["modelfile"] = {"fingerprint": modelfile_print, "path": str(modelfile), "persona": chosen}
        _write_summary(folder, summary)
        result.done.append("modelfile")
    result.files[_rel(root, modelfile)] = modelfile.stat().st_size
    result.commands = [
        *ollama.ollama_commands(modelfile, result.ollama_name),
        f"llama-server --jinja -m {gguf_path}",
    ]
    if until == "modelfile":
        return _finish(result, summary, folder)

    # 4. parity
    check_print = _hash("check", gguf_print, chosen, personas.get(chosen or ""))
    checks: dict[str, Any] = steps.setdefault("check", {})
    earlier = checks.get(qtype + suffix)
    if _fresh(earlier, check_print) and isinstance(earlier.get("report"), dict):
        events.skip("check", "parity (checked before, nothing changed)")
        result.skipped.append("check")
        report = earlier["report"]
    else:
        from twinlm.export.parity import check_parity, default_conversations

        progress = events.start("check", "checking parity with llama.cpp")
        conversations = default_conversations(
            personas.get(chosen or ""), speaker=chosen if chosen not in (None, "assistant") else None
        )
        max_length = int(provenance.get("max_length") or 512)
        parity = check_parity(
            merged,
            gguf_path,
            conversations=conversations,
            qtype=qtype,
            max_length=max_length,
            progress=progress,
        )
        events.finish("check", "parity " + ("ok" if parity.ok else "FAILED"))
        report = parity.to_json()
        checks[qtype + suffix] = {"fingerprint": check_print, "report": report}
        result.done.append("check")
    result.parity = report
    result.problems = list(report.get("problems") or [])
    result.status = "ok" if not result.problems else "failed"
    return _finish(result, summary, folder)


def _finish(result: ExportResult, summary: dict[str, Any], folder: Path) -> ExportResult:
    summary.update(
        {
            "type": result.qtype,
            "checkpoint": result.checkpoint or "final",
            "persona": result.persona,
            "status": result.status,
            "problems": result.problems,
            "parity": result.parity,
            "files": result.files,
            "commands": result.commands,
            "twinlm_version": __version__,
        }
    )
    _write_summary(folder, summary)
    return result


def _make_gguf(root: Path, merged: Path, gguf_path: Path, qtype: str, params: int, events: Events) -> None:
    from twinlm.export import gguf

    folder = gguf_path.parent
    if qtype not in K_QUANTS:
        progress = events.start("gguf", f"converting to {qtype}")
        with _Guard(folder, gguf_path.name, int(params * BYTES_PER_WEIGHT[qtype])):
            gguf.convert_to_gguf(merged, gguf_path, qtype=qtype, progress=progress)
        events.finish("gguf", _rel(root, gguf_path))
        return
    source = folder / f".{gguf_path.stem}.partial-f16.gguf"  # removed below, or as a leftover next time
    try:
        progress = events.start("gguf", "converting to f16 (to quantize)")
        needed = int(params * (BYTES_PER_WEIGHT["f16"] + BYTES_PER_WEIGHT[qtype]))
        # Both files at once: the f16 one is removed only after the quantization (checked before both).
        check_free(folder, needed, f"{gguf_path.name} and its f16 source")
        with _Guard(folder, source.name, needed):
            gguf.convert_to_gguf(merged, source, qtype="f16", progress=progress)
        events.finish("gguf", f"{source.name} (f16, to quantize)")
        events.start("gguf", f"quantizing to {qtype} (llama.cpp)")
        with _Guard(folder, gguf_path.name, int(params * BYTES_PER_WEIGHT[qtype])):
            gguf.quantize_gguf(source, gguf_path, qtype)
        events.finish("gguf", _rel(root, gguf_path))
    finally:
        source.unlink(missing_ok=True)


def _checkpoint_label(checkpoint: str) -> str:
    """step-000020 / step-20 -> step-20 (anything else as given: merge names what is wrong with it)."""
    match = re.fullmatch(r"step-0*(\d+)", checkpoint.strip())
    return f"step-{int(match.group(1))}" if match else re.sub(r"[^A-Za-z0-9_.-]+", "-", checkpoint)


def _fresh(step: Any, fingerprint: str) -> bool:
    return isinstance(step, dict) and step.get("fingerprint") == fingerprint


def _digest_or_none(run_dir: Path) -> str | None:
    path = run_dir / "config.json"
    return _file_digest(path) if path.is_file() else None


def _parameters(run_dir: Path) -> int:
    """The model's parameter count from the run record (for the space a step needs); 0 if unknown."""
    try:
        record = orjson.loads((run_dir / "config.json").read_bytes())
        return int(record.get("total_params") or 0)
    except (OSError, orjson.JSONDecodeError, TypeError, ValueError):
        return 0


def _persona(personas: dict[str, str | None], wanted: str | None) -> str | None:
    """The persona the Modelfile speaks as: `--as NAME`, else the run's first (its `me`)."""
    if wanted is None:
        return next(iter(personas), None)
    for name in personas:
        if name.casefold() == wanted.casefold():
            return name
    have = ", ".join(repr(n) for n in personas) or "none"
    raise TwinError(f"--as {wanted!r}: the run has no such persona (personas: {have})")


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
