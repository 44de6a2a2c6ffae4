"""`merge_run`: a run merged shard by shard into a 16-bit HF folder that behaves as the adapter did.

The base is the tiny Llama saved in bf16 in several shards. Adapters are made with peft directly
(random A and B, so every delta is non-zero), or trained by twinlm's loop (QLoRA on a 4-bit base).
"""

from __future__ import annotations

import gc
import itertools
import json
import shutil
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

import twinlm
from twinlm.config import BuildConfig, TrainConfig, TwinConfig
from twinlm.errors import TwinError
from twinlm.export import merge as merge_module
from twinlm.export.merge import merge_run
from twinlm.export.merge_io import ShardWriter
from twinlm.export.provenance import PROVENANCE, read_provenance
from twinlm.models.tiny import build_tiny_model
from twinlm.prepare.persona import persona_prompt

INPUT = torch.tensor([[5, 17, 300, 42, 7, 700, 500, 12, 99, 3]])
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama (tokenizer included) stored as a real base is: bf16, in several shards."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    build_tiny_model(folder, "llama")
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size="100KB")
    assert len(list(folder.glob("model-*.safetensors"))) >= 3
    return folder


def fp32_base(base: Path) -> torch.nn.Module:
    """The 16-bit base from disk, computed in fp32 (the reference every merge is compared with)."""
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()


def make_run(
    root: Path,
    base: Path,
    save: Callable[[Path], None],
    *,
    name: str = "run",
    method: str = "lora",
    info: dict | None = None,
) -> Path:
    """A run folder as twinlm.train writes one: the record, the tokenizer, final/ (from `save`)."""
    run = root / "runs" / name
    run.mkdir(parents=True)
    config = TwinConfig(
        me=["Alex Rivera"],
        build=BuildConfig(model=str(base), max_length=512),
        train=TrainConfig(method=method),
    )
    record = {
        "twinlm_run": 1,
        "config": config.model_dump(mode="json"),
        "model": str(base),
        "template_style": "named",
        "me": "Alex Rivera",
    }
    (run / "config.json").write_bytes(orjson.dumps(record))
    if info is not None:
        (run / "build.json").write_bytes(orjson.dumps(info))
    AutoTokenizer.from_pretrained(base).save_pretrained(run / "tokenizer")
    save(run / "final")
    return run


def adapter(base: Path, seed: int = 0, **options: object) -> PeftModel:
    """A peft LoRA on the fp32-computed base with random (non-zero) A and B."""
    torch.manual_seed(seed)
    values: dict = {"r": 4, "lora_alpha": 8, "target_modules": ALL_LINEAR, "init_lora_weights": False}
    model = get_peft_model(fp32_base(base), LoraConfig(**(values | options)))
    if options.get("use_dora"):
        with torch.no_grad():  # magnitudes other than the base's norms, as training leaves them
            for name, param in model.named_parameters():
                if "lora_magnitude_vector" in name:
                    param.mul_(1 + 0.2 * torch.rand_like(param))
    return model.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def shard_tensors(folder: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for file in folder.glob("*.safetensors"):
        found.update(load_file(file))
    return found


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"r": 8, "lora_alpha": 3, "use_rslora": True},
        {"rank_pattern": {"q_proj": 2}, "alpha_pattern": {"down_proj": 32}},
        {"use_dora": True},
        {"target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]},
        {"target_modules": ["q_proj", "embed_tokens"]},
    ],
    ids=["lora", "rslora-alpha-not-r", "rank-alpha-patterns", "dora", "modules-to-save", "embedding"],
)
def test_merged_model_computes_what_the_adapter_does(base: Path, tmp_path: Path, options: dict) -> None:
    peft_model = adapter(base, **options)
    if options.get("modules_to_save"):
        with torch.no_grad():  # the saved copy trained away from the base's
            peft_model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    run = make_run(tmp_path, base, peft_model.save_pretrained)
    out = merge_run(run, tmp_path / "merged", dtype="fp32")

    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) == len(list(base.glob("model-*.safetensors"))) >= 3
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    expected = logits(peft_model)
    assert not torch.allclose(expected, logits(fp32_base(base)), atol=1e-3)  # the adapter does change things
    torch.testing.assert_close(logits(merged), expected, atol=2e-5, rtol=1e-5)

    reference = peft_model.merge_and_unload().state_dict()
    tensors = shard_tensors(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert set(tensors) == set(reference)
    for name, tensor in tensors.items():
        torch.testing.assert_close(tensor, reference[name], atol=1e-6, rtol=1e-6, msg=name)


def test_default_dtype_is_the_bases_16_bit_and_equals_merge_and_unload_cast(
    base: Path, tmp_path: Path
) -> None:
    peft_model = adapter(base, seed=1)
    run = make_run(tmp_path, base, peft_model.save_pretrained)
    progress: list[tuple[int, int]] = []
    out = merge_run(run, tmp_path / "merged", progress=lambda done, total: progress.append((done, total)))

    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    reference = peft_model.merge_and_unload().state_dict()
    for name, tensor in shard_tensors(out).items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, reference[name].to(torch.bfloat16)), name
    assert progress[-1][0] == progress[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(progress))
    # the 16-bit folder loads and computes (close to the fp32 adapter: bf16 weights)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert torch.allclose(logits(merged), logits(peft_model), atol=0.1)


