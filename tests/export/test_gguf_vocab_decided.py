"""The GGUF vocabulary read from the tokenizer files alone, where that is transformers' own reading.

twinlm.export.gguf_vocab_fast decides from tokenizer.json / tokenizer_config.json whether transformers
would load them as written; there, the conversion never imports transformers or torch. These tests hold
the rule to transformers: for every tokenizer fixture (SentencePiece-style and byte-level BPE, each
family's pre-tokenizer, alone and inside a model folder) both readings give the same GGUF vocabulary
and the rule decides; where transformers rebuilds or completes a tokenizer, the rule leaves it to
transformers and the file carries transformers' reading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from tiny_families import FAMILIES, TOKENIZER_FAMILIES, copy_family_model

from twinlm.export.gguf import convert_to_gguf
from twinlm.export.gguf_vocab import read_vocab
from twinlm.export.gguf_vocab_fast import FileTokenizer, VocabInBackground, transformers_may_differ

from conftest import FamilyModel
from tiny_tokenizers import build_tokenizer

ROOT = Path(__file__).resolve().parents[2]
PADDING = {
    "strategy": "BatchLongest",
    "direction": "Right",
    "pad_to_multiple_of": None,
    "pad_id": 0,
    "pad_type_id": 0,
    "pad_token": "<unk>",
}


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory: pytest.TempPathFactory):
    """`tokenizer_folder("llama3")`: tests/tiny_tokenizers.py's tokenizer of that family, saved by
    transformers (no model), shared by this module's tests."""
    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("tokenizers")

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tokenizer(family, root / family)
        return built[family]

    return get


@pytest.mark.parametrize("family", sorted(TOKENIZER_FAMILIES))
def test_each_tokenizer_is_decided_by_its_files(family: str, tokenizer_folder) -> None:
    folder = tokenizer_folder(family)
    files = FileTokenizer(folder)
    assert transformers_may_differ(files) is None
    assert read_vocab(folder, hf=files) == read_vocab(folder)  # transformers' reading


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_model_is_decided_by_its_files(family: str, family_model: FamilyModel) -> None:
    folder = family_model(family)
    files = FileTokenizer(folder)
    assert transformers_may_differ(files) is None
    vocabs = VocabInBackground(folder, None)
    assert vocabs.undecided is None and vocabs.exact() == read_vocab(folder)


def _edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def test_a_tokenizer_transformers_completes_is_left_to_transformers(
    family_model: FamilyModel, tmp_path: Path
) -> None:
    """<s> dropped from tokenizer.json's added tokens: transformers adds it back as a special token
    (CONTROL in the GGUF), the files alone (a tokenizer.json without tokenizer.model) would make it an
    ordinary piece. The rule sees it, and the GGUF carries transformers' reading."""
    folder = copy_family_model(family_model("mistral-json"), tmp_path / "model")
    _edit(
        folder / "tokenizer.json",
        lambda d: d.update(added_tokens=[t for t in d["added_tokens"] if t["content"] != "<s>"]),
    )
    _edit(folder / "tokenizer_config.json", lambda d: d.pop("added_tokens_decoder", None))
    exact = read_vocab(folder)
    reader = gguf.GGUFReader(convert_to_gguf(folder, tmp_path / "out.gguf"))
    types = reader.get_field(gguf.Keys.Tokenizer.TOKEN_TYPE)
    assert types is not None and types.contents()[: len(exact.types)] == exact.types
    files = FileTokenizer(folder)
    assert read_vocab(folder, hf=files).types != exact.types  # the rule matters here
    assert "'<s>'" in (transformers_may_differ(files) or "")


@pytest.mark.parametrize(
    "change",
    [
        lambda c, t: c.update(tokenizer_class="LlamaTokenizer"),  # a class that rebuilds the pipeline
        lambda c, t: c.update(split_special_tokens=True),
        lambda c, t: c.update(fix_mistral_regex=True),
        lambda c, t: c.update(chat_template=[{"name": "default", "template": "x"}]),
        lambda c, t: c.update(mask_token="<mask-not-added>"),
        lambda c, t: c.update(added_tokens_decoder={"1": {"content": "<s>", "special": False}}),
        lambda c, t: t.update(padding=PADDING),
    ],
    ids=["class", "split", "mistral-regex", "templates", "special", "added", "padding"],
)
def test_what_transformers_may_change_is_undecided(change, family_model: FamilyModel, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = copy_family_model(family_model("mistral"), tmp_path / "model")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert transformers_may_differ(FileTokenizer(folder)) is None
    change(config, tok)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    assert transformers_may_differ(FileTokenizer(folder)) is not None


def test_legacy_special_tokens_map_is_undecided(family_model: FamilyModel, tmp_path: Path) -> None:
    folder = copy_family_model(family_model("llama"), tmp_path / "model")
    _edit(folder / "tokenizer_config.json", lambda d: d.pop("added_tokens_decoder", None))
    assert transformers_may_differ(FileTokenizer(folder)) is None
    (folder / "special_tokens_map.json").write_text('{"eos_token": "<|end_of_text|>"}', encoding="utf-8")
    assert transformers_may_differ(FileTokenizer(folder)) is not None


def test_a_decided_conversion_imports_neither_transformers_nor_torch(
    family_model: FamilyModel, tmp_path: Path
) -> None:
    """In a fresh interpreter (as `twinlm gguf` runs), the conversion of a folder the files decide
    loads neither; its file is the one converted here, with both loaded."""
    folder = family_model("mistral")
    script = (
        "import sys\nfrom pathlib import Path\nfrom twinlm.export.gguf import convert_to_gguf\n"
        f"convert_to_gguf(Path({str(folder)!r}), Path({str(tmp_path / 'fresh.gguf')!r}), qtype='f16')\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'torch', 'transformers', 'mistral_common'}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"
    here = convert_to_gguf(folder, tmp_path / "here.gguf", qtype="f16")
    assert (tmp_path / "fresh.gguf").read_bytes() == here.read_bytes()
