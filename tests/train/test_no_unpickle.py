"""Resuming never unpickles (issue 16, point 4): a checkpoint file whose pickle would run code when loaded
(here: write a marker file) is refused, in one line naming it, and the code never runs. That holds for
twinlm's own checkpoints (optimizer.pt, scheduler.pt, rng.pt) and for the FSDP / ZeRO ones that
accelerate writes and reads (custom_checkpoint_0.pkl, which accelerate loads with weights_only=False,
random_states_0.pkl, and torch.distributed.checkpoint's pickled .metadata)."""

from __future__ import annotations

import builtins
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from twinlm.errors import TwinError
from twinlm.train.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    load_sharded_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)
from twinlm.train.safe_load import weights_only_loading


class Evil:
    """Unpickling this writes a file: what a tampered checkpoint could do with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",)


def plant(path: Path, marker: Path) -> None:
    torch.save({"state": Evil(marker), "param_groups": []}, path)


def toy() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_a_pickle_in_a_checkpoint_is_refused_and_never_runs(tmp_path: Path, name: str) -> None:
    model, optimizer, scheduler = toy()
    save_checkpoint(tmp_path, 1, model, optimizer, scheduler, TrainState(step=1), adapter_only=False)
    folder = latest_checkpoint(tmp_path)
    assert folder is not None
    marker = tmp_path / "marker"
    plant(folder / name, marker)
    with pytest.raises(ValueError, match=name):
        load_checkpoint(folder, *toy())
    assert not marker.exists()


@pytest.fixture
def accelerator() -> Iterator[object]:
    """A one-process CPU Accelerator (the sharded strategies' checkpoint calls are the same)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)  # other tests build their own


def sharded_run(accelerator: object, run_dir: Path) -> tuple[Path, nn.Module, object, object]:
    """A checkpoint written by Accelerator.save_state, as FSDP and ZeRO runs write them."""
    model, optimizer, scheduler = toy()
    model, optimizer = accelerator.prepare(model, optimizer)  # type: ignore[attr-defined]
    accelerator.register_for_checkpointing(scheduler)  # type: ignore[attr-defined]
    folder = save_sharded_checkpoint(run_dir, 1, accelerator, TrainState(step=1))
    return folder, model, optimizer, scheduler


def test_sharded_checkpoint_resumes_its_scheduler_and_random_state(
    tmp_path: Path, accelerator: object
) -> None:
    folder, _, _, scheduler = sharded_run(accelerator, tmp_path)
    expected_lr = scheduler.get_last_lr()  # type: ignore[attr-defined]
    draw = torch.rand(3)  # what the restored generator must draw again
    scheduler.step()  # type: ignore[attr-defined]
    assert load_sharded_checkpoint(folder, accelerator).step == 1
    assert scheduler.get_last_lr() == expected_lr  # type: ignore[attr-defined]
    assert torch.equal(torch.rand(3), draw)


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_a_pickle_in_a_sharded_checkpoint_is_refused_and_never_runs(
    tmp_path: Path, accelerator: object, name: str
) -> None:
    folder, *_ = sharded_run(accelerator, tmp_path)
    assert (folder / name).is_file()
    marker = tmp_path / "marker"
    plant(folder / name, marker)
    with pytest.raises(TwinError, match=name) as refused:
        load_sharded_checkpoint(folder, accelerator)
    assert not marker.exists()
    assert "\n" not in str(refused.value)


def test_distributed_checkpoint_metadata_is_read_without_running_code(tmp_path: Path) -> None:
    """FSDP's sharded state goes through torch.distributed.checkpoint, whose .metadata file is a pickle."""
    import torch.distributed.checkpoint as dcp

    model, optimizer, _ = toy()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "note": "step 1"}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp_path / "dcp")), no_dist=True)
    target = {"model": nn.Linear(4, 2).state_dict()}
    with weights_only_loading():
        dcp.load(target, storage_reader=dcp.FileSystemReader(str(tmp_path / "dcp")), no_dist=True)
    assert torch.equal(target["model"]["weight"], model.state_dict()["weight"])

    marker = tmp_path / "marker"
    (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(TwinError, match=r"\.metadata"), weights_only_loading():
        dcp.load(target, storage_reader=dcp.FileSystemReader(str(tmp_path / "dcp")), no_dist=True)
    assert not marker.exists()
