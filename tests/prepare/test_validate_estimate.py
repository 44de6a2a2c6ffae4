"""validate's training-time estimate: every training method `twinlm train` accepts has a price."""

from __future__ import annotations

import typing

import pytest

from twinlm.config import TrainConfig
from twinlm.errors import TwinError
from twinlm.prepare.validate import estimate_hours


def test_every_training_method_is_estimated() -> None:
    methods = typing.get_args(TrainConfig.model_fields["method"].annotation)
    hours = {m: estimate_hours(10_000_000, 7.25, m, "RTX 4090") for m in methods}
    assert set(hours) == {"lora", "qlora", "dora", "qdora", "full"}
    # Full fine-tuning computes weight gradients too; 4-bit bases pay for dequantising.
    assert hours["lora"] == hours["dora"] < hours["qlora"] == hours["qdora"] < hours["full"]
    # 10M tokens of a 7.25B model with LoRA on a 4090 (165 TFLOP/s bf16 dense at 40% MFU): ~1.2 h.
    assert hours["lora"] == pytest.approx(4.0 * 7.25e9 * 1e7 / (165e12 * 0.4) / 3600, rel=1e-9)


def test_unknown_method_and_gpu_are_named() -> None:
    with pytest.raises(TwinError, match="unknown method 'lore'"):
        estimate_hours(1000, 7.0, "lore", "RTX 4090")
    with pytest.raises(TwinError, match="unknown GPU 'RTX 9999'"):
        estimate_hours(1000, 7.0, "lora", "RTX 9999")
