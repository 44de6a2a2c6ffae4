"""Several processes, one GPU each, on one machine or many: accelerate's launcher and its configs.

twinlm writes a plain `accelerate launch` config file for the strategy in `train.distributed` (plus a
DeepSpeed JSON for ZeRO), and the loop runs under `accelerate.Accelerator`, which reads what the
launcher put in the environment. No home-made distributed layer: `twinlm train --gpus N` is a
shortcut for `accelerate launch --config_file <written file> -m twinlm train ...`, and a multi-node
run is the same file with the machine count, this machine's rank and the main machine's address.

- ddp: each GPU holds the whole model; gradients are averaged. Fastest while the model fits (LoRA
  and QLoRA on a 7B model fit one 24 GB card), and what CPU processes use (gloo).
- fsdp: PyTorch FSDP2 shards weights, gradients and optimizer state over the GPUs; what full
  fine-tuning of a 7B model needs.
- zero2 / zero3: DeepSpeed ZeRO stage 2 (optimizer state and gradients sharded) or 3 (weights too);
  needs `pip install deepspeed`.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml

from twinlm.config import TrainConfig
from twinlm.errors import TwinError
from twinlm.files import write_atomic

if TYPE_CHECKING:  # torch and the checkpoint code load when training starts, not with the CLI
    from twinlm.train.checkpoint import TrainState

ACCELERATE_CONFIG = "accelerate.yaml"
DEEPSPEED_CONFIG = "deepspeed.json"


def deepspeed_config(stage: int, grad_accum: int, max_grad_norm: float, precision: str) -> dict[str, Any]:
    """The DeepSpeed JSON for ZeRO `stage`, with the numbers the loop must agree with.

    The loop counts the accumulation window and scales the loss itself; DeepSpeed divides each
    micro-batch's loss by `gradient_accumulation_steps` and clips at its window boundary, so both come
    from twin.yaml here. One "micro-batch" is one packed row (`train.batch_tokens` tokens).
    """
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if stage == 3:
        # The final save gathers the whole (16-bit) weights on the main process, like FSDP's.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "zero_optimization": zero,
        # The model is loaded in train.precision; "auto" means bf16 on the GPUs ZeRO is used on.
        "bf16": {"enabled": precision in ("auto", "bf16")},
        "fp16": {"enabled": False},  # no fp16 training (TrainConfig.precision says why)
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": max_grad_norm,
        "train_micro_batch_size_per_gpu": 1,
        "steps_per_print": 2**31 - 1,  # twinlm's progress bar and metrics.jsonl report progress
        "wall_clock_breakdown": False,
    }


def accelerate_config(
    strategy: str,
    processes: int,
    *,
    machines: int = 1,
    machine_rank: int = 0,
    main_address: str | None = None,
    main_port: int | None = None,
    deepspeed_file: Path | None = None,
) -> dict[str, Any]:
    """The `accelerate launch --config_file` contents; `processes` counts all machines' processes."""
    if processes < 1 or machines < 1 or processes % machines:
        raise TwinError(f"--gpus {processes} over {machines} machine(s): give the same count to each machine")
    if machines > 1 and not main_address:
        raise TwinError("several machines need --main-address: the main machine's address the others reach")
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_processes": processes,
        "num_machines": machines,
        "machine_rank": machine_rank,
        "dynamo_config": {"dynamo_backend": "NO"},  # train.compile is twinlm's own option
        "use_cpu": False,
        "rdzv_backend": "static",
        "same_network": True,
    }
    if machines > 1:
        config["main_process_ip"] = main_address
    if main_port is not None:
        config["main_process_port"] = main_port
    if not strategy.startswith("zero"):
        # twinlm loads the model in train.precision itself; accelerate's autocast stays off. (With
        # DeepSpeed, whose JSON holds the precision, accelerate refuses a mixed_precision here.)
        config["mixed_precision"] = "no"
    if strategy == "ddp":
        config["distributed_type"] = "MULTI_GPU"  # torchrun; CPU-only machines run the ranks on gloo
    elif strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 2,
            # One shard unit per decoder layer (the model's own _no_split_modules).
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",  # checkpoints: one shard per rank
            "fsdp_offload_params": False,
            "fsdp_cpu_ram_efficient_loading": False,
            # twinlm's train.gradient_checkpointing applies (transformers' own), not FSDP's.
            "fsdp_activation_checkpointing": False,
        }
    else:
        if deepspeed_file is None:
            raise ValueError("ZeRO needs the DeepSpeed JSON's path")
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "deepspeed_config_file": str(deepspeed_file),
            "zero3_init_flag": False,  # weights are loaded whole, then partitioned by the engine
            # Each machine runs `accelerate launch` itself (torchrun), as with ddp and fsdp: no ssh.
            "deepspeed_multinode_launcher": "standard",
        }
    return config