def test_fp16_on_request(base: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path, base, adapter(base).save_pretrained)
    out = merge_run(run, tmp_path / "merged", dtype="fp16")
    assert {t.dtype for t in shard_tensors(out).values()} == {torch.float16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    with pytest.raises(TwinError, match="--dtype int8"):
        merge_run(run, tmp_path / "other", dtype="int8")


def test_full_fine_tune_is_rewritten_in_16_bit(base: Path, tmp_path: Path) -> None:
    model = fp32_base(base)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(0.5)
    run = make_run(tmp_path, base, lambda p: model.save_pretrained(p), method="full")
    out = merge_run(run, tmp_path / "merged")
    tensors = shard_tensors(out)
    saved = model.state_dict()
    assert set(tensors) == set(saved)
    for name, tensor in tensors.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, saved[name].to(torch.bfloat16)), name
    provenance = json.loads((out / PROVENANCE).read_text())
    assert provenance["method"] == "full" and provenance["dtype"] == "bfloat16"


def test_a_checkpoint_is_merged_on_request(base: Path, tmp_path: Path) -> None:
    final, early = adapter(base, seed=1), adapter(base, seed=2)
    run = make_run(tmp_path, base, final.save_pretrained)
    step = run / "checkpoints" / "step-000020"
    early.save_pretrained(step)
    (step / "state.json").write_text(json.dumps({"format_version": 1, "weights": "peft", "train_state": {}}))

    out = merge_run(run, tmp_path / "merged", checkpoint="step-20", dtype="fp32")
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)),
        logits(early),
        atol=2e-5,
        rtol=1e-5,
    )
    assert json.loads((out / PROVENANCE).read_text())["step"] == 20

    with pytest.raises(TwinError) as missing:
        merge_run(run, tmp_path / "other", checkpoint="step-7")
    assert "no such checkpoint" in str(missing.value) and "step-20" in str(missing.value)
    with pytest.raises(TwinError, match="expected step-N"):
        merge_run(run, tmp_path / "other", checkpoint="latest")


def test_folder_holds_tokenizer_template_and_provenance(base: Path, tmp_path: Path) -> None:
    info = {
        "template_style": "named",
        "me": "Alex Rivera",
        "trained_by_speaker": {
            "Alex Rivera": {"turns": 9, "tokens": 90},
            "(documents)": {"turns": 2, "tokens": 50},
        },
        "trained_by_source": {
            "whatsapp": {"turns": 9, "tokens": 90},
            "documents": {"turns": 2, "tokens": 50},
        },
    }
    run = make_run(tmp_path, base, adapter(base).save_pretrained, name="first-try", info=info)
    out = merge_run(run, tmp_path / "export" / "first-try")

    assert (out / "chat_template.jinja").read_text() == (
        run / "tokenizer" / "chat_template.jinja"
    ).read_text()
    assert (
        AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(base).chat_template
    )
    assert (out / "generation_config.json").is_file() == (base / "generation_config.json").is_file()
    provenance = read_provenance(out)
    assert set(provenance) == {
        "twinlm_export", "run", "step", "base_model", "base_path", "method", "dtype", "created",
        "twinlm_version", "max_length", "template_style", "me", "personas", "persona_settings", "others",
    }  # fmt: skip
    assert provenance["run"] == "first-try" and provenance["step"] == "final"
    assert provenance["base_model"] == str(base) and provenance["base_path"] == str(base.resolve())
    assert (provenance["method"], provenance["dtype"], provenance["max_length"]) == ("lora", "bfloat16", 512)
    assert provenance["twinlm_version"] == twinlm.__version__ and provenance["template_style"] == "named"
    day = provenance["created"][:10]
    settings = BuildConfig(model=str(base))
    expected = persona_prompt(
        settings, "named", speaker="Alex Rivera", participants=["Alex Rivera"], platform="whatsapp",
        timestamp_ms=None,
    ).replace("unknown", day)  # fmt: skip
    assert provenance["personas"] == {"Alex Rivera": expected}
    assert expected == f"You are Alex Rivera, chatting with someone on WhatsApp. Today is {day}."
    assert provenance["persona_settings"]["system_prompt"] == settings.system_prompt
    assert provenance["persona_settings"]["platform"] == "whatsapp"


