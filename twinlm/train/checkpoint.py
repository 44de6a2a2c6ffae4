"""Checkpoints that make a training run resumable exactly, and that a kill cannot leave half-written.

A checkpoint is one folder, `run_dir/checkpoints/step-000123/`, holding:

- the trainable weights: for a peft model the adapter only (`save_pretrained`, loadable by
  `PeftModel.from_pretrained`), for full fine-tuning the whole model (`save_pretrained` for a
  transformers model, so eval and export can open the folder as a model; plain safetensors otherwise);
- `optimizer.pt`, `scheduler.pt`: their `state_dict()`s, read back with `torch.load(weights_only=True)`
  so loading runs no pickled code;
- `rng.pt`: the python, numpy, torch CPU and CUDA generator states, so dropout and any random draw
  continue exactly where the uninterrupted run would have been; with several processes, one file
  per process (`rng-1.pt`, ...) next to the main process's `rng.pt`;
- `state.json`: the `TrainState` (step, epoch, position in the epoch's batch order, the order's seed,
  best eval loss, tokens seen), written last.

The folder is written under a temporary name in the same parent and renamed into place: a SIGKILL
mid-save leaves a `.tmp-*` folder that `latest_checkpoint` never picks, and the next save removes.
Model weights are only ever loaded from safetensors.

Under FSDP or DeepSpeed ZeRO no process holds the whole optimizer state: there the folder holds what
`Accelerator.save_state` writes (each process its shard, and its random state) plus `state.json`,
published by the same rename.

Resuming never unpickles: a checkpoint may come from elsewhere (a shared run folder, a download), and a
pickle runs code when it is loaded. twinlm's own files are read with `torch.load(weights_only=True)`;
while accelerate and DeepSpeed read theirs (`weights_only_loading`), every `torch.load` is weights-only
whatever its caller asks (accelerate loads registered objects' state, `custom_checkpoint_0.pkl`, with
weights_only=False), and the pickled `.metadata` of torch.distributed.checkpoint (FSDP's sharded state)
is read by an unpickler that builds only its own metadata types. A file that holds anything else is
refused in one line naming it (`UnsafeCheckpoint`), never run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import random
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from twinlm.train.safe_load import UnsafeCheckpoint, weights_only_loading

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
MODULE_WEIGHTS = "model.safetensors"  # plain nn.Module (no save_pretrained)
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"step-(\d{6,})")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"

WeightsKind = Literal["peft", "transformers", "module"]


@dataclass
class TrainState:
    """Where the run is: everything the loop needs beyond weights, optimizer, scheduler and RNG.

    The batch order of an epoch is a function of (`data_seed`, `epoch`) (`twinlm.train.data.pack`), so
    `batch_in_epoch` (batches of that order already consumed) is enough to continue mid-epoch; drawing
    the order from the global RNG would lose it on resume.
    """

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0
    data_seed: int = 0
    best_eval_loss: float | None = None
    best_step: int | None = None
    tokens_seen: int = 0  # trained tokens (labels not IGNORE_INDEX, after the shift) so far
    world_size: int = 1  # processes: the batch order and random states are per process
    skipped_steps: int = 0  # windows whose loss or gradient norm was not finite: no update

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown train state fields: {sorted(unknown)}")
        return cls(**data)


# --- where checkpoints are ---------------------------------------------------------------------


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. Temp and trash folders (a killed save or prune) are skipped."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.fullmatch(child.name)
        # state.json is written last inside the temp folder, so a renamed folder always has it;
        # checking it anyway guards against folders a user copied in by hand.
        if m and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


# --- saving --------------------------------------------------------------------------------------


def _weights_kind(model: nn.Module) -> WeightsKind:
    # Checked through sys.modules: a PeftModel exists only if peft was imported, and importing
    # peft/transformers here just to find out would cost seconds in every process that saves.
    peft = sys.modules.get("peft")
    if peft is not None and isinstance(model, peft.PeftModel):
        return "peft"
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        return "transformers"
    return "module"


def rng_state() -> dict[str, Any]:
    """This process's random generators (python, numpy if imported, torch, CUDA), as torch.save-able data."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    numpy = sys.modules.get("numpy")  # only if imported: then someone may draw from it
    if numpy is not None:
        name, keys, pos, has_gauss, cached = numpy.random.get_state()
        # As a tensor and plain numbers: torch.load(weights_only=True) refuses numpy arrays.
        state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy

        name, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((name, keys.numpy().astype(numpy.uint32), pos, has_gauss, cached))
    if "cuda" in state:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log.warning(
                "checkpoint has CUDA RNG states for %d devices; not restored here", len(state["cuda"])
            )


