"""validate's training-time estimate: every training method `twinlm train` accepts has a price."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from twinlm.cli import app
from twinlm.config import TrainConfig
from twinlm.errors import TwinError
from twinlm.models.tiny import build_tiny_model
from twinlm.prepare.validate import ModelSize, advice, estimate, estimate_hours, find_gpu, model_size

from testdata import EXAMPLES


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


# --- issue 8.10: validate prices the run twin.yaml describes, on any GPU, and checks memory --------


def test_gpus_are_found_by_any_usual_name() -> None:
    # Before: "4090" and "RTX 3060" were unknown GPUs.
    assert estimate_hours(10_000_000, 7.25, "lora", "4090") == estimate_hours(
        10_000_000, 7.25, "lora", "RTX 4090"
    )
    for name, (card, memory) in {
        "4090": ("RTX 4090", 24),
        "rtx 4090": ("RTX 4090", 24),
        "NVIDIA GeForce RTX 4090": ("RTX 4090", 24),
        "RTX 3060": ("RTX 3060", 12),
        "3060 12GB": ("RTX 3060", 12),
        "4060 Ti 16GB": ("RTX 4060 Ti", 16),
        "a100": ("A100", 40),  # the smaller card unless the name says which
        "A100-SXM4-80GB": ("A100", 80),
        "a10g": ("A10G", 24),
        "H100 PCIe": ("H100 PCIe", 80),
        "h100 sxm": ("H100", 80),
        "L40S": ("L40S", 48),
        "T4": ("T4", 16),
    }.items():
        gpu = find_gpu(name)
        assert (gpu.name, gpu.memory_gb) == (card, memory), name
    assert find_gpu("T4").bf16 is False  # trains in fp32: priced at the fp32 rate
    assert estimate_hours(10**7, 1.0, "lora", "T4") > 5 * estimate_hours(10**7, 1.0, "lora", "A10")


def test_any_other_gpu_by_memory_and_throughput() -> None:
    custom = find_gpu(None, memory_gb=20, tflops=100)
    assert (custom.memory_gb, custom.tflops) == (20, 100)
    assert find_gpu("4090", memory_gb=48).memory_gb == 48  # a modded card: the number wins
    with pytest.raises(TwinError) as e:
        find_gpu("Radeon 9999")
    message = str(e.value)
    assert "\n" not in message and "RTX 3060" in message and "H200" in message
    assert "--gpu-memory" in message and "--gpu-tflops" in message


def test_a_70b_full_fine_tune_does_not_fit_a_4090_and_a_small_qlora_does() -> None:
    gpu = find_gpu("RTX 4090")
    big = estimate(ModelSize(70 * 10**9, "test"), 10_000_000, gpu, TrainConfig(method="full"))
    assert not big.fits and big.memory_gb > 70 * 8 * 1e9 / 2**30  # weights, gradients, AdamW: 8 bytes
    assert "gradient_checkpointing" in advice(big, TrainConfig(method="full"))
    small = estimate(
        ModelSize(int(0.49e9), "test"), 10_000_000, gpu, TrainConfig(method="qlora", batch_tokens=2048)
    )
    assert small.fits and small.memory_gb < 8
    # A 7B LoRA without checkpointing needs ~30 GB at 4,096 tokens a micro-batch; with it, it fits.
    lora = TrainConfig(method="lora")
    assert not estimate(ModelSize(7_250_000_000, "test"), 1, gpu, lora).fits
    checkpointed = TrainConfig(method="lora", gradient_checkpointing=True)
    assert estimate(ModelSize(7_250_000_000, "test"), 1, gpu, checkpointed).fits
    # Each method's weights are priced as it stores them.
    parts = {
        m: estimate(ModelSize(7_250_000_000, "test"), 1, gpu, TrainConfig(method=m)).parts_gb
        for m in ("full", "lora", "qlora")
    }
    assert parts["qlora"]["weights (4-bit)"] < parts["lora"]["weights"] / 3 < parts["full"]["weights"]


def test_the_model_size_is_read_locally(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(folder)
    counted = model_size(str(folder), tmp_path)
    assert counted.params == sum(p.numel() for p in model.parameters())
    assert counted.shape["hidden_size"] == model.config.hidden_size
    (folder / "model.safetensors").unlink()  # config only: the shape gives the count
    assert model_size(str(folder), tmp_path).params == counted.params
    assert model_size("mistral-7b-instruct", tmp_path).params == 7_250_000_000  # a preset, never fetched
    assert model_size("mistral-7b-instruct", tmp_path, params_b=3.0).params == 3 * 10**9
    assert "--params-b" in model_size("someone/unknown-model", tmp_path).source


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("validate") / "twin"
    runner = CliRunner()
    assert runner.invoke(app, ["init", str(ws), "--me", "Alex Rivera", "--me", "Alex"]).exit_code == 0
    assert runner.invoke(app, ["ingest", "-w", str(ws), str(EXAMPLES)]).exit_code == 0
    result = runner.invoke(app, ["build", "-w", str(ws), "--model", "tiny"])
    assert result.exit_code == 0, result.stderr
    return ws


def test_validate_prices_the_configured_run_of_the_real_model(workspace: Path) -> None:
    # Before: "1 epoch(s) of lora ... 7.25B parameters" whatever twin.yaml and the model said.
    yaml = workspace / "twin.yaml"
    original = yaml.read_text()
    yaml.write_text(
        original.replace("  method: lora", "  method: full").replace("  epochs: 2.0", "  epochs: 5")
    )
    try:
        runner = CliRunner()
        result = runner.invoke(app, ["validate", "-w", str(workspace), "--json"])
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        tiny = AutoModelForCausalLM.from_pretrained(workspace / "models" / "tiny")
        assert (report["method"], report["epochs"]) == ("full", 5)
        assert report["params"] == sum(p.numel() for p in tiny.parameters())
        assert report["fits"] is True and report["gpu"] == "H100"
        text = runner.invoke(app, ["validate", "-w", str(workspace), "--gpu", "RTX 3060"]).stdout
        assert "5 epoch(s) of full" in text and "RTX 3060" in text and "fits" in text
        # Flags override twin.yaml.
        flagged = runner.invoke(
            app, ["validate", "-w", str(workspace), "--json", "--method", "qlora", "--epochs", "1"]
        )
        assert (json.loads(flagged.stdout)["method"], json.loads(flagged.stdout)["epochs"]) == ("qlora", 1)
    finally:
        yaml.write_text(original)


def test_validate_says_when_the_run_will_not_fit(workspace: Path) -> None:
    runner = CliRunner()
    args = ["validate", "-w", str(workspace), "--gpu", "4090", "--params-b", "70", "--method", "full"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "Will not fit" in result.stdout and "RTX 4090 (24 GB)" in result.stdout
    report = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert report["fits"] is False and report["memory_gb"] > 500
    custom = runner.invoke(
        app, ["validate", "-w", str(workspace), "--gpu-memory", "16", "--gpu-tflops", "50"]
    )
    assert custom.exit_code == 0 and "custom GPU" in custom.stdout
    unknown = runner.invoke(app, ["validate", "-w", str(workspace), "--gpu", "Voodoo 5"])
    assert unknown.exit_code == 1 and "unknown GPU 'Voodoo 5'" in unknown.stderr


def test_validate_reports_the_eval_share_and_warns_when_far_from_the_setting(workspace: Path) -> None:
    runner = CliRunner()
    report = json.loads(runner.invoke(app, ["validate", "-w", str(workspace), "--json"]).stdout)
    trained = report["trained_tokens"]
    assert report["eval_share_of_trained_tokens"] == round(trained["eval"] / sum(trained.values()), 4)
    build_json = workspace / "data" / "build.json"
    info = json.loads(build_json.read_text())
    original = build_json.read_text()
    info["config"]["build"]["eval_fraction"] = 0.5  # as if the split had missed the setting by far
    build_json.write_text(json.dumps(info))
    try:
        result = runner.invoke(app, ["validate", "-w", str(workspace)])
        assert "of the trained tokens, build.eval_fraction is 50.0%" in result.stdout
    finally:
        build_json.write_text(original)