def test_group_and_assistant_personas(base: Path, tmp_path: Path) -> None:
    info = {
        "trained_by_speaker": {"Sam": {"turns": 3, "tokens": 30}, "Alex Rivera": {"turns": 9, "tokens": 90}},
        "trained_by_source": {"discord": {"turns": 12, "tokens": 120}},
    }
    run = make_run(tmp_path, base, adapter(base).save_pretrained, info=info)
    record = orjson.loads((run / "config.json").read_bytes())
    record["config"]["build"]["targets"] = "everyone"
    (run / "config.json").write_bytes(orjson.dumps(record))
    personas = json.loads((merge_run(run, tmp_path / "a") / PROVENANCE).read_text())["personas"]
    # A named-role template trains everyone in one rendering: the group prompt, as training saw it.
    assert set(personas) == {"Sam", "Alex Rivera"} and personas["Sam"].startswith(
        "A chat between Sam on Discord"
    )

    record["config"]["build"]["targets"] = "assistant"
    (run / "config.json").write_bytes(orjson.dumps(record))
    assert json.loads((merge_run(run, tmp_path / "b") / PROVENANCE).read_text())["personas"] == {
        "assistant": None
    }


def test_others_are_each_personas_partners_most_trained_first(base: Path, tmp_path: Path) -> None:
    """From the run's dataset (samples.jsonl): the people in each persona's trained chat samples, ranked
    by the persona's trained turns with them; eval samples, documents and untrained turns do not count;
    a dataset rebuilt since the run (its build.json differs) gives no names."""

    def sample(split: str, kind: str, *turns: tuple[str, bool]) -> dict:
        said = [{"speaker": who, "text": "hi", "trained": trained} for who, trained in turns]
        return {"id": "x", "conversation": "c", "source": "s", "kind": kind, "split": split, "turns": said}

    alex, sam, jo, kim = "Alex Rivera", "Sam", "Jo", "Kim"
    samples = [
        sample("train", "chat", (sam, False), (alex, True), (sam, False), (alex, True)),  # Sam: 2 of Alex's
        sample("train", "chat", (jo, False), (alex, True), (kim, False)),  # Jo, Kim: 1 each
        sample("train", "chat", (jo, True), (sam, False)),  # Jo trained (not a persona here)
        sample("train", "chat", (kim, False), (alex, False)),  # no trained turn of Alex
        sample("eval", "chat", (kim, False), (alex, True), (alex, True), (alex, True)),  # eval: not trained
        sample("train", "assistant", ("user", False), ("assistant", True)),
    ]
    info = {
        "trained_by_speaker": {alex: {"turns": 4, "tokens": 40}, "assistant": {"turns": 1, "tokens": 9}},
        "trained_by_source": {"whatsapp": {"turns": 4, "tokens": 40}},
    }
    run = make_run(tmp_path, base, adapter(base).save_pretrained, info=info)
    data = tmp_path / "data"
    data.mkdir()
    (data / "samples.jsonl").write_bytes(b"\n".join(orjson.dumps(x) for x in samples) + b"\n\n")
    shutil.copy(run / "build.json", data / "build.json")
    record = orjson.loads((run / "config.json").read_bytes())
    (run / "config.json").write_bytes(orjson.dumps(record | {"dataset": str(data)}))
    merged = read_provenance(merge_run(run, tmp_path / "a"))
    assert set(merged["personas"]) == {alex, "assistant"}
    assert merged["others"] == {alex: [sam, jo, kim]}

    (data / "build.json").write_bytes(b"{}")  # rebuilt since: not the samples the run trained on
    assert read_provenance(merge_run(run, tmp_path / "b"))["others"] == {alex: []}


