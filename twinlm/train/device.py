"""Which dtype and attention kernel a run uses, decided from the device's type in one place.

Under `accelerate launch` each process's device is `cuda:N`, not `cuda`: a string compare against
"cuda" sent every multi-GPU run to fp32 and SDPA. Everything here looks at `device.type` only.
"""

from __future__ import annotations

import importlib.util

import torch

from twinlm.errors import TwinError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def device_policy(
    device: torch.device | str, precision: str, attention: str, preset_attention: str | None, packing: bool
) -> tuple[torch.dtype, str]:
    """(weights and compute dtype, attention implementation) for a run on `device`.

    precision auto: bf16 on a CUDA GPU that supports it, else fp32 (bf16 autocast is ~13x slower on
    CPUs, STACK-NOTES.md). attention auto: the model preset's choice, else flash_attention_2 on a CUDA
    GPU where it is installed, else twinlm_packed (SDPA per packed sample) when packing, else sdpa.
    """
    cuda = torch.device(device).type == "cuda"
    if precision == "auto":
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    else:
        dtype = DTYPES[precision]
    return dtype, _attention(attention, cuda, preset_attention, packing)


def _attention(choice: str, cuda: bool, preset_choice: str | None, packing: bool) -> str:
    if choice == "flex_attention" and not cuda:  # PyTorch has no FlexAttention backward on CPUs
        raise TwinError(
            "train.attention: flex_attention trains only on a CUDA GPU; on a CPU use auto (twinlm_packed)"
        )
    if choice != "auto":
        return choice
    if preset_choice:
        return preset_choice
    if cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    # Packed rows: SDPA per sample, not over a T x T mask (~3x faster on a CPU, twinlm.train.attention).
    from twinlm.train import attention as packed_attention

    return packed_attention.NAME if packing else "sdpa"