def write_launch_config(
    folder: Path,
    settings: TrainConfig,
    processes: int,
    *,
    machines: int = 1,
    machine_rank: int = 0,
    main_address: str | None = None,
    main_port: int | None = None,
) -> Path:
    """Write accelerate.yaml (and deepspeed.json for ZeRO) for `settings.distributed` into `folder`;
    return the yaml's path. `processes` counts all machines' processes."""
    strategy = settings.distributed
    folder.mkdir(parents=True, exist_ok=True)
    deepspeed_file = None
    if strategy in ("zero2", "zero3"):
        deepspeed_file = folder / DEEPSPEED_CONFIG
        ds = deepspeed_config(
            int(strategy[-1]), settings.grad_accum, settings.max_grad_norm, settings.precision
        )
        write_atomic(deepspeed_file, orjson.dumps(ds, option=orjson.OPT_INDENT_2).decode() + "\n")
    config = accelerate_config(
        strategy,
        processes,
        machines=machines,
        machine_rank=machine_rank,
        main_address=main_address,
        main_port=main_port,
        deepspeed_file=deepspeed_file.resolve() if deepspeed_file else None,
    )
    header = (
        f"# accelerate launch config written by `twinlm`: strategy {strategy}, {processes} process(es) on "
        f"{machines} machine(s).\n# Run: accelerate launch --config_file {ACCELERATE_CONFIG} -m twinlm "
        "train [options]\n"
    )
    path = folder / ACCELERATE_CONFIG
    write_atomic(path, header + yaml.safe_dump(config, sort_keys=False))
    return path


def make_accelerator(grad_accum: int) -> Any:
    """The Accelerator for this process, from what `accelerate launch` / torchrun put in the environment.

    Refuses the combinations accelerate would quietly turn into something else: without CUDA it runs
    several processes as DDP over gloo, whatever the config says.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    wants = _launched_strategy()
    if wants != "ddp" and not torch.cuda.is_available():
        raise TwinError(
            f"{wants} needs CUDA GPUs; on this machine several processes run as ddp "
            "(set train.distributed: ddp)"
        )
    if wants == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise TwinError("DeepSpeed ZeRO needs DeepSpeed: pip install deepspeed")
    # DeepSpeed counts the accumulation window itself (see deepspeed_config); DDP and FSDP do not.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=grad_accum if wants == "deepspeed" else 1,
    )
    if accelerator.num_processes > 1:
        # A process that ends with its process group alive leaves gloo's worker threads to the
        # interpreter's teardown, where it may abort (SIGABRT, "terminate called without an active
        # exception") after training finished, and the launcher then reports the run failed. End the
        # group while Python is still whole, on every way out (a TwinError as well as the last step).
        atexit.register(accelerator.state.destroy_process_group)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        if ds.get("gradient_accumulation_steps") not in (grad_accum, "auto"):
            raise TwinError(
                f"deepspeed config: gradient_accumulation_steps {ds['gradient_accumulation_steps']} but "
                f"train.grad_accum is {grad_accum}; write the launch config again (`twinlm launch-config`)"
            )
    return accelerator


def _launched_strategy() -> str:
    """ddp, fsdp or deepspeed: what the launcher's environment asks this process for (accelerate reads
    the ZeRO stage from the DeepSpeed JSON itself)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "ddp"


# --- what the loop does differently per strategy ---------------------------------------------------