def test_reading_a_missing_or_broken_provenance_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TwinError, match="missing; not a folder `twinlm merge` wrote"):
        read_provenance(tmp_path)
    (tmp_path / PROVENANCE).write_text("{not json")
    with pytest.raises(TwinError, match="unreadable"):
        read_provenance(tmp_path)


def test_bad_runs_get_one_line(base: Path, tmp_path: Path) -> None:
    def one_line(call: Callable[[], object], *words: str) -> None:
        with pytest.raises(TwinError) as err:
            call()
        assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)

    one_line(lambda: merge_run(tmp_path / "runs" / "nope", tmp_path / "out"), "no such run")
    run = make_run(tmp_path, base, adapter(base).save_pretrained)
    shutil.rmtree(run / "final")
    one_line(lambda: merge_run(run, tmp_path / "out"), "no final weights", "--checkpoint")

    # The base moved away: neither the folder training read nor the recorded name is there.
    moved = tmp_path / "moved"
    shutil.copytree(base, moved)
    run = make_run(tmp_path, moved, adapter(moved).save_pretrained, name="moved")
    shutil.rmtree(moved)
    one_line(lambda: merge_run(run, tmp_path / "out"), "base model", "missing", str(moved))

    # A hub id not downloaded: refused without going online (the test-wide guard fails any connection).
    record = orjson.loads((run / "config.json").read_bytes())
    record["model"] = "someone/not-downloaded-model"
    (run / "config.json").write_bytes(orjson.dumps(record))
    one_line(lambda: merge_run(run, tmp_path / "out"), "someone/not-downloaded-model", "not on this machine")
    assert not (tmp_path / "out").exists()

    # An adapter trained on another model: its weights name tensors the base lacks.
    other = make_run(tmp_path, base, adapter(base).save_pretrained, name="other")
    weights = load_file(other / "final" / "adapter_model.safetensors")
    weights = {k.replace("layers.1.", "layers.7."): v for k, v in weights.items()}
    from safetensors.torch import save_file

    save_file(weights, other / "final" / "adapter_model.safetensors")
    one_line(lambda: merge_run(other, tmp_path / "out"), "layers.7", "another base")

    # An output folder that is something else is not replaced.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    run = make_run(tmp_path, base, adapter(base).save_pretrained, name="x")
    one_line(lambda: merge_run(run, tmp_path / "mine"), "choose another --out")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_too_little_free_space_is_refused_before_merging(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line naming the folder, the space the merged shards need and the space free; no temporary
    folder is made. With enough space the same merge goes through."""
    from collections import namedtuple

    from twinlm.export import space

    run = make_run(tmp_path, base, adapter(base).save_pretrained)
    out = tmp_path / "export" / "run"
    needed = sum(t.numel() * 2 for t in shard_tensors(base).values())  # bf16, as merged
    usage = namedtuple("usage", "total used free")
    free = needed + space.MARGIN - 1
    monkeypatch.setattr(space.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - free, free))
    with pytest.raises(TwinError) as err:
        merge_run(run, out)
    assert str(err.value) == (
        f"{out.parent}: not enough free space for the merged model run/: it needs about "
        f"{space.human_size(needed + space.MARGIN)}, {space.human_size(free)} free there; free some space "
        "or write elsewhere"
    )
    assert not out.parent.exists()
    free += 1
    assert (merge_run(run, out) / PROVENANCE).is_file()


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_an_interrupted_merge_leaves_no_folder(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    run = make_run(tmp_path, base, adapter(base).save_pretrained)
    out = tmp_path / "export" / "run"
    merge_run(run, out)
    before = sorted(p.name for p in out.iterdir())

    real = ShardWriter.add

    def failing(self: ShardWriter, name: str, tensor: torch.Tensor) -> None:
        if "-00002-of-" in self.path.name:  # the second shard: the first is written already
            raise failure
        real(self, name, tensor)

    monkeypatch.setattr(ShardWriter, "add", failing)
    expected = KeyboardInterrupt if isinstance(failure, KeyboardInterrupt) else TwinError
    with pytest.raises(expected) as err:
        merge_run(run, out)
    if expected is TwinError:
        assert str(err.value) == f"{out}: cannot write the merged model (No space left on device)"
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]  # no temp folder left
    assert sorted(p.name for p in out.iterdir()) == before  # the earlier merge is intact

    shutil.rmtree(out)
    with pytest.raises(expected):
        merge_run(run, out)
    assert list(out.parent.iterdir()) == []  # nothing under the final name, no temp folder


def test_merge_holds_one_tensor_at_a_time(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each base shard is read tensor by tensor into its output shard, which is finished before the next
    is read; a tensor read is released before the next one is: never a shard, let alone the model."""
    run = make_run(tmp_path, base, adapter(base).save_pretrained)
    events: list[str] = []
    real_read = merge_module.read_tensors

    def reading(path: Path, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        events.append(f"read {path.name}")
        previous = None
        for name, tensor in real_read(path, names):
            gc.collect()
            assert previous is None or previous() is None, "the previous tensor is still held"
            previous = weakref.ref(tensor)
            yield name, tensor
            del tensor

    class Writer(ShardWriter):
        def close(self, *, complete: bool = True) -> None:
            events.append(f"wrote {self.path.name}")
            super().close(complete=complete)

    monkeypatch.setattr(merge_module, "read_tensors", reading)
    monkeypatch.setattr(merge_module, "ShardWriter", Writer)
    out = merge_run(run, tmp_path / "merged")
    shards = sorted(p.name for p in base.glob("model-*.safetensors"))
    assert events == [f"{verb} {name}" for name in shards for verb in ("read", "wrote")]
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards


def test_qlora_adapter_merges_into_the_16_bit_base(base: Path, tmp_path: Path) -> None:
    """A QLoRA adapter trained on the 4-bit NF4 base merges into the 16-bit base, not the 4-bit one."""
    from twinlm.models.load import LoraSettings, load_model

    torch.manual_seed(0)
    model, _, _ = load_model(
        str(base), "qlora", lora=LoraSettings(r=4, alpha=16, dropout=0.0), dtype=torch.float32, device="cpu"
    )
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(3, 700, (2, 12), generator=generator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):  # B starts at zero: a few steps make the adapter matter
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    run = make_run(tmp_path, base, model.save_pretrained, method="qlora")
    model.eval()
    on_4bit = logits(model)

    out = merge_run(run, tmp_path / "merged", dtype="fp32")
    merged = logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32))
    on_16bit = logits(PeftModel.from_pretrained(fp32_base(base), run / "final").eval())
    torch.testing.assert_close(merged, on_16bit, atol=2e-5, rtol=1e-5)
    # the check can tell the two bases apart: a merge into the 4-bit weights would land elsewhere
    assert (on_4bit - on_16bit).abs().max() > 1e-3
    with safe_open(str(next(out.glob("*.safetensors"))), "pt") as f:
        assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())  # noqa: SIM118  (no 4-bit leftovers)
    assert json.loads((out / PROVENANCE).read_text())["method"] == "qlora"


