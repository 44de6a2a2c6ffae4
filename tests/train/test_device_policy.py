"""The dtype and attention a run gets, from the device's type (CUDA faked), and the eval batches each
process runs under several processes."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from twinlm.errors import TwinError
from twinlm.train.device import device_policy
from twinlm.train.distributed import eval_assignment


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Set whether the (faked) GPU supports bf16 and whether flash_attn is installed."""
    real_find_spec = importlib.util.find_spec

    def configure(bf16: bool, flash: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)

        def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "flash_attn":
                return object() if flash else None
            return real_find_spec(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return configure


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1", torch.device("cuda", 3)])
def test_every_cuda_device_gets_bf16_and_flash_attention(fake_cuda: Any, device: Any) -> None:
    """Under several processes each one's device is cuda:N: it must be treated as CUDA (a compare with
    the string "cuda" sent every multi-GPU run to fp32 and SDPA)."""
    fake_cuda(bf16=True, flash=True)
    assert device_policy(device, "auto", "auto", None, True) == (torch.bfloat16, "flash_attention_2")
    assert device_policy(device, "auto", "auto", None, False) == (torch.bfloat16, "flash_attention_2")


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_without_bf16_or_flash_attention(fake_cuda: Any, device: str) -> None:
    fake_cuda(bf16=False, flash=False)
    assert device_policy(device, "auto", "auto", None, True) == (torch.float32, "twinlm_packed")
    assert device_policy(device, "auto", "auto", None, False) == (torch.float32, "sdpa")
    # What the config asks for is what it gets.
    assert device_policy(device, "bf16", "eager", None, True) == (torch.bfloat16, "eager")


def test_cpu_is_fp32_with_packed_attention_even_with_flash_installed(fake_cuda: Any) -> None:
    fake_cuda(bf16=True, flash=True)
    assert device_policy(torch.device("cpu"), "auto", "auto", None, True) == (torch.float32, "twinlm_packed")
    assert device_policy("cpu", "auto", "auto", None, False) == (torch.float32, "sdpa")
    assert device_policy("cpu", "fp32", "sdpa", None, True) == (torch.float32, "sdpa")


def test_a_preset_attention_wins_over_auto_but_not_over_a_setting(fake_cuda: Any) -> None:
    fake_cuda(bf16=True, flash=True)
    assert device_policy("cuda:1", "auto", "auto", "eager", True) == (torch.bfloat16, "eager")
    assert device_policy("cuda:1", "auto", "sdpa", "eager", True) == (torch.bfloat16, "sdpa")


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n_bins", [0, 1, 2, 5, 7, 8, 13])
def test_every_process_runs_the_same_number_of_eval_forwards(n_bins: int, world: int) -> None:
    """Under FSDP / ZeRO-3 a process with one eval forward more than another waits forever in its
    weight gather: every process runs ceil(n / world) forwards, padded with masked ones (None)."""
    per_rank = [eval_assignment(n_bins, rank, world) for rank in range(world)]
    assert {len(mine) for mine in per_rank} == {-(-n_bins // world)}
    real = [b for mine in per_rank for b in mine if b is not None]
    assert sorted(real) == list(range(n_bins))  # each bin exactly once
    padding = sum(b is None for mine in per_rank for b in mine)
    assert padding == len(per_rank[0]) * world - n_bins


def test_flex_attention_is_refused_on_a_cpu_in_one_line() -> None:
    """FlexAttention has no backward pass on CPUs: a run would crash at its first step with a traceback."""
    with pytest.raises(TwinError, match=r"train\.attention: flex_attention trains only on a CUDA GPU"):
        device_policy("cpu", "auto", "flex_attention", None, True)
    assert device_policy("cuda:1", "fp32", "flex_attention", None, True) == (torch.float32, "flex_attention")
