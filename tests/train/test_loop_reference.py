"""The training loop against independent references, not against another run of itself: the gradient of
an accumulated step, the epochs' batch orders, the best checkpoint, the learning-rate schedule, the
trained-token count, and what a non-finite loss or weight does."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from twinlm.config import TwinConfig
from twinlm.errors import TwinError
from twinlm.models import resolve_model
from twinlm.models.load import LoraSettings, load_model
from twinlm.train import loop
from twinlm.train.checkpoint import list_checkpoints
from twinlm.train.data import collate_packed, load_split, pack
from twinlm.train.loop import train

from test_loop import make_workspace, metric_events, settings

IGNORED = -100  # the label value transformers and PyTorch ignore: the reference's own constant


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TwinConfig]:
    root = tmp_path_factory.mktemp("reference")
    config = make_workspace(root, "llama")
    # The chats are alike: give every sample its own trained-token count (3, 4, 5, ... of their ~40), so
    # that micro-batches differ in weight.
    path = root / "data" / "train.parquet"
    table = pq.read_table(path)
    rows = table.column("labels").to_pylist()
    for i, row in enumerate(rows):
        trained = [j for j, label in enumerate(row) if label != IGNORED]
        for j in trained[3 + i % 30 :]:
            row[j] = IGNORED
    column = table.schema.get_field_index("labels")
    table = table.set_column(column, table.field("labels"), pa.array(rows, type=table.field("labels").type))
    pq.write_table(table, path)
    return root, config


def _trained_tokens_in_parquet(path: Path) -> int:
    """Trained tokens of a split read straight from the parquet file: labels after the one-token shift
    that are not ignored."""
    labels = pq.read_table(path, columns=["labels"]).column("labels").to_pylist()
    return sum(sum(1 for x in row[1:] if x != IGNORED) for row in labels)


class _Stop(Exception):
    pass


def test_an_accumulated_step_has_the_gradient_of_the_whole_window_mean(
    workspace: tuple[Path, TwinConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """grad_accum 2 over micro-batches with unequal trained-token counts: the gradient the optimizer
    sees is that of the mean loss over every trained token of the window (one big batch), computed here
    with F.cross_entropy's own mean. Weighting each micro-batch by its own mean fails this."""
    root, config = workspace
    cfg = settings("lora", steps=1, grad_accum=2, batch_tokens=128, max_grad_norm=1e9, lora={"dropout": 0.0})
    seen: list[torch.Tensor] = []

    def capture(self: torch.optim.Optimizer, closure: Any = None) -> None:
        seen.extend(p.grad.detach().clone() for group in self.param_groups for p in group["params"])
        raise _Stop

    monkeypatch.setattr(torch.optim.AdamW, "step", capture)
    with pytest.raises(_Stop):
        train(config.model_copy(update={"train": cfg}), root, "accumulated")

    # The reference: the same initial model (the loop seeds before loading) and the same first window.
    train_set = load_split(root / "data", "train")
    window = pack(train_set, cfg.batch_tokens, cfg.seed, 0)[:2]
    batches = [collate_packed([train_set[i] for i in indices], "sdpa") for indices in window]
    counts = [int((b["labels"][0, 1:] != IGNORED).sum()) for b in batches]
    assert counts[0] != counts[1], counts  # unequal: a per-micro-batch mean would weigh them differently
    torch.manual_seed(cfg.seed)
    model, _, _ = load_model(
        resolve_model(config.build.model, root),
        "lora",
        lora=LoraSettings(cfg.lora.r, cfg.lora.alpha, 0.0, cfg.lora.target_modules, cfg.lora.rslora),
        dtype=torch.float32,
        device="cpu",
        attn_implementation="sdpa",
    )
    model.train()
    logits, labels = [], []
    for batch in batches:
        target = batch.pop("labels")
        logits.append(model(**batch, use_cache=False).logits[0, :-1])
        labels.append(target[0, 1:])
    F.cross_entropy(torch.cat(logits), torch.cat(labels), ignore_index=IGNORED).backward()
    expected = [p.grad for p in model.parameters() if p.requires_grad]
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_every_epoch_has_its_own_batch_order(
    workspace: tuple[Path, TwinConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, config = workspace
    train_set = load_split(root / "data", "train")
    orders = [pack(train_set, 128, 42, epoch) for epoch in (0, 1, 2)]
    for order in orders:  # each a partition of the samples
        assert sorted(i for indices in order for i in indices) == list(range(len(train_set)))
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]

    # And the loop asks for each epoch's own order.
    asked: list[int] = []

    def spy(examples: Any, max_tokens: int, seed: int, epoch: int) -> list[list[int]]:
        if examples is not None and len(examples) == len(train_set):
            asked.append(epoch)
        return pack(examples, max_tokens, seed, epoch)

    monkeypatch.setattr(loop, "pack", spy)
    cfg = settings(
        "lora", steps=0, epochs=3, grad_accum=2, batch_tokens=128, eval_every=1000, save_every=1000
    )
    train(config.model_copy(update={"train": cfg}), root, "epochs")
    assert {0, 1, 2} <= set(asked), asked


def test_best_step_is_the_lowest_eval_loss_and_its_checkpoint_is_kept(
    workspace: tuple[Path, TwinConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scripted eval losses (lowest at step 3 of 6), keep_last 1, a checkpoint only at the end: the best
    checkpoint is saved when it is found and survives pruning; best_step is the argmin in metrics.jsonl."""
    root, config = workspace
    script = [5.0, 4.0, 3.5, 1.0, 2.0, 6.0, 7.0]  # the eval loss after step k (k = 0 before training)
    done = [0]
    real = loop._loss_sum

    def scripted(model: Any, batch: Any, labels: torch.Tensor, fused: bool) -> tuple[torch.Tensor, int]:
        part, n = real(model, batch, labels, fused)
        if torch.is_grad_enabled():
            return part, n
        return torch.tensor(script[done[0]] * n), n  # eval: every token's loss is the script's value

    def on_step(step: int, total: int, loss: float, speed: float) -> None:
        done[0] = step

    monkeypatch.setattr(loop, "_loss_sum", scripted)
    cfg = settings("lora", steps=6, eval_every=1, save_every=6, keep_last=1)
    result = train(config.model_copy(update={"train": cfg}), root, "best", on_step=on_step)

    evals = {e["step"]: e["loss"] for e in metric_events(result.run_dir) if e["split"] == "eval"}
    assert evals == {k: pytest.approx(v) for k, v in enumerate(script)}
    best = min((loss, step) for step, loss in evals.items() if step > 0)[1]
    assert best == 3
    record = orjson.loads((result.run_dir / "result.json").read_bytes())
    assert record["best_step"] == best and record["best_eval_loss"] == pytest.approx(1.0)
    assert [step for step, _ in list_checkpoints(result.run_dir)] == [best, 6]


def test_accumulation_warmup_and_cosine_end_to_end(workspace: tuple[Path, TwinConfig]) -> None:
    """grad_accum 2, warmup and a cosine schedule over two whole epochs, in one process: the logged
    learning rate follows the schedule's formula (with warmup rounded up), tokens_seen counts the
    trained tokens of both epochs (no padding, no untrained prompt tokens), and it learns."""
    root, config = workspace
    peak, ratio = 1e-2, 0.03
    cfg = settings(
        "lora",
        steps=0,
        epochs=2,
        grad_accum=2,
        batch_tokens=128,
        lr_scheduler="cosine",
        warmup_ratio=ratio,
        learning_rate=peak,
        eval_every=1000,
        save_every=1000,
        packing=False,  # padded rows: padding must not count as trained
    )
    result = train(config.model_copy(update={"train": cfg}), root, "schedule")
    events = metric_events(result.run_dir)
    steps = [e for e in events if e["split"] == "train"]
    total = result.steps
    assert [e["step"] for e in steps] == list(range(1, total + 1))
    warmup = math.ceil(ratio * total)  # at least one warmup step when the ratio is positive
    assert warmup == 1 and total < 34  # 0.03 x total rounds down to no warmup at all

    def lr(step: int) -> float:  # transformers' linear warmup then cosine to 0, after `step` steps
        if step < warmup:
            return peak * step / warmup
        return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    assert [e["lr"] for e in steps] == pytest.approx([lr(s) for s in range(1, total + 1)], abs=1e-9)
    trained = _trained_tokens_in_parquet(root / "data" / "train.parquet")
    record = orjson.loads((result.run_dir / "result.json").read_bytes())
    assert record["tokens_seen"] == steps[-1]["tokens"] == 2 * trained
    assert result.last_eval_loss is not None and result.first_eval_loss is not None
    assert result.last_eval_loss < result.first_eval_loss


def _nan_loss_from(monkeypatch: pytest.MonkeyPatch, windows: set[int] | int) -> None:
    """Make the training loss NaN for the given windows (1-based: one window per step with grad_accum
    1), or for every window from that number on."""
    real = loop._loss_sum
    seen = [0]

    def poisoned(model: Any, batch: Any, labels: torch.Tensor, fused: bool) -> tuple[torch.Tensor, int]:
        part, n = real(model, batch, labels, fused)
        if not torch.is_grad_enabled():
            return part, n
        seen[0] += 1
        hit = seen[0] in windows if isinstance(windows, set) else seen[0] >= windows
        return (part * float("nan"), n) if hit else (part, n)

    monkeypatch.setattr(loop, "_loss_sum", poisoned)


def _all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(t.isfinite().all()) for t in tensors.values())


def test_a_non_finite_loss_skips_the_step_and_is_counted(
    workspace: tuple[Path, TwinConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    root, config = workspace
    _nan_loss_from(monkeypatch, {3})
    cfg = settings("lora", steps=5, save_every=1, keep_last=10)
    result = train(config.model_copy(update={"train": cfg}), root, "one-nan")
    assert result.steps == 5
    record = orjson.loads((result.run_dir / "result.json").read_bytes())
    assert record["skipped_steps"] == 1
    skipped = [e for e in metric_events(result.run_dir) if e.get("skipped_steps")]
    assert skipped == [{"step": 3, "split": "train", "loss": None, "skipped_steps": 1}]
    # The step after the skip trained on the next window; no weights took the NaN.
    assert [e["step"] for e in metric_events(result.run_dir) if e["split"] == "train" and e["loss"]] == [
        1,
        2,
        3,
        4,
        5,
    ]
    for _, folder in list_checkpoints(result.run_dir):
        assert _all_finite(load_file(folder / "adapter_model.safetensors"))
    assert _all_finite(load_file(result.run_dir / "final" / "adapter_model.safetensors"))


def test_non_finite_losses_in_a_row_stop_the_run_without_saving_them(
    workspace: tuple[Path, TwinConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    root, config = workspace
    _nan_loss_from(monkeypatch, 3)  # windows 3, 4, 5, ...
    cfg = settings("lora", steps=8, save_every=1, keep_last=10)
    with pytest.raises(TwinError, match=r"not finite 3 steps in a row \(after step 2\)"):
        train(config.model_copy(update={"train": cfg}), root, "all-nan")
    run = root / "runs" / "all-nan"
    assert [step for step, _ in list_checkpoints(run)] == [1, 2]
    for _, folder in list_checkpoints(run):
        assert _all_finite(load_file(folder / "adapter_model.safetensors"))
    assert not (run / "final").exists()


def test_non_finite_weights_are_never_saved(
    workspace: tuple[Path, TwinConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that leaves a NaN weight (finite loss and gradients): its checkpoint is refused."""
    root, config = workspace
    real_step = torch.optim.AdamW.step
    calls = [0]

    def poisoning_step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        out = real_step(self, closure)
        calls[0] += 1
        if calls[0] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    cfg = settings("lora", steps=4, save_every=1, eval_every=4, keep_last=10)
    with pytest.raises(TwinError, match="step 2 left weights that are not finite; not saved"):
        train(config.model_copy(update={"train": cfg}), root, "nan-weights")
    run = root / "runs" / "nan-weights"
    assert [step for step, _ in list_checkpoints(run)] == [1]
    assert not (run / "final").exists()
