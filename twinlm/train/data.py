"""The training data path: read a built dataset, pack it into micro-batches, collate them.

Two ways to batch, and never a silent mix of samples:

- **Packed** (`pack` + `collate_packed`): several samples concatenated into one row with no padding.
  Positions restart at 0 for each sample, and no token may attend to another sample:
    * attention implementations with varlen kernels (flash_attention_2/3) need only `position_ids`:
      transformers finds the sample boundaries where the positions drop back to 0 and runs the
      varlen kernel per sample;
    * every other implementation (sdpa, eager: all that runs on a CPU) gets an explicit 4-D
      block-diagonal causal mask ([1, 1, T, T], 0 = attend, -inf = not), which transformers uses as
      given. (transformers 5 builds that mask itself from `position_ids` when no mask is passed,
      but only when there is no KV cache: with the default `use_cache=True` the samples silently
      attend to each other -- pinned by a test. Hence the explicit mask; the loop should pass
      `use_cache=False` anyway.) The mask costs T*T elements of the compute dtype: fine for
      CPU-sized rows; on a GPU prefer flash attention.
  Sliding windows are per layer (`attention_windows`): Gemma 2/3 and Qwen2 (`max_window_layers`)
  window only some layers, and a model with mixed layers gets one mask per layer type.
  The model shifts labels by one inside its loss (token t predicts label t+1), so the last token of
  one sample would "predict" the first label of the next one. `collate_packed` therefore sets the
  label of every sample's first token to -100 in the packed row. Unpacked, that label is never used
  either (the shift drops it), so packed and unpacked train exactly the same tokens.
- **Padded** (`group_by_length` + `collate_padded`): right padding, a 2-D attention mask, labels -100
  on padding. Labels always come from the dataset, never from the input ids, so an EOS token stays
  trained even when the pad token is the EOS token.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from twinlm.errors import TwinError
from twinlm.prepare.outputs import read_rows
from twinlm.prepare.sample import IGNORE_INDEX

# Attention implementations that take packed rows from position_ids alone (varlen kernels).
# Attention that finds sample bounds from position_ids itself ("twinlm_packed": twinlm.train.attention).
VARLEN_ATTENTION = frozenset({"flash_attention_2", "flash_attention_3", "twinlm_packed"})
# Kernels given no mask: transformers finds the samples of a packed row from position_ids (a position
# that does not follow the one before starts a sample) and builds a document mask with each layer's
# window itself, as a FlexAttention BlockMask (only the blocks a sample needs are computed).
MASK_FROM_POSITIONS = frozenset({"flex_attention"})


@dataclass(frozen=True, slots=True, eq=False)  # eq off: arrays do not compare to one bool
class Example:
    """One tokenized sample. The arrays are int32 views into the split's one buffer (memory: a
    large dataset as Python lists of ints would take ~8x more)."""

    sample_id: str
    input_ids: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        """Tokens that contribute to the loss: labels after the one-token shift that are not -100."""
        return int(np.count_nonzero(self.labels[1:] != IGNORE_INDEX))


def make_example(sample_id: str, input_ids: Sequence[int], labels: Sequence[int]) -> Example:
    """An Example from plain lists (tests, small tools)."""
    ids = np.asarray(input_ids, dtype=np.int32)
    lab = np.asarray(labels, dtype=np.int32)
    if ids.ndim != 1 or ids.shape != lab.shape or len(ids) == 0:
        raise ValueError(f"sample {sample_id!r}: input_ids and labels must be equal-length, non-empty")
    return Example(sample_id, ids, lab)


def _list_column(table: pa.Table, name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list<int> column; row i is values[offsets[i]:offsets[i + 1]]."""
    column = table.column(name).combine_chunks()
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        raise TwinError(f"{path}: column {name!r} is {column.type}, expected a list of integers")
    if column.null_count:
        row = column.is_null().to_pylist().index(True)
        raise TwinError(f"{path}: row {row}: {name} is empty (null)")
    # Offsets index into the child array as is, so a sliced column stays correct.
    values = column.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return values, column.offsets.to_numpy()


