"""GGUF conversion (twinlm.export.gguf): metadata, tensor data, errors, parity with the HF model in llama.cpp.

Each preset family has a tiny random model (tests/export/tiny_families.py) whose tokenizer carries the
real family's pre-tokenizer and special tokens. The GGUF read back has the metadata llama.cpp needs;
llama.cpp (llama-cpp-python) tokenizes like the HF tokenizer and predicts the same next tokens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.torch import load_file
from tiny_families import SLIDING_WINDOW
from tools_required import require

from twinlm.errors import TwinError
from twinlm.export.gguf import SUPPORTED_ARCHITECTURES, convert_to_gguf, quantize_gguf
from twinlm.export.gguf_vocab import hard_strings, tokenization_mismatches

from conftest import FamilyGguf, FamilyModel

FAMILIES = ("mistral", "llama", "qwen2", "gemma2")
T = gguf.TokenType
# Expected per family: llama.cpp architecture, tokenizer model and pre-tokenizer, end-of-turn token.
EXPECTED = {
    "mistral": ("llama", "llama", "default", "</s>"),
    "llama": ("llama", "gpt2", "llama-bpe", "<|eot_id|>"),
    "qwen2": ("qwen2", "gpt2", "qwen2", "<|im_end|>"),
    "gemma2": ("gemma2", "llama", "default", "<end_of_turn>"),
}
CONVERSATIONS = [
    [
        {"role": "user", "content": "hey, what's up? 😂"},
        {"role": "assistant", "content": "not much, you?  pizza tonight?"},
        {"role": "user", "content": "Ja, gerne!\n\nUm 8 bei mir — ok?"},
        {"role": "assistant", "content": "yes!! see you at 8 👍"},
    ],
    [
        {"role": "user", "content": "def f(x):\n    return x  # code\n\n<|im_end|> [INST] typed as text"},
        {"role": "assistant", "content": "  naïve café, привет, 你好 ...   lol"},
    ],
]


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    assert field is not None, f"{key} missing"
    return field.contents()


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


# --- metadata and tensors (no llama.cpp needed) --------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_metadata(family: str, family_model: FamilyModel, family_gguf: FamilyGguf) -> None:
    model_dir = family_model(family)
    config = json.loads((model_dir / "config.json").read_text())
    tok = _tokenizer(model_dir)
    reader = gguf.GGUFReader(family_gguf(family, "f16"))
    arch, tok_model, pre, eot = EXPECTED[family]
    assert _field(reader, "general.architecture") == arch
    assert _field(reader, f"{arch}.block_count") == 2
    assert _field(reader, f"{arch}.embedding_length") == 256
    assert _field(reader, f"{arch}.feed_forward_length") == 512
    assert _field(reader, f"{arch}.attention.head_count") == 4
    assert _field(reader, f"{arch}.attention.head_count_kv") == 2
    assert _field(reader, f"{arch}.context_length") == config["max_position_embeddings"]
    assert _field(reader, f"{arch}.rope.freq_base") == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert _field(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16

    assert _field(reader, "tokenizer.ggml.model") == tok_model
    assert _field(reader, "tokenizer.ggml.pre") == pre
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == config["vocab_size"]
    for special in tok.all_special_tokens:
        want = T.UNKNOWN if special == tok.unk_token else T.CONTROL
        assert types[tok.convert_tokens_to_ids(special)] == want, special
    if tok.bos_token_id is not None:
        assert _field(reader, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _field(reader, "tokenizer.ggml.eot_token_id") == tok.convert_tokens_to_ids(eot)
    if tok.pad_token_id is not None:
        assert _field(reader, "tokenizer.ggml.padding_token_id") == tok.pad_token_id
    adds_bos = tok("a")["input_ids"][0] == tok.bos_token_id
    assert _field(reader, "tokenizer.ggml.add_bos_token") is adds_bos
    assert _field(reader, "tokenizer.chat_template") == (model_dir / "chat_template.jinja").read_text()
    if tok_model == "llama":
        assert tokens[tok.convert_tokens_to_ids("<0x41>")] == "<0x41>"
        assert types[tok.convert_tokens_to_ids("<0x41>")] == T.BYTE
        assert len(_field(reader, "tokenizer.ggml.scores")) == len(tokens)
        assert _field(reader, "tokenizer.ggml.add_space_prefix") is (family == "mistral")
    else:
        assert len(_field(reader, "tokenizer.ggml.merges")) > 1000

    names = {t.name: t for t in reader.tensors}
    assert names["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert names["blk.1.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert ("output.weight" in names) is (not config["tie_word_embeddings"])
    if family == "qwen2":
        assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= set(names)
    if family == "llama":
        assert "rope_freqs.weight" in names  # Llama 3.1's RoPE scaling
    if family == "gemma2":
        assert _field(reader, "gemma2.attn_logit_softcapping") == pytest.approx(50.0)
        assert _field(reader, "gemma2.final_logit_softcapping") == pytest.approx(30.0)
        assert _field(reader, "gemma2.attention.sliding_window") == SLIDING_WINDOW


def _weights(model_dir: Path) -> dict[str, np.ndarray]:
    """The model's safetensors weights in float32 (bfloat16 widens exactly)."""
    return {k: v.float().numpy() for k, v in load_file(model_dir / "model.safetensors").items()}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("family", FAMILIES)
