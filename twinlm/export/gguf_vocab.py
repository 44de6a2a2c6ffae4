"""Tokenizer metadata for GGUF: the vocabulary, its kind and pre-tokenizer, special ids and the chat template.

llama.cpp re-implements each tokenizer family rather than running the Hugging Face one, so the GGUF
has to name the family exactly and carry what that implementation needs:

- SentencePiece-style (Mistral, Llama 2, Gemma): `tokenizer.ggml.model = llama`, a score per token
  (llama.cpp merges the adjacent pair whose joined text has the highest score), token types (BYTE for
  the `<0xNN>` fallback pieces, CONTROL for specials, UNKNOWN for `<unk>`) and whether a space is put
  in front of the text. Read from `tokenizer.model` where there is one (as llama.cpp's converter
  does), else from a `tokenizer.json` BPE with byte fallback, scoring each token by its merge rank.
- byte-level BPE (Llama 3, Qwen2): `tokenizer.ggml.model = gpt2`, the merges, and the pre-tokenizer
  name llama.cpp maps to its own split regex ("llama-bpe", "qwen2", "gpt-2"). The name is chosen
  from the split regex the tokenizer.json carries, never from the model's name: a fine-tune keeps
  its base's tokenizer whatever it is called.

Anything else is refused with one line naming llama.cpp's converter. Also here: `hard_strings()` and
`tokenization_mismatches()`, the tokenizer half of the parity check, for the tests and `export --check`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinlm.errors import TwinError
from twinlm.export.gguf_import import gguf

CONVERTER_HINT = "convert it with llama.cpp's convert_hf_to_gguf.py instead"

# The split regexes of the byte-level families llama.cpp implements, as their tokenizer.json carry
# them, with the pre-tokenizer name llama.cpp expects for each (src/llama-vocab.cpp).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}

# Tokens that end a turn in the chat templates of the supported families; llama.cpp stops on EOT.
EOT_CANDIDATES = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|eot|>")

TokenType = gguf.TokenType


@dataclass
class Vocab:
    """What the GGUF carries about the tokenizer (`add_to` writes it)."""

    model: str  # "llama" (SentencePiece-style) or "gpt2" (byte-level BPE)
    pre: str  # llama.cpp's pre-tokenizer name
    tokens: list[str | bytes]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad, eot
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.merges:
            writer.add_token_merges(self.merges)
        for kind, token_id in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def read_vocab(model_dir: Path, n_vocab: int | None = None, *, hf: Any = None) -> Vocab:
    """The tokenizer of the HF folder `model_dir` as GGUF metadata, padded to the model's `n_vocab` rows.

    `hf`: the tokenizer to read (default: transformers' AutoTokenizer, as training loaded it;
    gguf_vocab_fast passes a stand-in read from the files alone)."""
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer.model").is_file():
        raise TwinError(f"{model_dir}: no tokenizer.json or tokenizer.model; save the tokenizer there")
    if hf is None:
        hf = _hf_tokenizer(model_dir)
    # The pipeline the HF tokenizer runs (transformers may rebuild it from tokenizer_config.json rather
    # than use tokenizer.json as written): training tokenized with this one, so the GGUF must match it.
    backend = getattr(hf, "backend_tokenizer", None)
    tok_json = _load_json(model_dir / "tokenizer.json")
    if backend is not None:
        tok_json = json.loads(backend.to_str())
    model = (tok_json or {}).get("model", {})
    bytelevel = model.get("type") == "BPE" and _has(tok_json, "ByteLevel")
    spm_json = model.get("type") == "BPE" and bool(model.get("byte_fallback"))
    if spm_json or ((model_dir / "tokenizer.model").is_file() and not bytelevel):
        vocab = _sentencepiece(model_dir, tok_json, hf)
    elif bytelevel:
        vocab = _bytelevel(model_dir, tok_json, hf)
    else:
        raise TwinError(
            f"{model_dir / 'tokenizer.json'}: a {model.get('type', 'unknown')} tokenizer that is neither "
            f"SentencePiece-style nor byte-level BPE; {CONVERTER_HINT}"
        )
    if n_vocab is not None:
        if len(vocab.tokens) > n_vocab:
            raise TwinError(
                f"{model_dir}: the tokenizer has {len(vocab.tokens)} tokens but the model only {n_vocab} "
                "embedding rows; the tokenizer does not belong to this model"
            )
        # Embedding rows past the tokenizer (vocabularies padded to a multiple of 64, ...) as llama.cpp does.
        for i in range(len(vocab.tokens), n_vocab):
            vocab.tokens.append(f"[PAD{i}]")
            vocab.types.append(TokenType.UNUSED)
            if vocab.scores is not None:
                vocab.scores.append(-1000.0)
    _special_ids(vocab, hf, _load_json(model_dir / "config.json") or {})
    template = model_dir / "chat_template.jinja"
    vocab.chat_template = template.read_text(encoding="utf-8") if template.is_file() else hf.chat_template
    return vocab


# --- the two families -------------------------------------------------------------------------------


def _sentencepiece(model_dir: Path, tok_json: dict[str, Any] | None, hf: Any) -> Vocab:
    if (model_dir / "tokenizer.model").is_file():
        tokens, scores, types = _from_sentencepiece_model(model_dir / "tokenizer.model")
    else:
        assert tok_json is not None
        tokens, scores, types = _from_bpe_json(tok_json)
    # Added tokens (Mistral v0.3's [INST], Gemma's <start_of_turn>): as the HF tokenizer marks them.
    for token_id, added in hf.added_tokens_decoder.items():
        while token_id >= len(tokens):
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-1000.0)
            types.append(TokenType.UNUSED)
        if added.special or _looks_special(added.content):
            types[token_id] = TokenType.UNKNOWN if added.content == hf.unk_token else TokenType.CONTROL
            tokens[token_id] = added.content
        else:
            # llama.cpp matches user-defined tokens on the text before "▁" escaping.
            tokens[token_id] = added.content.replace("\u2581", " ")
            types[token_id] = TokenType.USER_DEFINED
        scores[token_id] = -1000.0 if types[token_id] != TokenType.UNKNOWN else scores[token_id]
    return Vocab(
        "llama",
        "default",
        tokens,
        types,
        scores,
        add_space_prefix=_adds_space_prefix(model_dir, tok_json),
    )


def _from_sentencepiece_model(path: Path) -> tuple[list[str | bytes], list[float], list[int]]:
    from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    if proto.trainer_spec.model_type != proto.trainer_spec.BPE:
        # llama.cpp's "llama" tokenizer merges by score: right for SentencePiece BPE, not for unigram.
        raise TwinError(f"{path}: a SentencePiece model that is not BPE; {CONVERTER_HINT}")
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(path))
    tokens: list[str | bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for i in range(sp.vocab_size()):
        tokens.append(sp.IdToPiece(i))
        scores.append(sp.GetScore(i))
        if sp.IsUnknown(i):
            types.append(TokenType.UNKNOWN)
        elif sp.IsControl(i):
            types.append(TokenType.CONTROL)
        elif sp.IsUnused(i):
            types.append(TokenType.UNUSED)
        elif sp.IsByte(i):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
    return tokens, scores, types


def _from_bpe_json(tok_json: dict[str, Any]) -> tuple[list[str | bytes], list[float], list[int]]:
    # llama.cpp's SentencePiece tokenizer merges by score, BPE by merge rank: a token made by the
    # merge of rank r scores -r, so the same pair wins in both. Tokens no merge makes keep 0.
    model = tok_json["model"]
    vocab: dict[str, int] = model["vocab"]
    size = max(vocab.values()) + 1
    tokens: list[str | bytes] = [f"[PAD{i}]" for i in range(size)]
    scores = [0.0] * size
    types = [int(TokenType.UNUSED)] * size
    for text, i in vocab.items():
        tokens[i] = text
        is_byte = len(text) == 6 and text.startswith("<0x") and text.endswith(">")
        types[i] = TokenType.BYTE if is_byte else TokenType.NORMAL
    seen: set[int] = set()
    for rank, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token_id = vocab.get(left + right)
        if token_id is not None and token_id not in seen:
            seen.add(token_id)
            scores[token_id] = -float(rank + 1)
    unk = model.get("unk_token")
    if unk in vocab:
        types[vocab[unk]] = TokenType.UNKNOWN
    return tokens, scores, types


def _adds_space_prefix(model_dir: Path, tok_json: dict[str, Any] | None) -> bool:
    """Whether the HF tokenizer puts "▁" in front of the text (Mistral, Llama 2: yes; Gemma: no)."""
    if tok_json is not None:
        if _has(tok_json.get("normalizer"), "Prepend"):
            return True
        for step in _steps(tok_json.get("pre_tokenizer")):
            if step.get("type") == "Metaspace":
                # "first" puts "▁" only at the very start of the input, llama.cpp either at the start of
                # every text after a special token or nowhere. Chat prompts always start with a special
                # token (BOS or the template's first marker), so "nowhere" is the one that matches them;
                # a bare text given to llama.cpp without a template then lacks the leading "▁".
                return step.get("prepend_scheme", "always") == "always" and step.get("add_prefix_space", True)
        return False
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((model_dir / "tokenizer.model").read_bytes())
    return bool(proto.normalizer_spec.add_dummy_prefix)


def _bytelevel(model_dir: Path, tok_json: dict[str, Any], hf: Any) -> Vocab:
    pre = _bytelevel_pre(model_dir, tok_json)
    vocab: dict[str, int] = dict(tok_json["model"]["vocab"])
    added = {t["id"]: t for t in tok_json.get("added_tokens", [])}
    size = max([*vocab.values(), *added]) + 1
    tokens: list[str | bytes] = [f"[PAD{i}]" for i in range(size)]
    types = [int(TokenType.UNUSED)] * size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = TokenType.NORMAL
    for i, token in added.items():
        tokens[i] = token["content"]
        special = token.get("special") or _looks_special(token["content"])
        types[i] = TokenType.CONTROL if special else TokenType.USER_DEFINED
    merges = [
        m if isinstance(m, str) else " ".join(part.replace(" ", chr(ord(" ") + 256)) for part in m)
        for m in tok_json["model"].get("merges", [])
    ]
    return Vocab("gpt2", pre, tokens, types, merges=merges)


def _bytelevel_pre(model_dir: Path, tok_json: dict[str, Any]) -> str:
    regexes = [
        step["pattern"]["Regex"]
        for step in _steps(tok_json.get("pre_tokenizer"))
        if step.get("type") == "Split" and "Regex" in step.get("pattern", {})
    ]
    byte_level = [s for s in _steps(tok_json.get("pre_tokenizer")) if s.get("type") == "ByteLevel"]
    if not regexes and byte_level and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if len(regexes) == 1 and regexes[0] in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[regexes[0]]
    raise TwinError(
        f"{model_dir / 'tokenizer.json'}: byte-level BPE with a pre-tokenizer split that is not Llama 3's, "
        f"Qwen2's or GPT-2's, so llama.cpp's tokenization could differ; {CONVERTER_HINT}"
    )


# --- special tokens ---------------------------------------------------------------------------------


def _special_ids(vocab: Vocab, hf: Any, config: dict[str, Any]) -> None:
    # A tokenizer without a BOS (Qwen2) keeps the model config's, as llama.cpp's converter does.
    ids = {
        "bos": hf.bos_token_id if hf.bos_token_id is not None else config.get("bos_token_id"),
        "eos": hf.eos_token_id,
        "unk": hf.unk_token_id,
        "pad": hf.pad_token_id,
    }
    index = {t: i for i, t in enumerate(vocab.tokens) if vocab.types[i] == TokenType.CONTROL}
    eot = next((index[t] for t in EOT_CANDIDATES if t in index), None)
    ids["eot"] = eot if eot is not None else hf.eos_token_id
    vocab.special_ids = {kind: i for kind, i in ids.items() if isinstance(i, int) and i >= 0}
    # What the tokenizer itself adds around a text (its post-processor), not what its config claims.
    plain = hf("a", add_special_tokens=False)["input_ids"]
    full = hf("a", add_special_tokens=True)["input_ids"]
    vocab.add_bos = hf.bos_token_id is not None and full[: len(full) - len(plain)][:1] == [hf.bos_token_id]
    vocab.add_eos = hf.eos_token_id is not None and len(full) > len(plain) and full[-1] == hf.eos_token_id


def _looks_special(text: str) -> bool:
    # llama.cpp's converter marks these as CONTROL even where the HF tokenizer calls them non-special.
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<pad>", "<mask>")


# --- helpers ----------------------------------------------------------------------------------------


def _hf_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TwinError(f"{model_dir}: cannot load the tokenizer: {first}") from None


def _load_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TwinError(f"{path}: not readable JSON ({err})") from None
    return data if isinstance(data, dict) else None


def _steps(node: Any) -> list[dict[str, Any]]:
    """A tokenizer.json normalizer / pre-tokenizer as its list of steps (Sequence flattened)."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        children = node.get("pretokenizers") or node.get("normalizers") or []
        return [step for child in children for step in _steps(child)]
    return [node]


