"""`twinlm train`: fine-tune the base model on the built dataset, resumable at every checkpoint.

A plain torch loop, not the HF Trainer: the fixed per-step overhead of the Trainer dominates small
models (measured ~2x on the tiny model, STACK-NOTES.md), and the loss must be the mean over the
trained tokens of the whole accumulation window, which the Trainer does not compute. Top to bottom:
the run folder -> the model (peft adapters or full) -> packed batches -> for each optimizer step, the
window's trained tokens counted first, each micro-batch's loss sum divided by that count -> eval,
metrics, checkpoint -> the final weights and the loss curve.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import torch

from twinlm.config import TwinConfig
from twinlm.errors import TwinError
from twinlm.files import write_atomic
from twinlm.interrupts import ctrl_c_calls
from twinlm.models import resolve_model
from twinlm.models.load import LoraSettings, eval_mode, load_model
from twinlm.models.presets import get_preset
from twinlm.prepare.outputs import read_build_info
from twinlm.train import attention as _packed_attention  # noqa: F401  (registers "twinlm_packed")
from twinlm.train import run as run_record
from twinlm.train.checkpoint import TrainState, latest_checkpoint, prune_checkpoints
from twinlm.train.data import (
    IGNORE_INDEX,
    Example,
    collate_packed,
    collate_padded,
    group_by_length,
    load_split,
    pack,
)
from twinlm.train.device import device_policy
from twinlm.train.distributed import Strategy, eval_assignment, make_accelerator
from twinlm.train.kernels import apply_liger_kernels
from twinlm.train.loss import token_loss_sum, trained_token_count, window_token_count
from twinlm.train.metrics import MetricsLog, plot_loss
from twinlm.train.report import Reporter


@dataclass(slots=True)
class TrainResult:
    run_dir: Path
    steps: int
    first_eval_loss: float | None
    last_eval_loss: float | None
    trainable_params: int
    total_params: int


MAX_NONFINITE_STEPS = 3  # windows in a row with a NaN / inf loss or gradient norm before the run stops

StepCallback = Callable[[int, int, float, float], None]  # (step, total steps, train loss, tokens/s)


def train(
    config: TwinConfig,
    workspace: Path,
    run_name: str | None = None,
    *,
    resume: bool = False,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Fine-tune on `workspace`/data into `workspace`/runs/<run_name>; with `resume`, continue it."""
    settings = config.train
    data_dir = workspace / "data"
    identity = run_record.data_identity(data_dir)  # checked again once the data is read
    info = read_build_info(data_dir)
    if resume:
        # The run goes on as recorded (its settings and step budget, on its data), whatever twin.yaml
        # says today; every process reads the same record.
        run_name = run_record.run_dir(workspace, run_name, resume=True).name
        config = run_record.resume_config(workspace / "runs" / run_name, config, data_dir)
        settings = config.train
    # One process, or one of several started by `accelerate launch` (ddp / fsdp / DeepSpeed ZeRO); what
    # differs between them is behind `strategy`.
    accelerator = make_accelerator(settings.grad_accum)
    strategy = Strategy(accelerator, settings.grad_accum)
    rank, world, main = strategy.rank, strategy.world, strategy.main
    strategy.check_method(settings.method)
    train_set, eval_set = load_split(data_dir, "train"), load_split(data_dir, "eval")
    run_record.unchanged_since(data_dir, identity)  # build.json and both splits are of one build
    if not train_set:
        raise TwinError(f"{data_dir / 'train.parquet'}: no training samples; build the dataset again")

    def order(epoch: int) -> list[list[int]]:
        group = pack if settings.packing else group_by_length
        return group(train_set, settings.batch_tokens, settings.seed, epoch)

    per_step = settings.grad_accum * world  # micro-batches per optimizer step, over all processes
    steps_per_epoch = len(order(0)) // per_step if world > 1 else math.ceil(len(order(0)) / per_step)
    if steps_per_epoch == 0:
        raise TwinError(
            f"train: {len(order(0))} packed micro-batches per epoch, fewer than {world} process(es) x "
            f"grad_accum {settings.grad_accum}: lower train.grad_accum or train.batch_tokens, or use fewer "
            "processes"
        )
    # Every process must use the same run folder: the main one picks it (a fresh name is a timestamp).
    run_dir = strategy.broadcast(run_record.run_dir(workspace, run_name, resume) if main else None)
    held = run_record.hold_run(run_dir) if main else None  # noqa: F841 (the lock lives while training does)

    device = str(accelerator.device)
    preset = get_preset(info["model"])
    dtype, attention = device_policy(
        accelerator.device,
        settings.precision,
        settings.attention,
        preset.attn_implementation if preset else None,
        settings.packing,
    )
    adapters = settings.method != "full"
    lr = settings.learning_rate or (preset.lr(settings.method) if preset else (2e-4 if adapters else 1e-5))

    random.seed(settings.seed)
    torch.manual_seed(settings.seed)  # adapter initialisation is random: seed it before loading
    model_path = resolve_model(info["model"], workspace)
    lora = settings.lora
    model, trainable, total = load_model(
        model_path,
        settings.method,
        lora=LoraSettings(lora.r, lora.alpha, lora.dropout, lora.target_modules, lora.rslora),
        dtype=dtype,
        device=device,
        attn_implementation=attention,
        trust_remote_code=config.build.trust_remote_code,
        gradient_checkpointing=settings.gradient_checkpointing,
    )
    model.train()
    if settings.liger_kernels:
        apply_liger_kernels(model, device)
    if not resume and main:
        run_record.describe_run(
            run_dir, config, data_dir, info, lr, attention, str(dtype), trainable, total, identity
        )

    pad_id = _pad_id(data_dir)
    run_record.unchanged_since(data_dir, identity)  # the tokenizer too (each process reads it)
    window = _sliding_window(model) if settings.packing else None

    def collate(examples: list[Example]) -> dict[str, Any]:
        if settings.packing:
            # The 4-D mask in the queries' dtype, the hidden states' (sdpa rejects another float dtype).
            mask_dtype = model.get_input_embeddings().weight.dtype
            return collate_packed(examples, attention, mask_dtype, window)
        return collate_padded(examples, pad_id)

    total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=settings.weight_decay
    )
    from transformers import get_scheduler

    scheduler = get_scheduler(
        settings.lr_scheduler,
        optimizer,
        # Rounded up: a short run with a small ratio still warms up (20 steps x 0.03: one step, not none).
        num_warmup_steps=math.ceil(settings.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    checkpoint = latest_checkpoint(run_dir) if resume else None
    forward, optimizer, resumed = strategy.prepare(model, optimizer, scheduler, checkpoint)
    state = resumed or TrainState(data_seed=settings.seed, world_size=world)
    if state.world_size != world:
        raise TwinError(
            f"{checkpoint}: the run trained in {state.world_size} process(es); resume it with "
            f"--gpus {state.world_size} (the batch order and random state are per process)"
        )
    if settings.compile:
        # Packed rows differ in length: dynamic shapes instead of one compile per length.
        forward = torch.compile(forward, dynamic=True)
    metrics = MetricsLog(run_dir, resume_step=state.step if resume else None) if main else None
    reporter = Reporter(settings.report_to, run_dir, config.model_dump(mode="json")) if main else None

    def log(step: int, split: str, loss: float | None, **values: float | None) -> None:
        if metrics is not None and reporter is not None:
            metrics.log(step, split, loss, **values)
            reporter.log(step, split, {"loss": loss, **values})

    first_eval = run_record.first_eval(run_dir) if resume else None
    last_eval: float | None = None
    ctrl_c = _CtrlC()

    def noting_ctrl_c() -> AbstractContextManager[None]:
        """With several processes, Ctrl-C only notes that it was pressed and every process stops at the
        same point: the next window (the note rides on the window's token sum, an all-reduce made
        anyway) or the next eval batch. Raised wherever each process was, it let one leave while another
        waited for it in a collective call, which then failed instead of saying where to resume. One
        process keeps the immediate KeyboardInterrupt."""
        return ctrl_c_calls(ctrl_c.press) if world > 1 else nullcontext()

    def evaluate() -> float | None:
        if not eval_set:
            return None
        eval_mode(model)
        loss_sum, count = 0.0, 0
        evaluated = strategy.eval_model(model, forward)
        bins = pack(eval_set, settings.batch_tokens, settings.seed, 0)
        with torch.no_grad():
            # The same number of forwards on every process (sharded forwards gather weights from all).
            for b in eval_assignment(len(bins), rank, world):
                if world > 1 and strategy.sum(int(ctrl_c.pressed))[0]:
                    # every process has the same number of batches: all stop here
                    raise StoppedTogether(strategy.accelerator.wait_for_everyone)
                batch = collate([eval_set[i] for i in bins[0 if b is None else b]])
                labels = batch.pop("labels")
                if b is None:  # nothing left for this process: a forward that counts no token
                    labels = torch.full_like(labels, IGNORE_INDEX)
                part, n = _loss_sum(evaluated, _to(batch, device), labels, settings.liger_kernels)
                loss_sum, count = loss_sum + part.item(), count + n
        loss_sum, count = strategy.sum(loss_sum, count)
        model.train()
        return loss_sum / count if count else None

    if state.step == 0 and first_eval is None:
        with noting_ctrl_c():
            first_eval = evaluate()
        if first_eval is not None:
            log(0, "eval", first_eval)

    def save() -> None:
        if not strategy.all_finite(p for p in model.parameters() if p.requires_grad):
            raise TwinError(
                f"{run_dir}: step {state.step} left weights that are not finite; not saved. Lower "
                "train.learning_rate or train.max_grad_norm and train again (or --resume from the last "
                "checkpoint)"
            )
        strategy.save(run_dir, model, optimizer, scheduler, state, adapters)
        if main:
            prune_checkpoints(run_dir, settings.keep_last, state.best_step)

    nonfinite = 0  # windows skipped in a row for a non-finite loss or gradient norm
    with noting_ctrl_c():
        while state.step < total_steps:
            windows = _chunks(order(state.epoch), per_step)
            if world > 1:
                windows = windows[:steps_per_epoch]  # every process needs its share of every window
            # A whole epoch with no step (no window has a trained token) would loop over epochs forever.
            whole_epoch, steps_before = state.batch_in_epoch == 0, state.step
            while state.batch_in_epoch < len(windows) and state.step < total_steps:
                started = time.perf_counter()
                mine = windows[state.batch_in_epoch][
                    rank * settings.grad_accum : (rank + 1) * settings.grad_accum
                ]
                micro = [collate([train_set[i] for i in indices]) for indices in mine]
                state.batch_in_epoch += 1
                # The window's trained tokens over all processes, counted before any forward: each
                # micro-batch's loss sum is divided by it (twinlm.train.loss).
                # Ctrl-C with several processes: its flag rides on this sum, so that all stop here
                (n_window, stop) = strategy.sum(window_token_count(micro), int(ctrl_c.pressed))
                if stop:
                    raise StoppedTogether(strategy.accelerator.wait_for_everyone)
                if n_window == 0:
                    continue  # nothing trained in this window: no step
                loss_sum, tokens = 0.0, 0
                for k, batch in enumerate(micro):
                    labels = batch.pop("labels")
                    with strategy.micro_batch(forward, last=k == len(micro) - 1):
                        part, _ = _loss_sum(forward, _to(batch, device), labels, settings.liger_kernels)
                        accelerator.backward(part * strategy.loss_scale(n_window))
                    loss_sum, tokens = loss_sum + part.item(), tokens + int(batch["input_ids"].numel())
                loss_sum, tokens = strategy.sum(loss_sum, tokens)
                grad_norm = accelerator.clip_grad_norm_(forward.parameters(), settings.max_grad_norm)
                if not _finite(loss_sum, grad_norm):
                    # A NaN or inf would spread into every weight: no update from this window. (DeepSpeed's
                    # engine steps inside backward: there the check of the weights before saving guards.)
                    optimizer.zero_grad(set_to_none=True)
                    state.skipped_steps, nonfinite = state.skipped_steps + 1, nonfinite + 1
                    log(state.step + 1, "train", None, skipped_steps=state.skipped_steps)
                    if nonfinite >= MAX_NONFINITE_STEPS:
                        raise TwinError(
                            f"{run_dir}: the loss or gradient norm was not finite {nonfinite} steps in a row "
                            f"(after step {state.step}); nothing from them was saved. Lower "
                            "train.learning_rate or use train.precision: fp32, then train again (or --resume "
                            "from the last checkpoint)"
                        )
                    continue
                nonfinite = 0
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.tokens_seen += n_window  # trained tokens, not padding or untrained prompt tokens
                train_loss, speed = loss_sum / n_window, tokens / max(time.perf_counter() - started, 1e-9)
                if on_step:
                    on_step(state.step, total_steps, train_loss, speed)
                last = state.step == total_steps
                # Everything about step K is logged before checkpoint K is saved (MetricsLog's resume rule).
                if state.step % settings.log_every == 0 or last:
                    log(
                        state.step,
                        "train",
                        train_loss,
                        lr=scheduler.get_last_lr()[0],
                        tokens_per_s=speed,
                        tokens=state.tokens_seen,
                    )
                if state.step % settings.eval_every == 0 or last:
                    last_eval = evaluate()
                    if last_eval is not None:
                        log(state.step, "eval", last_eval)
                        if state.best_eval_loss is None or last_eval < state.best_eval_loss:
                            state.best_eval_loss, state.best_step = last_eval, state.step
                # The best checkpoint is saved when it is found: result.json's best_step always has one.
                if state.step % settings.save_every == 0 or last or state.best_step == state.step:
                    save()
            if state.batch_in_epoch >= len(windows):
                if whole_epoch and state.step == steps_before and state.skipped_steps == 0:
                    raise TwinError(
                        f"{data_dir}: no sample of the train split has a trained token (every label is "
                        "masked): nothing to learn. Check who is trained (build.targets) and build again"
                    )
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    if reporter is not None:
        reporter.close()
    whole = strategy.final_state_dict(forward)
    if not main:
        return TrainResult(run_dir, state.step, first_eval, last_eval, trainable, total)
    final = run_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    model.save_pretrained(final, safe_serialization=True, state_dict=whole)
    plot_loss(run_dir)
    write_atomic(
        run_dir / "result.json",
        orjson.dumps(
            {
                "steps": state.step,
                "first_eval_loss": first_eval,
                "last_eval_loss": last_eval,
                "best_eval_loss": state.best_eval_loss,
                "best_step": state.best_step,
                "tokens_seen": state.tokens_seen,
                "skipped_steps": state.skipped_steps,
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
        + "\n",
    )
    return TrainResult(run_dir, state.step, first_eval, last_eval, trainable, total)


@dataclass(slots=True)
class _CtrlC:
    pressed: bool = False

    def press(self) -> None:  # from the SIGINT handler: a plain flag
        self.pressed = True


class StoppedTogether(KeyboardInterrupt):
    """Ctrl-C in a run of several processes, raised in every process at the same point (train.noting_ctrl_c).
    Call `wait_for_the_others()` once the main process has said where to resume: a process that ended
    first would have the launcher stop the others, perhaps before the main one said it."""

    def __init__(self, wait_for_the_others: Callable[[], None]) -> None:
        super().__init__()
        self.wait_for_the_others = wait_for_the_others


def _loss_sum(
    model: Any, batch: dict[str, torch.Tensor], labels: torch.Tensor, model_computes_loss: bool
) -> tuple[torch.Tensor, int]:
    """(sum of the batch's trained-token losses, trained tokens).

    With Liger's fused linear cross-entropy the model computes the loss from its last hidden states
    without materialising the logits; `num_items_in_batch=1` makes that loss a sum (transformers and
    Liger divide a summed loss by it), the same quantity token_loss_sum computes from the logits.
    """
    if model_computes_loss:
        labels_there = labels.to(batch["input_ids"].device)
        output = model(**batch, labels=labels_there, num_items_in_batch=1, use_cache=False)
        return output.loss, trained_token_count(labels)
    return token_loss_sum(model(**batch, use_cache=False).logits, labels)


def _pad_id(data_dir: Path) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad)


def _sliding_window(model: Any) -> dict[str, int | None]:
    """Each layer type's sliding window, for the packed 4-D mask (Gemma and Qwen2 window only some
    layers; a TwinError for layers no mask reaches)."""
    from twinlm.train.data import attention_windows

    return attention_windows(model.config)


def _finite(loss_sum: float, grad_norm: Any) -> bool:
    """Whether the window's loss and gradient norm are finite (DeepSpeed may not report a norm)."""
    return math.isfinite(loss_sum) and (grad_norm is None or math.isfinite(float(grad_norm)))


def _chunks(items: list[list[int]], size: int) -> list[list[list[int]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _to(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}