def test_f32_tensors_are_the_weights(family: str, family_model: FamilyModel, family_gguf: FamilyGguf) -> None:
    """Every tensor of the f32 GGUF is its safetensors weight exactly (after llama.cpp's layout changes)."""
    model_dir = family_model(family)
    config = json.loads((model_dir / "config.json").read_text())
    arch = SUPPORTED_ARCHITECTURES[config["architectures"][0]]
    names = gguf.get_tensor_name_map(arch, 2)
    source = _weights(model_dir)
    reader = gguf.GGUFReader(family_gguf(family, "f32"))
    seen = set()
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            continue
        hf_name = next(
            k for k in source if names.get_name(k, try_suffixes=(".weight", ".bias")) == tensor.name
        )
        seen.add(hf_name)
        data = np.asarray(tensor.data).reshape(source[hf_name].shape)
        if arch == gguf.MODEL_ARCH.LLAMA and "q_proj" in hf_name:
            data = _unpermute(data, 4)
        elif arch == gguf.MODEL_ARCH.LLAMA and "k_proj" in hf_name:
            data = _unpermute(data, 2)
        want = source[hf_name]
        if arch == gguf.MODEL_ARCH.GEMMA2 and hf_name.endswith("norm.weight"):
            want = want + np.float32(1.0)  # Gemma's (1 + w) scale, as llama.cpp stores it
        np.testing.assert_array_equal(data, want, err_msg=hf_name)
    assert seen == set(source) - {"lm_head.weight"} if config["tie_word_embeddings"] else set(source)


def test_q8_0_is_gguf_quants_of_the_weights(family_model: FamilyModel, family_gguf: FamilyGguf) -> None:
    source = _weights(family_model("qwen2"))
    reader = gguf.GGUFReader(family_gguf("qwen2", "q8_0"))
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0
    want = gguf.quants.quantize(source["model.layers.0.mlp.up_proj.weight"], tensor.tensor_type)
    assert np.asarray(tensor.data).tobytes() == want.tobytes()
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0


