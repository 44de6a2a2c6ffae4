"""The accelerate launch configs twinlm writes: accelerate's own launcher reads them as meant, and the
loop recognises the strategy from the environment that launcher gives each process."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from twinlm.config import TrainConfig, load_config
from twinlm.errors import ConfigError, TwinError
from twinlm.train import distributed
from twinlm.train.distributed import make_accelerator, write_launch_config

STRATEGIES = ["ddp", "fsdp", "zero2", "zero3"]


def _parsed(config_file: Path):  # type: ignore[no-untyped-def]
    """What `accelerate launch --config_file CONFIG train.py` makes of the file (its launch_command)."""
    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, defaults, mixed_precision_from_file = _validate_launch_command(args)
    if args.use_deepspeed:
        # The fields DeepSpeedPlugin checks against a DeepSpeed JSON (accelerate's launch_command).
        fields = list(defaults.deepspeed_config) + ["mixed_precision"] * mixed_precision_from_file
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    return args


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_accelerate_launches_the_written_config_as_the_strategy(
    tmp_path: Path, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = TrainConfig(distributed=strategy, grad_accum=3, max_grad_norm=0.5, precision="auto")
    config_file = write_launch_config(tmp_path, settings, 4)
    args = _parsed(config_file)
    assert args.num_processes == 4 and args.num_machines == 1
    assert args.use_fsdp == (strategy == "fsdp")
    assert args.use_deepspeed == strategy.startswith("zero")
    assert args.multi_gpu == (strategy == "ddp")
    if strategy == "fsdp":
        assert str(args.fsdp_version) == "2"
        assert args.fsdp_auto_wrap_policy == "TRANSFORMER_BASED_WRAP"
        assert args.fsdp_state_dict_type == "SHARDED_STATE_DICT"
    if strategy.startswith("zero"):
        ds = orjson.loads(Path(args.deepspeed_config_file).read_bytes())
        assert ds["zero_optimization"]["stage"] == int(strategy[-1])
        # The loop scales each micro-batch's loss by DeepSpeed's accumulation count and leaves
        # clipping to it: both must be twin.yaml's.
        assert ds["gradient_accumulation_steps"] == 3 and ds["gradient_clipping"] == 0.5
        assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
        gathers = ds["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save", False)
        assert gathers == (strategy == "zero3")

    # Each process's environment, as the launcher sets it, names the strategy to the loop.
    if strategy.startswith("zero"):
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        if key.startswith("ACCELERATE_") or key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)
    assert distributed._launched_strategy() == ("deepspeed" if strategy.startswith("zero") else strategy)
    if strategy.startswith("zero"):
        # accelerate's DeepSpeed settings from that environment (what Accelerator() builds; its checks
        # refuse an accelerate config that duplicates the JSON's fields).
        plugin = DeepSpeedPlugin()
        assert plugin.deepspeed_config["zero_optimization"]["stage"] == int(strategy[-1])
        assert plugin.deepspeed_config["gradient_accumulation_steps"] == 3


def test_multi_node_config(tmp_path: Path) -> None:
    config_file = write_launch_config(
        tmp_path,
        TrainConfig(distributed="fsdp", precision="bf16"),
        16,
        machines=2,
        machine_rank=1,
        main_address="10.1.2.3",
        main_port=29555,
    )
    args = _parsed(config_file)
    assert (args.num_processes, args.num_machines, args.machine_rank) == (16, 2, 1)
    assert (args.main_process_ip, args.main_process_port) == ("10.1.2.3", 29555)
    written = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    assert written["rdzv_backend"] == "static" and written["mixed_precision"] == "no"


@pytest.mark.parametrize(
    ("processes", "machines", "address", "message"),
    [
        (3, 2, "10.0.0.1", "same count to each machine"),
        (4, 2, None, "--main-address"),
        (0, 1, None, "same count"),
    ],
)
def test_impossible_layouts_are_refused(
    tmp_path: Path, processes: int, machines: int, address: str | None, message: str
) -> None:
    with pytest.raises(TwinError, match=message):
        write_launch_config(
            tmp_path,
            TrainConfig(),
            processes,
            machines=machines,
            main_address=address,
        )


def test_fp32_and_bf16_reach_deepspeed(tmp_path: Path) -> None:
    for precision, bf16 in (("fp32", False), ("bf16", True), ("auto", True)):
        write_launch_config(tmp_path, TrainConfig(distributed="zero2", precision=precision), 2)
        ds = orjson.loads((tmp_path / "deepspeed.json").read_bytes())
        assert (ds["bf16"]["enabled"], ds["fp16"]["enabled"]) == (bf16, False)


def test_fp16_is_refused_with_the_fix(tmp_path: Path) -> None:
    """fp16 weights without loss scaling reached NaN at step 2; the choice is gone, with a message."""
    (tmp_path / "twin.yaml").write_text("me: [Alex]\ntrain:\n  precision: fp16\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"twin.yaml:3: train.precision: fp16 is not supported.*use bf16"):
        load_config(tmp_path / "twin.yaml")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ACCELERATE_USE_FSDP": "true"}, "fsdp needs CUDA GPUs"),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "deepspeed needs CUDA GPUs"),
    ],
)
def test_sharding_without_a_gpu_is_refused_not_turned_into_ddp(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    # accelerate itself would run these CPU processes as plain DDP without a word.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(TwinError, match=message):
        make_accelerator(grad_accum=1)


def test_launch_config_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from twinlm.cli import app

    runner = CliRunner()
    ws = tmp_path / "twin"
    assert runner.invoke(app, ["init", str(ws), "--me", "Alex"]).exit_code == 0
    args = ["launch-config", "-w", str(ws), "--gpus", "4", "--machines", "2", "--main-address", "10.0.0.9"]
    result = runner.invoke(app, [*args, "--machine-rank", "1", "--distributed", "zero2"])
    assert result.exit_code == 0, result.output
    assert "accelerate launch --config_file" in result.output and "-m twinlm train" in result.output
    written = yaml.safe_load((ws / "launch" / "accelerate.yaml").read_text(encoding="utf-8"))
    assert (written["num_processes"], written["machine_rank"], written["distributed_type"]) == (
        8,
        1,
        "DEEPSPEED",
    )
    ds = orjson.loads((ws / "launch" / "deepspeed.json").read_bytes())
    assert ds["gradient_accumulation_steps"] == 4  # twin.yaml's default train.grad_accum

    for bad, message in (
        (["--machine-rank", "2"], "--machine-rank 2: must be from 0 to 1"),
        (["--distributed", "zero9"], "--distributed"),
    ):
        result = runner.invoke(app, [*args, *bad])
        assert result.exit_code != 0 and message in result.output, result.output
