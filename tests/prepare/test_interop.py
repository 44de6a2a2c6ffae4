"""`twinlm export-data`: exact records per format, tool loading, Mistral limits, determinism, atomicity."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import datasets
import jinja2
import orjson
import pytest
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from twinlm.errors import TwinError
from twinlm.prepare import interop
from twinlm.prepare.interop import (
    FORMATS,
    MANIFEST,
    ExportReport,
    MistralLimits,
    export_samples,
    mistral_problem,
    to_messages,
)
from twinlm.prepare.sample import Sample, Turn

# A Discord group chat trained on Alice, with a persona prompt; Carol's last word comes after the last
# trained turn.
GROUP = Sample(
    id="s-group",
    conversation="discord:c1",
    source="discord",
    kind="chat",
    system="You are Alice.",
    turns=(
        Turn("Bob", "hey all", False),
        Turn("Carol", "yo", False),
        Turn("Alice", "hi!", True),
        Turn("Bob", "what's up\nanyone?", False),
        Turn("Alice", "not much", True),
        Turn("Carol", "bye", False),
    ),
)
# A ChatGPT conversation (eval split): the first reply is not trained.
ASSISTANT = Sample(
    id="s-gpt",
    conversation="chatgpt:c2",
    source="chatgpt",
    kind="assistant",
    split="eval",
    turns=(
        Turn("Sam", "How do I boil an egg?", False),  # the ChatGPT user resolves to `me`'s name
        Turn("assistant", "Use a pan.", False),
        Turn("Sam", "More detail?", False),
        Turn("assistant", "Boil water, 9 minutes.", True),
    ),
)
# Two speakers trained in one session (persona: a list of names); Alice speaks first untrained.
DUO = Sample(
    id="s-duo",
    conversation="telegram:c3",
    source="telegram",
    kind="chat",
    turns=(
        Turn("Bob", "who's coming?", False),
        Turn("Alice", "me", False),
        Turn("Carol", "me too", True),
        Turn("Alice", "great", True),
    ),
)
DOC = Sample(
    id="s-doc",
    conversation="documents:d1",
    source="documents",
    kind="document",
    turns=(Turn("", "Chunk one.", True),),
)
SILENT = Sample(
    id="s-silent",
    conversation="discord:c4",
    source="discord",
    kind="chat",
    turns=(Turn("Alice", "anyone?", True), Turn("Bob", "no", False)),
)
SAMPLES = [GROUP, ASSISTANT, DUO, DOC, SILENT]


def lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def chat_tokenizer(template: str) -> PreTrainedTokenizerFast:
    """A tiny word-level tokenizer with ChatML specials: enough for apply_chat_template, built offline."""
    vocab = {"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2, "user": 3, "assistant": 4, "system": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", chat_template=template)


TURN = "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
CHATML = "{% for m in messages %}" + TURN + "{% endfor %}"
# Mistral-instruct style: optional system first, then strictly user/assistant/user/...
STRICT = (
    "{% set offset = 1 if messages[0]['role'] == 'system' else 0 %}"
    "{% for m in messages %}"
    "{% if loop.index0 >= offset and (m['role'] == 'user') != ((loop.index0 - offset) % 2 == 0) %}"
    "{{ raise_exception('roles must alternate') }}{% endif %}" + TURN + "{% endfor %}"
)


# --- message mapping -------------------------------------------------------------------------------


def test_group_chat_maps_to_alternating_user_assistant() -> None:
    report = ExportReport("openai", Path("x"))
    msgs = to_messages(GROUP, weights=True, report=report)
    assert msgs is not None
    assert [(m.role, m.content, m.trained) for m in msgs] == [
        ("system", "You are Alice.", False),
        ("user", "Bob: hey all\nCarol: yo", False),
        ("assistant", "hi!", True),
        ("user", "Bob: what's up\nanyone?", False),
        ("assistant", "not much", True),
    ]
    assert report.notes == {"messages after the last trained one left out": 1}


def test_several_trained_speakers_are_named_in_assistant_messages() -> None:
    report = ExportReport("openai", Path("x"))
    weighted = to_messages(DUO, weights=True, report=report)
    assert weighted is not None
    assert [(m.role, m.content, m.trained) for m in weighted] == [
        ("user", "Bob: who's coming?", False),
        ("assistant", "Alice: me", False),
        ("assistant", "Carol: me too\nAlice: great", True),
    ]
    # Without per-message weights Alice's untrained turn is context, not a reply.
    plain = to_messages(DUO, weights=False, report=report)
    assert plain is not None
    assert [(m.role, m.content) for m in plain] == [
        ("user", "Bob: who's coming?\nAlice: me"),
        ("assistant", "Carol: me too\nAlice: great"),
    ]


def test_first_turn_is_context_and_empty_turns_are_dropped() -> None:
    report = ExportReport("openai", Path("x"))
    sample = Sample(
        "s",
        "c",
        "discord",
        "chat",
        (Turn("Alice", "first", True), Turn("Bob", "  ", False), Turn("Alice", "ok", True)),
    )
    msgs = to_messages(sample, weights=True, report=report)
    assert msgs is not None
    assert [(m.role, m.content, m.trained) for m in msgs] == [
        ("user", "Alice: first", False),
        ("assistant", "ok", True),
    ]
    assert report.notes == {"empty turns left out": 1, "first turn exported as context, not trained": 1}
    assert to_messages(SILENT, weights=True, report=report) is None


# --- exact output per format -----------------------------------------------------------------------


def test_openai_exact_lines(tmp_path: Path) -> None:
    report = export_samples(SAMPLES, "openai", tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "train.jsonl").read_bytes().splitlines() == [
        b'{"messages":[{"content":"You are Alice.","role":"system"},'
        b'{"content":"Bob: hey all\\nCarol: yo","role":"user"},'
        b'{"content":"hi!","role":"assistant","weight":1},'
        b'{"content":"Bob: what\'s up\\nanyone?","role":"user"},'
        b'{"content":"not much","role":"assistant","weight":1}]}',
        b'{"messages":[{"content":"Bob: who\'s coming?","role":"user"},'
        b'{"content":"Alice: me","role":"assistant","weight":0},'
        b'{"content":"Carol: me too\\nAlice: great","role":"assistant","weight":1}]}',
    ]
    assert lines(out / "eval.jsonl") == [
        {
            "messages": [
                {"content": "How do I boil an egg?", "role": "user"},
                {"content": "Use a pan.", "role": "assistant", "weight": 0},
                {"content": "More detail?", "role": "user"},
                {"content": "Boil water, 9 minutes.", "role": "assistant", "weight": 1},
            ]
        }
    ]
    assert report.files == {"train.jsonl": 2, "eval.jsonl": 1}
    assert report.samples == {"train": 2, "eval": 1}
    assert report.skipped == {
        "document (openai has no completion text)": 1,
        "no trained turn after the first": 1,
    }
    assert report.skipped_ids["no trained turn after the first"] == ["s-silent"]
    manifest = orjson.loads((out / MANIFEST).read_bytes())
    assert manifest["files"] == {"eval.jsonl": 1, "train.jsonl": 2}
    assert manifest["skipped_ids"]["document (openai has no completion text)"] == ["s-doc"]
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "train.jsonl", MANIFEST]


def test_sharegpt_uses_documented_field_names(tmp_path: Path) -> None:
    export_samples(SAMPLES, "sharegpt", tmp_path / "out")
    train = lines(tmp_path / "out" / "train.jsonl")
    assert train[0] == {
        "id": "s-group",
        "conversations": [
            {"from": "system", "value": "You are Alice."},
            {"from": "human", "value": "Bob: hey all\nCarol: yo"},
            {"from": "gpt", "value": "hi!"},
            {"from": "human", "value": "Bob: what's up\nanyone?"},
            {"from": "gpt", "value": "not much"},
        ],
    }
    everything = train + lines(tmp_path / "out" / "eval.jsonl")
    for record in everything:
        assert set(record) == {"id", "conversations"}
        for turn in record["conversations"]:
            assert set(turn) == {"from", "value"}
            assert turn["from"] in {"system", "human", "gpt"}
    # No weights in ShareGPT: the untrained reply travels as context, labelled with who said it.
    assert lines(tmp_path / "out" / "eval.jsonl")[0]["conversations"] == [
        {"from": "human", "value": "How do I boil an egg?\nassistant: Use a pan.\nMore detail?"},
        {"from": "gpt", "value": "Boil water, 9 minutes."},
    ]


def test_alpaca_one_record_per_trained_reply(tmp_path: Path) -> None:
    report = export_samples(SAMPLES, "alpaca", tmp_path / "out")
    assert lines(tmp_path / "out" / "train.jsonl") == [
        {"instruction": "Bob: hey all\nCarol: yo", "input": "", "output": "hi!"},
        {
            "instruction": "Bob: what's up\nanyone?",
            "input": "Bob: hey all\nCarol: yo\nAlice: hi!",
            "output": "not much",
        },
        {
            "instruction": "Bob: who's coming?\nAlice: me",
            "input": "",
            "output": "Carol: me too\nAlice: great",
        },
    ]
    assert report.files == {"train.jsonl": 3, "eval.jsonl": 1}
    assert report.samples == {"train": 2, "eval": 1}
    assert report.notes["system prompt left out (alpaca has no system field)"] == 1
    assert report.skipped["document (alpaca has no completion text)"] == 1


def test_axolotl_chat_template_and_completion_with_config(tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_samples(SAMPLES, "axolotl", out)
    train = lines(out / "train.jsonl")
    assert train[1] == {
        "messages": [
            {"role": "user", "content": "Bob: who's coming?", "training": False},
            {"role": "assistant", "content": "Alice: me", "training": False},
            {"role": "assistant", "content": "Carol: me too\nAlice: great", "training": True},
        ]
    }
    for record in train + lines(out / "eval.jsonl"):
        assert set(record) == {"messages"}
        assert all(set(m) == {"role", "content", "training"} for m in record["messages"])
    assert lines(out / "train_text.jsonl") == [{"text": "Chunk one."}]
    assert not (out / "eval_text.jsonl").exists()
    config = yaml.safe_load((out / "axolotl.yaml").read_text())
    chat, text = config["datasets"]
    assert chat["path"] == str((out / "train.jsonl").resolve())
    assert chat["type"] == "chat_template"
    assert chat["field_messages"] == "messages"
    assert chat["message_property_mappings"] == {"role": "role", "content": "content"}
    assert chat["message_field_training"] == "training"
    assert chat["roles_to_train"] == ["assistant"]
    assert chat["train_on_eos"] == "turn"
    assert text == {
        "path": str((out / "train_text.jsonl").resolve()),
        "ds_type": "json",
        "split": "train",
        "type": "completion",
        "field": "text",
    }
    assert [d["path"] for d in config["test_datasets"]] == [str((out / "eval.jsonl").resolve())]
    for entry in config["datasets"] + config["test_datasets"]:
        assert Path(entry["path"]).is_file()


def test_hf_dataset_dict_loads_and_renders(tmp_path: Path) -> None:
    report = export_samples(SAMPLES, "hf", tmp_path / "out")
    data = datasets.load_from_disk(str(tmp_path / "out"))
    assert set(data) == {"train", "validation"}
    assert data["train"]["id"] == ["s-group", "s-duo"]
    assert data["validation"]["conversation"] == ["chatgpt:c2"]
    assert data["train"][1]["messages"] == [
        {"role": "user", "content": "Bob: who's coming?\nAlice: me"},
        {"role": "assistant", "content": "Carol: me too\nAlice: great"},
    ]
    assert report.files == {"train": 2, "validation": 1}
    tok = chat_tokenizer(STRICT)
    for split in data.values():
        for messages in split["messages"]:
            assert tok.apply_chat_template(messages, tokenize=False).endswith("<|im_end|>\n")


def test_hf_empty_split_still_loads(tmp_path: Path) -> None:
    export_samples([GROUP], "hf", tmp_path / "out")
    data = datasets.load_from_disk(str(tmp_path / "out"))
    assert data["validation"].num_rows == 0
    assert data["validation"].column_names == ["id", "conversation", "messages"]


@pytest.mark.parametrize(("fmt", "template"), [("openai", CHATML), ("mistral", STRICT)])
def test_openai_and_mistral_load_with_datasets_and_render(fmt: str, template: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_samples(SAMPLES, fmt, out)
    files = {"train": str(out / "train.jsonl"), "eval": str(out / "eval.jsonl")}
    data = datasets.load_dataset("json", data_files=files, cache_dir=str(tmp_path / "cache"))
    tok = chat_tokenizer(template)
    rendered = [
        tok.apply_chat_template(m, tokenize=False) for s in ("train", "eval") for m in data[s]["messages"]
    ]
    assert rendered[0] == (
        "<|im_start|>system\nYou are Alice.<|im_end|>\n<|im_start|>user\nBob: hey all\nCarol: yo<|im_end|>\n"
        "<|im_start|>assistant\nhi!<|im_end|>\n<|im_start|>user\nBob: what's up\nanyone?<|im_end|>\n"
        "<|im_start|>assistant\nnot much<|im_end|>\n"
    )
    assert len(rendered) == (3 if fmt == "openai" else 2)  # mistral skips the non-alternating DUO
    if fmt == "openai":
        with pytest.raises(jinja2.TemplateError, match="roles must alternate"):
            chat_tokenizer(STRICT).apply_chat_template(data["train"]["messages"][1], tokenize=False)
    ids = tok.apply_chat_template(data["train"]["messages"][0], tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(1) == ids.count(2) == 5  # one <|im_start|> and one <|im_end|> per message


# --- Mistral limits --------------------------------------------------------------------------------


def test_mistral_skips_and_reports_rule_breakers(tmp_path: Path) -> None:
    report = export_samples(SAMPLES, "mistral", tmp_path / "out")
    assert report.skipped["mistral: roles do not alternate user/assistant"] == 1
    assert report.skipped_ids["mistral: roles do not alternate user/assistant"] == ["s-duo"]
    assert [r["messages"][0]["content"] for r in lines(tmp_path / "out" / "train.jsonl")] == [
        "You are Alice."
    ]


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "no messages"),
        ([{"role": "tool", "content": "x"}], "role 'tool' not allowed (system, user, assistant)"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}], "empty content"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 2}],
            "weight is not 0 or 1",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "b"},
            ],
            "system message not first, or more than one",
        ),
        (
            [{"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}],
            "first message after the system prompt is not from the user",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ],
            "roles do not alternate user/assistant",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ],
            "last message is not from the assistant",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}],
            "no assistant message with weight 1",
        ),
        (
            [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b", "weight": 0},
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"},
            ],
            None,
        ),
    ],
)
def test_mistral_problem_rules(messages: list[dict], problem: str | None) -> None:
    assert mistral_problem(messages) == problem


def _many(n: int, split: str) -> list[Sample]:
    return [
        Sample(
            f"{split}{i}",
            f"c:{split}{i}",
            "discord",
            "chat",
            (Turn("Bob", f"q{i}", False), Turn("Me", "a", True)),
            split=split,
        )  # type: ignore[arg-type]
        for i in range(n)
    ]


def test_mistral_splits_the_training_file_and_caps_the_validation_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = len(
        interop._dumps(
            {
                "messages": interop._openai_messages(
                    to_messages(_many(1, "train")[0], weights=True, report=ExportReport("m", tmp_path))
                )
            }
        )
    )  # type: ignore[arg-type]
    monkeypatch.setattr(
        interop, "MISTRAL_LIMITS", MistralLimits(max_train_file_bytes=2 * line, max_eval_file_bytes=line)
    )
    out = tmp_path / "out"
    report = export_samples(_many(5, "train") + _many(2, "eval"), "mistral", out)
    assert report.files == {"train-001.jsonl": 2, "train-002.jsonl": 2, "train-003.jsonl": 1, "eval.jsonl": 1}
    for name in ("train-001.jsonl", "train-002.jsonl", "train-003.jsonl", "eval.jsonl"):
        assert (out / name).stat().st_size <= 2 * line
    contents = [r["messages"][0]["content"] for n in (1, 2, 3) for r in lines(out / f"train-00{n}.jsonl")]
    assert contents == [f"Bob: q{i}" for i in range(5)]  # input order kept across parts
    reason = f"mistral: validation file full ({line} bytes)"
    assert report.skipped == {reason: 1}
    assert report.skipped_ids[reason] == ["eval1"]
    assert not (out / "train.jsonl").exists()


# --- determinism, atomicity, errors ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_exports_are_byte_identical(fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_samples(SAMPLES, fmt, out)
    first = tree(out)
    export_samples(iter(SAMPLES), fmt, out)  # replaces the first export
    assert tree(out) == first
    assert len(first) >= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left


def _failing(after: int) -> Iterator[Sample]:
    yield from SAMPLES[:after]
    raise RuntimeError("disk on fire")


def test_failed_export_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_samples(_failing(2), "openai", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    export_samples(SAMPLES, "openai", out)
    before = tree(out)

    def broken(samples: object, folder: Path, report: ExportReport) -> None:
        (folder / "train.jsonl").write_bytes(b'{"messages": [')  # half a line, then the writer dies
        raise OSError("no space left on device")

    monkeypatch.setitem(FORMATS, "openai", broken)
    with pytest.raises(OSError, match="no space"):
        export_samples(SAMPLES, "openai", out)
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_nothing_to_export_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        TwinError, match=r"nothing to export as sharegpt \(1 document \(sharegpt has no completion text\)"
    ):
        export_samples([DOC], "sharegpt", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    export_samples(SAMPLES, "sharegpt", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eval.jsonl", "train.jsonl", MANIFEST]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "model.gguf").write_bytes(b"keep me")
    with pytest.raises(TwinError, match="not written by export-data"):
        export_samples(SAMPLES, "openai", tmp_path / "mine")
    assert (tmp_path / "mine" / "model.gguf").read_bytes() == b"keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(TwinError, match="is a file"):
        export_samples(SAMPLES, "openai", tmp_path / "file")


def test_unknown_format_and_style(tmp_path: Path) -> None:
    with pytest.raises(
        TwinError, match="unknown format 'csv'; use one of: alpaca, axolotl, hf, mistral, openai, sharegpt"
    ):
        export_samples(SAMPLES, "csv", tmp_path / "out")
    with pytest.raises(TwinError, match="style 'named' is not available for openai"):
        export_samples(SAMPLES, "openai", tmp_path / "out", style="named")