def test_progress_reports_bytes_to_the_total(family_model: FamilyModel, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    out = convert_to_gguf(
        family_model("qwen2"), tmp_path / "m.gguf", progress=lambda d, t: calls.append((d, t))
    )
    assert calls[-1][0] == calls[-1][1] > 0
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert out.stat().st_size > calls[-1][1]


# --- errors ------------------------------------------------------------------------------------


def _copy(family_model: FamilyModel, family: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(family_model(family), tmp_path / family))


def test_unsupported_architecture_is_one_line_naming_llama_cpp(
    family_model: FamilyModel, tmp_path: Path
) -> None:
    model_dir = _copy(family_model, "qwen2", tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["Phi3ForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(TwinError) as err:
        convert_to_gguf(model_dir, tmp_path / "out.gguf")
    message = str(err.value)
    assert "\n" not in message
    assert "Phi3ForCausalLM" in message and "convert_hf_to_gguf.py" in message
    assert not (tmp_path / "out.gguf").exists()


def test_unknown_bytelevel_pre_tokenizer_is_refused(family_model: FamilyModel, tmp_path: Path) -> None:
    # (Llama: transformers runs its tokenizer.json as written; Qwen2's class rebuilds the split itself.)
    model_dir = _copy(family_model, "llama", tmp_path)
    path = model_dir / "tokenizer.json"
    data = json.loads(path.read_text())
    split = data["pre_tokenizer"]["pretokenizers"][0]
    split["pattern"]["Regex"] = split["pattern"]["Regex"].replace(r"\p{N}{1,3}", r"\p{N}{1,2}")
    path.write_text(json.dumps(data))
    with pytest.raises(TwinError, match=r"pre-tokenizer split.*convert_hf_to_gguf\.py"):
        convert_to_gguf(model_dir, tmp_path / "out.gguf")


@pytest.mark.parametrize("qtype", ["q4_0", "q4_k_m"])
def test_unknown_or_k_quant_type_for_convert(qtype: str, family_model: FamilyModel, tmp_path: Path) -> None:
    with pytest.raises(TwinError, match=qtype):
        convert_to_gguf(family_model("qwen2"), tmp_path / "out.gguf", qtype=qtype)


def test_interrupted_conversion_leaves_no_file(family_model: FamilyModel, tmp_path: Path) -> None:
    out = tmp_path / "gguf" / "model.gguf"

    def interrupt(done: int, total: int) -> None:
        if done > total // 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_to_gguf(family_model("qwen2"), out, progress=interrupt)
    assert list(out.parent.iterdir()) == []
    # A finished file is replaced only by a finished one.
    convert_to_gguf(family_model("qwen2"), out)
    before = out.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        convert_to_gguf(family_model("qwen2"), out, qtype="f32", progress=interrupt)
    assert out.read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == ["model.gguf"]


def test_pytorch_pickles_are_not_read(family_model: FamilyModel, tmp_path: Path) -> None:
    model_dir = _copy(family_model, "qwen2", tmp_path)
    (model_dir / "model.safetensors").rename(model_dir / "pytorch_model.bin")
    with pytest.raises(TwinError, match="safetensors"):
        convert_to_gguf(model_dir, tmp_path / "out.gguf")


def test_quantize_gguf_refuses_python_types_and_quantized_sources(
    family_gguf: FamilyGguf, tmp_path: Path
) -> None:
    with pytest.raises(TwinError, match="convert_to_gguf"):
        quantize_gguf(family_gguf("qwen2", "f16"), tmp_path / "x.gguf", "q8_0")
    with pytest.raises(TwinError, match="f32, f16 or bf16"):
        quantize_gguf(family_gguf("qwen2", "q8_0"), tmp_path / "x.gguf", "q4_k_m")
    assert not (tmp_path / "x.gguf").exists()


# --- parity with the HF model in llama.cpp -----------------------------------------------------

# f32/f16: llama.cpp's logits are within these of HF's (it keeps its KV cache in f16), and top-1 is the
# same at every position, except where HF's two best logits are closer than twice the largest
# difference (a near tie that the rounding may flip; random weights make a few, and they are counted).
FLOAT_BOUND = {"f32": 0.02, "f16": 0.05}
# Quantized: the random tiny models' logits are flat (3000 tokens within a few units), so quantization
# noise flips many close calls: measured here q8_0 92-100 %, q4_k_m 44-100 % by family. The floors catch
# a broken tensor layout (agreement near 1/3000), not fidelity, which the export's parity check reports.
QUANTIZED_FLOOR = {"q8_0": 0.85, "q4_k_m": 0.3}


def _llama(path: Path, **kwargs):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=2, verbose=False, **kwargs)


def _chat_texts(tok) -> list[str]:
    return [tok.apply_chat_template(c, tokenize=False) for c in CONVERSATIONS]


@pytest.mark.parametrize("family", [*FAMILIES, "mistral-json"])
def test_llama_cpp_tokenizes_like_hf(family: str, family_model: FamilyModel, family_gguf: FamilyGguf) -> None:
    """Rendered conversations and hard strings (standalone and as chat messages) give the HF token ids."""
    require("llama_cpp")
    tok = _tokenizer(family_model(family))
    llm = _llama(family_gguf(family, "f16"), vocab_only=True)
    try:
        hard = hard_strings(tok.all_special_tokens)
        chats = _chat_texts(tok) + [
            tok.apply_chat_template(
                [{"role": "user", "content": text}, {"role": "assistant", "content": text}], tokenize=False
            )
            for text in hard
        ]
        bad = tokenization_mismatches(tok, llm, chats)
        if family != "mistral-json":
            # A bare text too, with and without the tokenizer's own BOS. (mistral-json's "first"
            # Metaspace puts "▁" only at the very start of an input, which llama.cpp cannot: there
            # only texts after a special token, i.e. chat prompts, can match.)
            bad += tokenization_mismatches(tok, llm, hard)
            bad += tokenization_mismatches(tok, llm, hard[5:12], add_special=True)
    finally:
        llm.close()
    shown = [
        (text[:40], tok.convert_ids_to_tokens(a)[:8], tok.convert_ids_to_tokens(b)[:8]) for text, a, b in bad
    ]
    assert not bad, f"{len(bad)} texts tokenized differently, e.g. {shown[:3]}"


_REFERENCE: dict[str, list[tuple[list[int], np.ndarray]]] = {}


def _reference(family: str, model_dir: Path) -> list[tuple[list[int], np.ndarray]]:
    """The HF model's next-token logits (float32, eager attention) at every position of each conversation."""
    if family not in _REFERENCE:
        import torch
        from transformers import AutoModelForCausalLM

        tok = _tokenizer(model_dir)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="eager"
        )
        out = []
        for text in _chat_texts(tok):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out.append((ids, model(torch.tensor([ids])).logits[0].numpy()))
        _REFERENCE[family] = out
    return _REFERENCE[family]


def _compare(family: str, path: Path, model_dir: Path) -> dict[str, float]:
    """Top-1 agreement of the GGUF in llama.cpp with the HF model, at every position of the conversations."""
    llm = _llama(path, logits_all=True)
    refs, gots = [], []
    try:
        for ids, ref in _reference(family, model_dir):
            llm.reset()
            llm.eval(ids)
            refs.append(ref)
            gots.append(np.array(llm.scores[: len(ids)], dtype=np.float32))  # a copy: eval reuses it
    finally:
        llm.close()
    ref, got = np.concatenate(refs), np.concatenate(gots)
    worst = float(np.abs(ref - got).max())
    top2 = np.sort(ref, axis=-1)[:, -2:]
    near = (top2[:, 1] - top2[:, 0]) < 2 * worst
    same = ref.argmax(-1) == got.argmax(-1)
    return {
        "positions": len(ref),
        "agree": int(same.sum()),
        "near_ties": int(near.sum()),
        "differ_off_ties": int((~same & ~near).sum()),
        "max_diff": worst,
    }


@pytest.mark.parametrize("qtype", ["f32", "f16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_float_gguf_predicts_like_hf(
    family: str, qtype: str, family_model: FamilyModel, family_gguf: FamilyGguf, record_property
) -> None:
    require("llama_cpp")
    r = _compare(family, family_gguf(family, qtype), family_model(family))
    record_property("parity", r)
    print(f"{family} {qtype}: {r}")
    assert r["max_diff"] < FLOAT_BOUND[qtype]
    assert r["differ_off_ties"] == 0
    assert r["near_ties"] <= r["positions"] // 10  # so the check above is not vacuous


@pytest.mark.parametrize("qtype", ["q8_0", "q4_k_m"])
@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_gguf_mostly_predicts_like_hf(
    family: str, qtype: str, family_model: FamilyModel, family_gguf: FamilyGguf, record_property
) -> None:
    require("llama_cpp")
    path = family_gguf(family, qtype)
    if qtype == "q4_k_m":
        reader = gguf.GGUFReader(path)
        assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
        kinds = {t.tensor_type for t in reader.tensors}
        assert gguf.GGMLQuantizationType.Q4_K in kinds  # rows of 256: k-quants applied, no fallback only
    r = _compare(family, path, family_model(family))
    record_property("parity", r)
    print(f"{family} {qtype}: top-1 {r['agree']}/{r['positions']} ({r['agree'] / r['positions']:.1%}), {r}")
    assert r["agree"] / r["positions"] >= QUANTIZED_FLOOR[qtype]


def _llama_cpp_cast(raw: np.ndarray, source: str, qtype: str) -> bytes:
    """What llama.cpp's convert_hf_to_gguf.py writes: the source widened to float32 (exact), then
    numpy's astype for f16 and f32, gguf.quants' rounding for bf16."""
    f32 = (raw.astype(np.uint32) << 16).view(np.float32) if source == "BF16" else raw.astype(np.float32)
    if qtype == "F16":
        return f32.astype(np.float16).tobytes()
    if qtype == "BF16":
        return gguf.quants.quantize(f32, gguf.GGMLQuantizationType.BF16).tobytes()
    return f32.tobytes()


# Values past f16's range become inf in both, on purpose.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("source", ["F32", "F16", "BF16"])
def test_casts_give_llama_cpps_bytes(source: str, qtype: str) -> None:
    """Every 16-bit source value (the lookup tables), and f32 values across the whole range, with torch
    and without, give the bytes llama.cpp's converter computes."""
    from twinlm.export import gguf_tensors as tensors

    q = gguf.GGMLQuantizationType[qtype]
    if source == "F32":
        rng = np.random.default_rng(0)
        raw = np.concatenate(
            [
                rng.standard_normal(4096).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 4096),
                [7e4, -1e6, 1e-8, 0.0, -0.0, np.inf, 6.1e-5, 5.96e-8, 2.98e-8],
            ]
        ).astype(np.float32)
    else:  # every bit pattern but NaNs (whose payloads numpy and llama.cpp need not agree on)
        bits = np.arange(1 << 16, dtype=np.uint16)
        raw = bits if source == "BF16" else bits.view(np.float16)
        f32 = (bits.astype(np.uint32) << 16).view(np.float32) if source == "BF16" else raw.astype(np.float32)
        raw = raw[~np.isnan(f32)].reshape(2, -1)
    expected = _llama_cpp_cast(raw, source, qtype)
    assert tensors.cast(raw, source, q).tobytes() == expected
    if source == "F32":
        assert tensors.cast(raw, source, q, use_torch=True).tobytes() == expected


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
def test_casts_of_a_permuted_view_equal_those_of_a_copy(qtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """q/k projections are cast from a strided (per-head permuted) view into a reused buffer; the
    lookup splits a strided view along its first axes where it is larger than a piece."""
    from twinlm.export import gguf_tensors as tensors

    q = gguf.GGMLQuantizationType[qtype]
    raw = (np.random.default_rng(1).standard_normal((64, 48), np.float32).view(np.uint32) >> 16).astype(
        np.uint16
    )
    view = raw.reshape(4, 2, 8, 48).swapaxes(1, 2)  # 4 heads, as tensor_blocks reads them
    expected = tensors.cast(np.ascontiguousarray(view), "BF16", q).tobytes()
    for piece in (1 << 17, 100):  # the whole view in one lookup; split per head (and per row pair)
        monkeypatch.setattr(tensors, "_LOOKUP_ELEMENTS", piece)
        out = np.full(view.shape, 7, dtype=tensors.NUMPY_TYPES[q])
        assert tensors.cast(view, "BF16", q, out) is out and out.tobytes() == expected


@pytest.mark.parametrize("family", [*FAMILIES, "mistral-json"])
def test_vocabulary_arrays_packed_in_one_go_are_ggufs_bytes(
    family: str,
    family_model: FamilyModel,
    family_gguf: FamilyGguf,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The writer's fast array packing (tokens, scores, types, merges) gives the gguf package's bytes;
    the vocabulary read from the files alone (the guess written first) is the exact one."""
    from twinlm.export import gguf as convert
    from twinlm.export.gguf_vocab import read_vocab
    from twinlm.export.gguf_vocab_fast import FileTokenizer

    model = family_model(family)
    fast = convert_to_gguf(model, tmp_path / "fast.gguf").read_bytes()
    monkeypatch.setattr(convert, "_Writer", gguf.GGUFWriter)
    assert convert_to_gguf(model, tmp_path / "stock.gguf").read_bytes() == fast
    assert read_vocab(model, hf=FileTokenizer(model)) == read_vocab(model)


def test_a_wrong_guessed_vocabulary_is_written_again_with_the_exact_one(
    family_model: FamilyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the files alone cannot decide the vocabulary and the tokenizer read from them differs from
    transformers' (or cannot be read), the file is what transformers' tokenizer gives, byte for byte."""
    from twinlm.export import gguf as convert
    from twinlm.export import gguf_vocab_fast

    model = family_model("llama")
    expected = convert_to_gguf(model, tmp_path / "expected.gguf").read_bytes()
    monkeypatch.setattr(gguf_vocab_fast, "transformers_may_differ", lambda files: "undecided here")
    writes: list[int] = []
    real_write = convert._write
    monkeypatch.setattr(convert, "_write", lambda *a: writes.append(1) or real_write(*a))

    class Wrong(gguf_vocab_fast.FileTokenizer):
        @property
        def eos_token_id(self) -> int | None:
            return 5  # not the model's

    monkeypatch.setattr(gguf_vocab_fast, "FileTokenizer", Wrong)
    assert convert_to_gguf(model, tmp_path / "wrong.gguf").read_bytes() == expected
    assert len(writes) == 1  # an id: the same room, the metadata rewritten in place
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    class Longer(gguf_vocab_fast.FileTokenizer):
        @property
        def pad_token_id(self) -> int | None:
            return 7  # a key more than the model has: the tensor data moves

    writes.clear()
    monkeypatch.setattr(gguf_vocab_fast, "FileTokenizer", Longer)
    assert convert_to_gguf(model, tmp_path / "longer.gguf").read_bytes() == expected
    assert len(writes) == 2  # the guess, then the exact one
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    def unreadable(model_dir: Path) -> None:
        raise ValueError("a tokenizer.json this tokenizers version cannot read")

    writes.clear()
    monkeypatch.setattr(gguf_vocab_fast, "FileTokenizer", unreadable)
    assert convert_to_gguf(model, tmp_path / "unreadable.gguf").read_bytes() == expected
    assert len(writes) == 1  # no guess: the exact one at once


def test_torch_threads_are_put_back(family_model: FamilyModel, tmp_path: Path) -> None:
    """f32 weights are cast with torch where it is imported (as here), on one torch thread; afterwards
    this thread and a new one (which takes torch's process-wide default) see the setting they saw
    before, and the file is the one numpy's cast gives."""
    import threading

    import torch
    from transformers import AutoModelForCausalLM

    from twinlm.export import gguf_tensors

    model_dir = _copy(family_model, "llama", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(family_model("llama"), dtype=torch.float32)
    model.save_pretrained(model_dir)

    def in_a_new_thread() -> int:
        seen: list[int] = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        return seen[0]

    plan = gguf_tensors.index_safetensors(model_dir)
    assert {s.dtype for s in plan} == {"F32"}
    before = (torch.get_num_threads(), in_a_new_thread())
    with_torch = convert_to_gguf(model_dir, tmp_path / "torch.gguf").read_bytes()
    assert (torch.get_num_threads(), in_a_new_thread()) == before
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf_tensors, "_torch_pays", lambda plan: False)
        assert convert_to_gguf(model_dir, tmp_path / "numpy.gguf").read_bytes() == with_torch


def test_sharded_model_converts_like_one_file(
    family_model: FamilyModel, family_gguf: FamilyGguf, tmp_path: Path
) -> None:
    """A model in safetensors shards with an index (as merge writes large ones) gives the same GGUF data."""
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = _copy(family_model, "llama", tmp_path)
    (model_dir / "model.safetensors").unlink()
    model = AutoModelForCausalLM.from_pretrained(family_model("llama"), dtype=torch.bfloat16)
    model.save_pretrained(model_dir, max_shard_size="1MB")
    assert (model_dir / "model.safetensors.index.json").is_file()
    out = convert_to_gguf(model_dir, tmp_path / "sharded.gguf")
    one = {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(family_gguf("llama", "f16")).tensors}
    sharded = {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(out).tensors}
    assert sharded == one


@pytest.mark.parametrize(("qtype", "file_type"), [("q5_k_m", 17), ("q6_k", 18)])
def test_other_k_quants(qtype: str, file_type: int, family_gguf: FamilyGguf, capfd) -> None:
    require("llama_cpp")
    reader = gguf.GGUFReader(family_gguf("llama", qtype))
    assert _field(reader, "general.file_type") == file_type
    assert _field(reader, "tokenizer.ggml.pre") == "llama-bpe"  # the metadata is carried over
    assert "llama_model_quantize" not in capfd.readouterr().err  # llama.cpp's per-tensor log is kept quiet


def test_quantize_gguf_bad_source_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TwinError, match="no such GGUF"):
        quantize_gguf(tmp_path / "missing.gguf", tmp_path / "x.gguf", "q4_k_m")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(TwinError, match="not a readable GGUF") as err:
        quantize_gguf(tmp_path / "junk.gguf", tmp_path / "x.gguf", "q4_k_m")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x.gguf").exists()


def test_full_disk_is_one_line_and_leaves_no_file(
    family_model: FamilyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from twinlm.export import gguf as convert

    def full(out, alignment: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(convert, "_pad", full)
    with pytest.raises(TwinError, match="disk is full") as err:
        convert_to_gguf(family_model("qwen2"), tmp_path / "out.gguf")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def _little_space(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    from collections import namedtuple

    from twinlm.export import space

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(space.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - free, free))


def test_too_little_free_space_is_refused_before_writing(
    family_model: FamilyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line naming the folder, the space needed and the space free; nothing written, not even a
    temporary file (the conversion never starts)."""
    from twinlm.export import gguf as convert

    started: list[bool] = []
    monkeypatch.setattr(convert, "_atomic_path", lambda path: started.append(True))
    _little_space(monkeypatch, 5_000_000)
    out = tmp_path / "models" / "out.gguf"  # its folder does not exist yet: its parent's space counts
    with pytest.raises(TwinError) as err:
        convert_to_gguf(family_model("qwen2"), out)
    message = str(err.value)
    assert "\n" not in message and not started and not out.parent.exists()
    assert message.startswith(f"{out.parent}: not enough free space for out.gguf: it needs about ")
    assert message.endswith(", 5.0 MB free there; free some space or write elsewhere")


def test_quantizing_checks_free_space_first(
    family_gguf: FamilyGguf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = family_gguf("qwen2", "f16")
    _little_space(monkeypatch, 1_000)
    expected = rf"^{tmp_path}: not enough free space for q\.gguf: it needs about .* MB, 1\.0 KB free there"
    with pytest.raises(TwinError, match=expected):
        quantize_gguf(src, tmp_path / "q.gguf", "q4_k_m")
    assert list(tmp_path.iterdir()) == []
