"""Liger's fused Triton kernels for the model being trained (train.liger_kernels).

Liger replaces RMSNorm, RoPE, SwiGLU and, above all, the final projection + cross-entropy with
fused GPU kernels: the [tokens x vocabulary] logits are never materialised, which is most of the
activation memory of a 7B model at 2048+ tokens. The kernels are Triton, so CUDA only; the loop then
lets the model compute the (summed) loss itself (loop._loss_sum).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from twinlm.errors import TwinError


def apply_liger_kernels(model: Any, device: str) -> None:
    """Patch `model` (a transformers model, or a peft model around one) in place with Liger's kernels."""
    if not device.startswith("cuda"):
        raise TwinError("train.liger_kernels: Liger's kernels run on CUDA GPUs only; set it to false here")
    if importlib.util.find_spec("liger_kernel") is None:
        raise TwinError("train.liger_kernels: Liger is not installed: pip install liger-kernel")
    from transformers.integrations.liger import apply_liger_kernel

    # transformers' own hook (what Trainer's use_liger_kernel calls): unwraps peft, picks the patches
    # for the model's architecture.
    apply_liger_kernel(model, {})