def eval_assignment(n_bins: int, rank: int, world: int) -> list[int | None]:
    """The eval bins this process runs, by index, padded with None to the same count on every process.

    Under FSDP / ZeRO-3 each forward gathers the sharded weights from all processes: a process with one
    bin more than another would wait forever in that gather. Every process therefore runs
    ceil(n_bins / world) forwards, None meaning a fully masked batch (no trained token, adds 0).
    """
    mine: list[int | None] = list(range(rank, n_bins, world))
    return mine + [None] * (-(-n_bins // world) - len(mine))


@dataclass
class Strategy:
    """One place for what differs between one process, DDP, FSDP and DeepSpeed ZeRO, so the loop does
    not ask: preparing and resuming, the loss scale, gradient sync, the eval model, checkpoints."""

    accelerator: Any
    grad_accum: int

    @property
    def sharded(self) -> bool:
        """FSDP or ZeRO: no process holds the whole weights or optimizer state."""
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    @property
    def deepspeed(self) -> bool:
        from accelerate.utils import DistributedType

        return bool(self.accelerator.distributed_type == DistributedType.DEEPSPEED)

    @property
    def rank(self) -> int:
        return int(self.accelerator.process_index)

    @property
    def world(self) -> int:
        return int(self.accelerator.num_processes)

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def check_method(self, method: str) -> None:
        from twinlm.models.load import QUANTIZED

        if self.sharded and method in QUANTIZED:
            raise TwinError(
                f"train.method {method} with fsdp / ZeRO: a 4-bit model fits one GPU; use "
                "train.distributed: ddp"
            )

    def prepare(
        self, model: Any, optimizer: Any, scheduler: Any, checkpoint: Path | None
    ) -> tuple[Any, Any, TrainState | None]:
        """(the model to call, the optimizer to step, the resumed state or None).

        DDP averages the ranks' gradients; FSDP and ZeRO also shard weights, gradients and optimizer
        state. One process: the model and optimizer come back as they are. A whole checkpoint is loaded
        before wrapping; shards only into the wrapped objects.
        """
        from twinlm.train.checkpoint import load_checkpoint, load_sharded_checkpoint

        state = None
        if checkpoint is not None and not self.sharded:
            state = load_checkpoint(checkpoint, model, optimizer, scheduler, rank=self.rank)
        forward, optimizer = self.accelerator.prepare(model, optimizer)
        if self.sharded:
            # accelerate saves it as custom_checkpoint_0.pkl and loads that with weights_only=False;
            # load_sharded_checkpoint makes that load (and every other) weights-only.
            self.accelerator.register_for_checkpointing(scheduler)
            if checkpoint is not None:
                state = load_sharded_checkpoint(checkpoint, self.accelerator)
        return forward, optimizer, state

    def loss_scale(self, n_window: int) -> float:
        """What each micro-batch's loss sum is multiplied by so the step follows the mean token loss of
        the whole window (`n_window`: its trained tokens over all processes). The wrappers average
        gradients over processes, and DeepSpeed also divides by its accumulation steps: undone here."""
        return self.world * (self.grad_accum if self.deepspeed else 1) / n_window

    @contextlib.contextmanager
    def micro_batch(self, forward: Any, last: bool) -> Iterator[None]:
        """Gradients are exchanged (and DeepSpeed steps) once per window, on its last micro-batch."""
        # accelerate's own accumulation counter is off (gradient_accumulation_steps=1 but for
        # DeepSpeed): the loop says which micro-batch ends the window.
        self.accelerator.sync_gradients = last
        with contextlib.nullcontext() if last else self.accelerator.no_sync(forward):
            yield

    def eval_model(self, model: Any, forward: Any) -> Any:
        """Sharded weights exist whole only inside the wrapper's forward; otherwise the plain model (not
        compiled: eval would compile its own no-grad graphs)."""
        return forward if self.sharded else model

    def save(
        self, run_dir: Path, model: Any, optimizer: Any, scheduler: Any, state: TrainState, adapters: bool
    ) -> None:
        """Checkpoint this step: every process's random state, with FSDP / ZeRO every process's shard.
        Every process calls it."""
        from twinlm.train.checkpoint import rng_state, save_checkpoint, save_sharded_checkpoint

        if self.sharded:
            save_sharded_checkpoint(run_dir, state.step, self.accelerator, state)
            return
        from accelerate.utils import gather_object

        # Each process draws its own dropout masks: all of their generators are saved, by the main one.
        rng_states = gather_object([rng_state()]) if self.world > 1 else [rng_state()]
        if self.main:
            save_checkpoint(
                run_dir, state.step, model, optimizer, scheduler, state, adapter_only=adapters, rng=rng_states
            )
        self.accelerator.wait_for_everyone()

    def final_state_dict(self, forward: Any) -> dict[str, Any] | None:
        """Sharded weights gathered whole on the main process (every process takes part); None: the
        model's own."""
        return self.accelerator.get_state_dict(forward) if self.sharded else None

    def sum(self, *values: float) -> tuple[Any, ...]:
        """Each value summed over all processes (ints stay ints)."""
        if self.world == 1:
            return values
        import torch

        total = self.accelerator.reduce(
            torch.tensor(values, dtype=torch.float64, device=self.accelerator.device), "sum"
        )
        return tuple(
            int(v) if isinstance(x, int) else float(v) for x, v in zip(values, total.tolist(), strict=True)
        )

    def broadcast(self, value: Any) -> Any:
        """The main process's `value` on every process."""
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def all_finite(self, tensors: Iterable[Any]) -> bool:
        """Whether every value of `tensors` (this process's shards) is finite on every process."""
        bad = 0
        for tensor in tensors:
            local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # FSDP2's DTensor
            if local.numel() and not bool(local.detach().isfinite().all()):
                bad += 1
        (bad,) = self.sum(bad)
        return bad == 0