def _fsync_tree(folder: Path) -> None:
    """Flush the files and the folder to disk: the rename must not publish data still in memory."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftovers(root: Path) -> None:
    """Temp folders of a killed save and trash of a killed prune: never a checkpoint, safe to delete."""
    for child in root.iterdir():
        if child.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
            shutil.rmtree(child, ignore_errors=True)


def _discard(folder: Path) -> None:
    """Delete a folder so that a kill midway leaves no half folder under a checkpoint name."""
    trash = folder.with_name(f"{_TRASH_PREFIX}{folder.name}-{os.getpid()}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _save_weights(model: nn.Module, folder: Path, kind: WeightsKind) -> None:
    if kind == "module":
        save_model(model, str(folder / MODULE_WEIGHTS))  # handles shared (tied) tensors
    elif kind == "peft":
        # The adapter (and any modules_to_save) only: the base weights are the hub model's.
        model.save_pretrained(folder, safe_serialization=True)  # type: ignore[operator]
    else:
        # The whole model as an HF folder (transformers 5 writes safetensors only), so eval and export
        # can open a checkpoint like any model.
        model.save_pretrained(folder)  # type: ignore[operator]


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    *,
    adapter_only: bool,
    rng: list[dict[str, Any]] | None = None,
) -> Path:
    """Write checkpoint `step` atomically and return its folder.

    Call it after everything of step `step` is done and logged (optimizer and scheduler stepped, eval
    run, metrics written): a resume from it then repeats nothing and misses nothing. Pass the model
    unwrapped (not an accelerate/DDP wrapper). `rng`: every process's `rng_state()`, by rank (default:
    this process's only).
    """
    kind = _weights_kind(model)
    if adapter_only and kind != "peft":
        raise ValueError("adapter_only=True needs a peft model; this one has no adapter")
    if not adapter_only and kind == "peft":
        raise ValueError("a peft model is checkpointed as its adapter: pass adapter_only=True")
    if state.step != step:
        raise ValueError(f"checkpoint step {step} differs from the train state's step {state.step}")
    # First, before anything could draw a random number: the RNG exactly as the loop left it.
    rng = rng if rng is not None else [rng_state()]

    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    final = checkpoint_dir(run_dir, step)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-", dir=root))
    try:
        _save_weights(model, tmp, kind)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        for rank, states in enumerate(rng):
            torch.save(states, tmp / _rng_file(rank))
        _publish(tmp, final, _meta(kind, state))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _meta(weights: str, state: TrainState) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "weights": weights, "train_state": state.to_json()}


def _rng_file(rank: int) -> str:
    return RNG_FILE if rank == 0 else f"rng-{rank}.pt"


def _publish(tmp: Path, final: Path, meta: dict[str, Any]) -> None:
    """state.json last, everything flushed, then one rename: the checkpoint exists whole or not at all."""
    (tmp / STATE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    _fsync_tree(tmp)
    if final.exists():  # saving a step again (a resume from an older checkpoint): replace it
        _discard(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def save_sharded_checkpoint(run_dir: Path, step: int, accelerator: Any, state: TrainState) -> Path:
    """Checkpoint `step` of an FSDP / DeepSpeed run; every process calls it.

    `Accelerator.save_state` writes each process's weight and optimizer shards, the registered
    scheduler and each process's random state into one temporary folder; the main process then adds
    state.json and renames it into place.
    """
    if state.step != step:
        raise ValueError(f"checkpoint step {step} differs from the train state's step {state.step}")
    root = Path(run_dir) / CHECKPOINTS
    final = checkpoint_dir(run_dir, step)
    # One name all processes agree on without talking: the step's.
    tmp = root / f"{_TMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            _publish(tmp, final, _meta("sharded", state))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    accelerator.wait_for_everyone()
    return final


def load_sharded_checkpoint(path: Path, accelerator: Any) -> TrainState:
    """Restore an FSDP / DeepSpeed checkpoint into the prepared model, optimizer and scheduler."""
    meta = json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))
    if meta["weights"] != "sharded":
        raise ValueError(f"{path}: holds {meta['weights']} weights, not an FSDP / DeepSpeed run's shards")
    with weights_only_loading() as refused:
        accelerator.load_state(str(path))
        if refused:  # accelerate passes over a random-state file it cannot read: refused all the same
            raise UnsafeCheckpoint(path, refused)
    return read_train_state(path)


# --- loading -------------------------------------------------------------------------------------


def _load_weights(model: nn.Module, folder: Path, kind: WeightsKind) -> None:
    if kind == "module":
        load_model(model, str(folder / MODULE_WEIGHTS), strict=True)
    elif kind == "peft":
        from peft import set_peft_model_state_dict

        for name in model.peft_config:  # type: ignore[union-attr]
            # save_pretrained puts the default adapter at the top and others in subfolders.
            sub = folder if name == "default" else folder / name
            weights = load_file(str(sub / "adapter_model.safetensors"))
            result = set_peft_model_state_dict(model, weights, adapter_name=name)
            if result.unexpected_keys:
                raise ValueError(
                    f"{sub}: adapter weights the model does not have: {result.unexpected_keys[:5]}"
                )
    else:
        _load_full_model(model, folder)


def _load_full_model(model: nn.Module, folder: Path) -> None:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for file in files:  # one file, or the shards save_pretrained wrote
        weights.update(load_file(str(file)))
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{folder}: weights the model does not have: {result.unexpected_keys[:5]}")
    # save_pretrained leaves out tied copies (lm_head tied to the embeddings): a missing key is only
    # acceptable if its tensor is the same storage as one that was loaded.
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in weights if k in own}
    untied = [k for k in result.missing_keys if own[k].data_ptr() not in loaded]
    if untied:
        raise ValueError(f"{folder}: weights missing from the checkpoint: {untied[:5]}")


def _torch_load(path: Path) -> Any:
    # weights_only: tensors, numbers, strings and containers only; no pickled code runs. AdamW,
    # bitsandbytes' 8-bit AdamW and transformers' LambdaLR schedules all fit. On CPU first: the
    # optimizer moves its state to each parameter's device when it loads.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError:
        raise UnsafeCheckpoint(path.parent, [str(path)]) from None
    except Exception as err:
        raise ValueError(f"{path}: cannot be read as a weights-only torch file: {err}") from err


def read_train_state(path: Path) -> TrainState:
    """The `TrainState` of a checkpoint folder, without loading anything else."""
    meta = json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {meta.get('format_version')!r} is not {FORMAT_VERSION}")
    return TrainState.from_json(meta["train_state"])


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, *, rank: int = 0
) -> TrainState:
    """Restore weights, optimizer, scheduler and RNG from a checkpoint folder; return its TrainState.

    `model`, `optimizer` and `scheduler` are built fresh exactly as for the original run (same
    config, same parameter order). The RNG is restored last, so building them may draw freely.
    """
    path = Path(path)
    meta = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    state = read_train_state(path)
    kind = _weights_kind(model)
    if meta["weights"] != kind:
        raise ValueError(f"{path}: checkpoint holds {meta['weights']} weights, the model is {kind}")
    _load_weights(model, path, kind)
    optimizer.load_state_dict(_torch_load(path / OPTIMIZER_FILE))
    scheduler.load_state_dict(_torch_load(path / SCHEDULER_FILE))
    rng_file = path / _rng_file(rank)
    if not rng_file.is_file():
        raise ValueError(f"{path}: no random state for process {rank}; resume with the run's process count")
    _set_rng_state(_torch_load(rng_file))
    return state


# --- pruning -------------------------------------------------------------------------------------


def prune_checkpoints(run_dir: Path, keep_last: int, best_step: int | None) -> list[Path]:
    """Delete all checkpoints but the last `keep_last` and the one of `best_step`; return those deleted."""
    if keep_last < 1:
        raise ValueError("keep_last must be at least 1: the latest checkpoint is what a resume needs")
    found = list_checkpoints(run_dir)
    keep = {step for step, _ in found[-keep_last:]}
    if best_step is not None:
        keep.add(best_step)
    removed = []
    for step, folder in found:
        if step not in keep:
            _discard(folder)
            removed.append(folder)
    return removed
