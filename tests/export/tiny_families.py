"""Tiny random models of each preset family, with tokenizers shaped like the real ones, for export tests.

`tiny_family_model(family, dest)` writes an HF folder (config, safetensors, tokenizer, chat_template.jinja)
the way `twinlm merge` writes one, and returns it. Families:

- "mistral": MistralForCausalLM; a SentencePiece BPE `tokenizer.model` (byte fallback, dummy prefix,
  [INST]/[/INST] as control pieces, like Mistral's v3 tokenizer) and the tokenizer.json transformers
  makes of it (Prepend "▁" + Replace " " normalizer, as Llama 2 / Mistral ship it); Mistral's template.
- "llama": LlamaForCausalLM with Llama 3.1's RoPE scaling; byte-level BPE with Llama 3's split regex,
  ignore_merges and special tokens (tests/tiny_tokenizers.py), Llama 3's template.
- "qwen2": Qwen2ForCausalLM (q/k/v biases, tied embeddings); Qwen2.5's byte-level tokenizer and template.
- "gemma2": Gemma2ForCausalLM (soft-capping, sliding window shorter than the test sequences); a
  SentencePiece BPE without dummy prefix, <start_of_turn>/<end_of_turn> as control pieces; Gemma's template.
- "mistral-json": Mistral with the tokenizer.json-only SentencePiece-style tokenizer of
  tests/tiny_tokenizers.py (no tokenizer.model; Metaspace "first" pre-tokenizer).

Sizes: 2 layers, hidden 256, intermediate 512, 4 heads of 64 (2 kv heads), so k-quants apply. Weights
are random (seeded) and saved in bfloat16 unless `dtype` says otherwise. Imported by other export tests:
keep the signature.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from tiny_tokenizers import FAMILIES as TOKENIZER_FAMILIES  # noqa: E402
from tiny_tokenizers import build_tokenizer, template_text, training_text  # noqa: E402

FAMILIES = ("mistral", "llama", "qwen2", "gemma2", "mistral-json")
ARCHITECTURES = {
    "mistral": "MistralForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "mistral-json": "MistralForCausalLM",
}
TEMPLATES = {
    "mistral": "mistral-v0.3.jinja",
    "llama": "llama3.jinja",
    "qwen2": "qwen2.5.jinja",
    "gemma2": "gemma.jinja",
    "mistral-json": "mistral-v0.3.jinja",
}
_MISTRAL_CONTROL = ["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]"]
_GEMMA_CONTROL = ["<mask>", "<start_of_turn>", "<end_of_turn>"]
SLIDING_WINDOW = 24  # Gemma 2: shorter than the test conversations, so the window is exercised


def tiny_family_model(family: str, dest: Path, *, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """Write the tiny `family` model (see the module docstring) into the folder `dest`; return it."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    dest.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(family, dest)
    _model(family, dest, vocab_size=len(tok), tok=tok, dtype=dtype, seed=seed)
    (dest / "chat_template.jinja").write_text(template_text(TEMPLATES[family]), encoding="utf-8")
    return dest


# --- tokenizers ---------------------------------------------------------------------------------


def _tokenizer(family: str, dest: Path):  # -> PreTrainedTokenizerFast
    from transformers import AutoTokenizer

    if family in ("mistral", "gemma2"):
        _sentencepiece_tokenizer(family, dest)
    else:
        name = {"llama": "llama3", "qwen2": "qwen2.5", "mistral-json": "mistral-v0.3"}[family]
        build_tokenizer(name, dest)
        if family == "llama":
            # Llama 3's tokenizer.json has ignore_merges (a word in the vocabulary is one token).
            path = dest / "tokenizer.json"
            data = json.loads(path.read_text(encoding="utf-8"))
            data["model"]["ignore_merges"] = True
            path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    # The template lives in chat_template.jinja, as merge writes it.
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return AutoTokenizer.from_pretrained(dest)


def _sentencepiece_tokenizer(family: str, dest: Path) -> None:
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import generate_merges

    mistral = family == "mistral"
    # The real ids: Mistral <unk> <s> </s>, Gemma <pad> <eos> <bos> <unk>.
    ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    if not mistral:
        ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3)
    control = _MISTRAL_CONTROL if mistral else _GEMMA_CONTROL
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=3000,
        byte_fallback=True,
        control_symbols=control,
        pad_piece="<pad>",
        unk_piece="<unk>",
        bos_piece="<s>" if mistral else "<bos>",
        eos_piece="</s>" if mistral else "<eos>",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=mistral,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        character_coverage=0.9995,
        num_threads=1,
        minloglevel=2,
        **ids,
    )
    (dest / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = {sp.IdToPiece(i): i for i in range(sp.GetPieceSize())}
    merges = generate_merges(vocab)
    unk = sp.IdToPiece(sp.unk_id())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    # As transformers' converter writes Llama 2 / Mistral (legacy) and Gemma tokenizer.json.
    steps = [normalizers.Replace(" ", "\u2581")]
    if mistral:
        steps.insert(0, normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if mistral:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    specials = [sp.IdToPiece(i) for i in range(sp.GetPieceSize()) if sp.IsControl(i) or sp.IsUnknown(i)]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    bos = sp.IdToPiece(sp.bos_id())
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, sp.bos_id())]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=sp.IdToPiece(sp.eos_id()),
        unk_token=unk,
        pad_token=None if mistral else "<pad>",
        additional_special_tokens=control,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    hf.save_pretrained(dest)


# --- models -------------------------------------------------------------------------------------


def _model(family: str, dest: Path, *, vocab_size: int, tok, dtype: str, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = ARCHITECTURES[family]
    model_type = {"MistralForCausalLM": "mistral", "LlamaForCausalLM": "llama"}.get(arch)
    model_type = model_type or {"Qwen2ForCausalLM": "qwen2", "Gemma2ForCausalLM": "gemma2"}[arch]
    common = dict(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=131072 if family == "llama" else 2048,
        initializer_range=0.08,  # decisive logits: top-1 far from a tie at most positions
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if family in ("mistral", "mistral-json"):
        extra = dict(sliding_window=None, rope_theta=1_000_000.0, tie_word_embeddings=False)
    elif family == "llama":
        rope = dict(
            rope_type="llama3",
            rope_theta=500_000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        )
        extra = dict(rope_scaling=rope, rope_parameters=rope, tie_word_embeddings=False)
    elif family == "qwen2":
        extra = dict(rope_theta=1_000_000.0, tie_word_embeddings=True, use_sliding_window=False)
    else:
        extra = dict(
            head_dim=64,
            query_pre_attn_scalar=64,
            sliding_window=SLIDING_WINDOW,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            tie_word_embeddings=True,
        )
    config = AutoConfig.for_model(model_type, **common, **extra)
    config.architectures = [arch]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                # Norm weights away from their init (ones / zeros): the GGUF must carry them, +1 included.
                param.copy_(torch.randn_like(param) * 0.1 + (0.0 if family == "gemma2" else 1.0))
            elif name.endswith(".bias"):
                param.copy_(torch.randn_like(param) * 0.1)
    model.to(getattr(torch, dtype)).save_pretrained(dest)


def copy_family_model(src: Path, dest: Path) -> Path:
    """A copy of a built model folder (tests that change files work on their own copy)."""
    shutil.copytree(src, dest)
    return dest


__all__ = ["FAMILIES", "TOKENIZER_FAMILIES", "copy_family_model", "tiny_family_model"]