def load_split(folder: Path, split: str) -> list[Example]:
    """Read `folder/{split}.parquet` (written by `twinlm build`) into Examples, checked row by row."""
    path = Path(folder) / f"{split}.parquet"
    table = read_rows(path)
    ids, id_offsets = _list_column(table, "input_ids", path)
    labels, label_offsets = _list_column(table, "labels", path)
    sample_ids = table.column("sample_id").to_pylist()
    examples = []
    for row, sample_id in enumerate(sample_ids):
        a, b = int(id_offsets[row]), int(id_offsets[row + 1])
        c, d = int(label_offsets[row]), int(label_offsets[row + 1])
        where = f"{path}: row {row} (sample {sample_id!r})"
        if b - a == 0:
            raise TwinError(f"{where}: no tokens")
        if b - a != d - c:
            raise TwinError(f"{where}: {b - a} input ids but {d - c} labels")
        examples.append(Example(str(sample_id), ids[a:b], labels[c:d]))
    return examples


def _rng(seed: int, epoch: int) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`: the same order on every run and platform.
    return random.Random(f"twinlm:{seed}:{epoch}")


def pack(examples: Sequence[Example], max_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices of `examples` per packed micro-batch (bin), each bin at most `max_tokens` long.

    Best-fit decreasing: longest samples first, each into the fullest bin it still fits (a sorted
    list of free space, so O(n log n)); equal lengths are ordered by a seeded shuffle and the bins
    are shuffled, so the result depends only on (seed, epoch). A sample is never split; one longer
    than `max_tokens` gets a bin of its own (the loop may truncate or skip it: that is its call).
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    rng = _rng(seed, epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    order.sort(key=lambda i: -len(examples[i]))  # stable: ties keep the shuffled order
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted
    for i in order:
        length = len(examples[i])
        slot = bisect_left(free, (length, -1))  # the first bin with space >= length
        if length >= max_tokens or slot == len(free):
            bins.append([i])
            if length < max_tokens:
                insort(free, (max_tokens - length, len(bins) - 1))
            continue
        space, b = free.pop(slot)
        bins[b].append(i)
        if space > length:
            insort(free, (space - length, b))
    rng.shuffle(bins)
    return bins


def group_by_length(examples: Sequence[Example], max_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices per padded micro-batch: similar lengths together, (rows x longest) <= max_tokens.

    The fallback when packing is not wanted: little padding, deterministic in (seed, epoch).
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    rng = _rng(seed, epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    order.sort(key=lambda i: len(examples[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so the newest sample is the longest of the batch.
        if current and (len(current) + 1) * len(examples[i]) > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def needs_4d_mask(attn_implementation: str) -> bool:
    """Whether packed rows need an explicit block-diagonal mask (no varlen kernel)."""
    return attn_implementation not in VARLEN_ATTENTION | MASK_FROM_POSITIONS


def block_causal_mask(
    lengths: Sequence[int], dtype: torch.dtype = torch.float32, sliding_window: int | None = None
) -> torch.Tensor:
    """[1, 1, T, T] additive mask: 0 where query q may see key k (same sample, k <= q), else -inf.

    `sliding_window` (Mistral-style: q - k < window) is applied too, because transformers uses a
    4-D mask as given and would not add the window itself.
    """
    sample = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(list(lengths)))
    q = torch.arange(len(sample))[:, None]
    k = torch.arange(len(sample))[None, :]
    allowed = (sample[:, None] == sample[None, :]) & (k <= q)
    if sliding_window is not None:
        allowed &= q - k < sliding_window
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, float("-inf"))
    return mask[None, None]


# Layer types (transformers' `config.layer_types`) whose attention a 4-D mask or twinlm_packed covers.
FULL_ATTENTION, SLIDING_ATTENTION = "full_attention", "sliding_attention"


def attention_windows(config: Any) -> dict[str, int | None]:
    """Each attention layer type's sliding window (None: plain causal), from a transformers config.

    transformers 5 names each layer's type in `config.layer_types`: Gemma 2/3 alternate sliding and
    full layers, Qwen2 windows the layers from `max_window_layers` on (only with `use_sliding_window`);
    a config without layer types (Mistral) applies `sliding_window` to every layer. Layer types no
    attention mask reaches (linear attention, convolutions, state spaces) would mix packed samples:
    refused, with the fix.
    """
    if hasattr(config, "get_text_config"):  # a multimodal config: the text model's layers
        config = config.get_text_config()
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or not getattr(config, "use_sliding_window", True):
        window = None
    layer_types = getattr(config, "layer_types", None)
    if not layer_types:
        return {SLIDING_ATTENTION if window is not None else FULL_ATTENTION: window}
    unknown = sorted(set(layer_types) - {FULL_ATTENTION, SLIDING_ATTENTION})
    if unknown:
        name = getattr(config, "_name_or_path", "") or getattr(config, "model_type", "the model")
        raise TwinError(
            f"{name}: layers of type {', '.join(map(repr, unknown))} would let packed samples see each "
            "other; set train.packing: false in twin.yaml"
        )
    return {kind: window if kind == SLIDING_ATTENTION else None for kind in dict.fromkeys(layer_types)}


class LayerMasks(dict[str, torch.Tensor]):
    """4-D masks per layer type. Models whose layers differ (Gemma 2/3, Qwen2 and the other models
    with `layer_types`) take a dict as `attention_mask` and give each layer its type's mask; `to()`
    moves it like the batch's tensors."""

    def to(self, *args: Any, **kwargs: Any) -> LayerMasks:
        return LayerMasks({kind: mask.to(*args, **kwargs) for kind, mask in self.items()})


def collate_packed(
    examples: Sequence[Example],
    attn_implementation: str = "sdpa",
    mask_dtype: torch.dtype = torch.float32,
    sliding_window: int | Mapping[str, int | None] | None = None,
) -> dict[str, Any]:
    """One packed row: input_ids, labels, position_ids [1, T] and, where needed, a 4-D mask.

    `mask_dtype` must be the dtype of the model's queries (sdpa rejects a float mask of another
    dtype). `sliding_window` is one window for every layer, or `attention_windows(config)`: when
    layer types differ in window, the mask is a `LayerMasks` with one mask per layer type.
    Labels at each sample's first token are -100 (see the module docstring: the shift inside the
    loss would otherwise train sample B's first token from sample A's last one).
    """
    if not examples:
        raise ValueError("collate_packed needs at least one example")
    input_ids = torch.from_numpy(np.concatenate([e.input_ids for e in examples]).astype(np.int64))
    labels = torch.from_numpy(np.concatenate([e.labels for e in examples]).astype(np.int64))
    positions = torch.cat([torch.arange(len(e)) for e in examples])
    starts = np.cumsum([0] + [len(e) for e in examples[:-1]])
    labels[torch.from_numpy(starts)] = IGNORE_INDEX
    batch = {
        "input_ids": input_ids[None],
        "labels": labels[None],
        "position_ids": positions[None],
    }
    if needs_4d_mask(attn_implementation):
        lengths = [len(e) for e in examples]
        windows = sliding_window if isinstance(sliding_window, Mapping) else {"": sliding_window}
        masks = {w: block_causal_mask(lengths, mask_dtype, w) for w in set(windows.values())}
        if len(masks) == 1:  # every layer alike: a plain tensor, which every model takes
            batch["attention_mask"] = next(iter(masks.values()))
        else:
            batch["attention_mask"] = LayerMasks({kind: masks[w] for kind, w in windows.items()})
    return batch


def collate_padded(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded rows: input_ids, attention_mask (1 = token), labels (-100 on padding).

    Labels are the dataset's own, so an EOS equal to `pad_id` is still trained where the dataset
    trains it; only the padding added here is masked.
    """
    if not examples:
        raise ValueError("collate_padded needs at least one example")
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e)
        input_ids[row, :n] = torch.from_numpy(e.input_ids.astype(np.int64))
        labels[row, :n] = torch.from_numpy(e.labels.astype(np.int64))
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