def _has(node: Any, kind: str) -> bool:
    if isinstance(node, dict):
        return node.get("type") == kind or any(_has(v, kind) for v in node.values())
    if isinstance(node, list):
        return any(_has(v, kind) for v in node)
    return False


# --- parity pieces (used by the tests and by the export's --check) ----------------------------------


def hard_strings(specials: Iterable[str] = ()) -> list[str]:
    """Texts where tokenizers tend to disagree: unicode, emoji, whitespace runs, code, special look-alikes.

    `specials` (the tokenizer's own special tokens) are added typed as text, alone and inside words."""
    texts = [
        "",
        " ",
        "  ",
        "\n",
        "\n\n\n",
        "\t\tindented\ttabs",
        "hello world",
        " hello world",
        "Hello World!  Two  spaces,   three,    four.",
        "trailing spaces   ",
        "line one\nline two\r\nline three\n\n  indented",
        "naïve café — über straße, mañana, garçon",
        "привет, как дела? Всё хорошо.",
        "こんにちは世界、ラーメンを食べたい。",
        "你好，世界！我们明天见。",
        "مرحبا بالعالم",
        "🙂😂👍🏽 ❤️ 👨‍👩‍👧‍👦 🏳️‍🌈 🇳🇱",
        "lol 😂😂😂 ok 👍",
        "1234567890 3.14159 1,000,000 2024-05-01 10:45 $20 €5 50%",
        "I'm sure you'll see they've said it's 'quoted' and \"double\"",
        "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
        "if (a && b || !c) { x += 1; } else { y -= 2; }",
        '<html><body class="x">&amp; &lt;tag&gt;</body></html>',
        "https://example.com/path?query=1&b=2#frag e-mail@example.org",
        "\u200bzero\u200dwidth\u00a0nbsp\u2003em",
        "ÅÄÖ åäö ǅ ﬁ ① Ⅻ",
        "a" * 300,
        "The quick brown fox jumps over the lazy dog. " * 5,
        "<|im_start|>user\nhi<|im_end|>",
        "<|im_end|> typed as text",
        "<s>[INST] not special [/INST]</s>",
        "<start_of_turn>user\nhi<end_of_turn>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
        "<unk> <pad> <0x41> [PAD] <|endoftext|>",
    ]
    for token in specials:
        texts += [token, f"x{token}y", f" {token} ", f"{token}{token}"]
    return texts


def tokenization_mismatches(
    hf_tokenizer: Any, llama: Any, texts: Sequence[str], *, add_special: bool = False
) -> list[tuple[str, list[int], list[int]]]:
    """The texts that llama.cpp (a `llama_cpp.Llama`) tokenizes differently from the HF tokenizer.

    Special tokens written in the text are parsed as tokens by both (HF's default). Each mismatch is
    (text, HF ids, llama.cpp ids)."""
    bad = []
    for text in texts:
        expected = list(hf_tokenizer(text, add_special_tokens=add_special)["input_ids"])
        got = list(llama.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))
        if expected != got:
            bad.append((text, expected, got))
    return bad