def test_a_qlora_run_trained_by_twinlm_merges(base: Path, tmp_path: Path) -> None:
    """End to end on a run `twinlm train` wrote (its record, tokenizer and adapter as they are)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
    from twinlm.train.loop import train

    from test_loop import make_workspace, settings

    tiny = tmp_path / "models" / "tiny-llama"
    tiny.mkdir(parents=True)
    for file in base.iterdir():  # the tokenizer, built once for the module (make_workspace makes the model)
        if "model" not in file.name and file.name not in ("config.json", "generation_config.json"):
            shutil.copy(file, tiny / file.name)
    config = make_workspace(tmp_path, "llama")
    result = train(config.model_copy(update={"train": settings("qlora", steps=4)}), tmp_path, "q")
    out = merge_run(result.run_dir, tmp_path / "export" / "q", dtype="fp32")

    on_16bit = PeftModel.from_pretrained(fp32_base(tiny), result.run_dir / "final").eval()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(merged), logits(on_16bit), atol=2e-5, rtol=1e-5)
    assert not torch.allclose(logits(merged), logits(fp32_base(tiny)), atol=1e-4)  # it did train
    provenance = json.loads((out / PROVENANCE).read_text())
    assert (provenance["run"], provenance["method"], provenance["max_length"]) == ("q", "qlora", 256)
    day = provenance["created"][:10]
    assert provenance["personas"] == {
        "Alex Rivera": f"You are Alex Rivera, chatting with someone on WhatsApp. Today is {day}."
    }
