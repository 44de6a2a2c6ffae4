"""Tiny tokenizers with each chat-template family's real special tokens and real chat template.

Tests must never download a model, yet the rendering code has to be checked against the families
twinlm supports. So each family gets a small BPE (a ~3k vocabulary trained here, in well under a
second, on generated multilingual text with emoji) shaped like the real one:

- SentencePiece-style (Mistral, Gemma, a Mistral-like base model): "▁" for spaces, byte fallback
  (<0x00>..<0xFF>) for characters outside the vocabulary, the control tokens at the start of the
  vocabulary, BOS added by the tokenizer itself (Mistral/Llama prepend a "▁" to the first word,
  Gemma does not);
- byte-level (ChatML, Qwen2.5, Llama 3): GPT-2 byte alphabet with the Qwen2 / Llama 3 split regex,
  control tokens as added special tokens, BOS added by the tokenizer only for Llama 3.

The chat templates are the models' own text, kept in tests/fixtures/templates/<family>.jinja (the
first line names where the text comes from and is not part of the template). Token ids differ from
the real models; the tests never depend on ids, only on token strings and on which ones are special.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"

# Qwen2 and Llama 3 split text with these regexes before byte-level BPE (from their tokenizer.json).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class Family:
    kind: Literal["sentencepiece", "bytelevel"]
    specials: tuple[str, ...]  # special tokens, first ids, in this order
    bos: str | None
    eos: str
    pad: str | None = None
    unk: str | None = None
    adds_bos: bool = False  # the tokenizer itself puts BOS in front (add_special_tokens=True)
    prefix_space: bool = True  # SentencePiece: "▁" before the first word
    split: str = QWEN2_SPLIT  # byte-level split regex
    plain_added: tuple[str, ...] = ()  # added tokens that are not special (Qwen's <tool_call>)
    template: str | None = None  # file in tests/fixtures/templates, None: a base model


_MISTRAL_CONTROL = ("[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]")
_QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
)
_LLAMA3_SPECIAL = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)

FAMILIES: dict[str, Family] = {
    # Mistral-7B-Instruct-v0.3: [INST]/[/INST] are control tokens (ids 3, 4 in the real vocabulary).
    "mistral-v0.3": Family(
        "sentencepiece",
        ("<unk>", "<s>", "</s>", *_MISTRAL_CONTROL),
        bos="<s>",
        eos="</s>",
        unk="<unk>",
        adds_bos=True,
        template="mistral-v0.3.jinja",
    ),
    # Mistral-7B-Instruct-v0.2: the v1 tokenizer, where [INST] is ordinary text.
    "mistral-v0.2": Family(
        "sentencepiece",
        ("<unk>", "<s>", "</s>"),
        bos="<s>",
        eos="</s>",
        unk="<unk>",
        adds_bos=True,
        template="mistral-v0.2.jinja",
    ),
    # Dolphin-style ChatML on a byte-level base (Dolphin 2.9.x on Qwen2): no BOS, eos <|im_end|>.
    "chatml": Family(
        "bytelevel",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        template="chatml.jinja",
    ),
    "qwen2.5": Family(
        "bytelevel",
        _QWEN_SPECIAL,
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        plain_added=("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"),
        template="qwen2.5.jinja",
    ),
    # Llama-3.1-8B-Instruct: eos is <|eot_id|> in the instruct tokenizer, no pad token.
    "llama3": Family(
        "bytelevel",
        _LLAMA3_SPECIAL,
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        adds_bos=True,
        split=LLAMA3_SPLIT,
        template="llama3.jinja",
    ),
    # Gemma 2 instruct: <bos> added by the tokenizer and written by the template; no prefix space.
    "gemma": Family(
        "sentencepiece",
        ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        adds_bos=True,
        prefix_space=False,
        template="gemma.jinja",
    ),
    # A base model without a chat template (Mistral-7B-v0.1-like tokenizer).
    "plain": Family(
        "sentencepiece",
        ("<unk>", "<s>", "</s>"),
        bos="<s>",
        eos="</s>",
        unk="<unk>",
        adds_bos=True,
    ),
}


def template_text(name: str) -> str:
    """A template fixture without its first line (the note naming where the text comes from)."""
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    first, _, rest = text.partition("\n")
    assert first.startswith("{# source:"), f"{name}: first line must name the template's source"
    return rest


# --- training text ------------------------------------------------------------------------------

_WORDS = {
    "en": "the be to of and a in that have it for not on with he as you do at this but his by from they we "
    "say her she or an will my one all would there their what so up out if about who get which go me when "
    "make can like time no just him know take people into year your good some could them see other than "
    "then now look only come its over think also back after use two how our work first well way even new "
    "want because any these give day most us sure thing thanks lol haha okay yes yeah hey hello hi what's "
    "tonight tomorrow pizza movie game train late sorry great cool nice love friend weekend coffee later",
    "de": "und der die das ist nicht ich du wir ihr sie es ja nein danke bitte schön groß über für mädchen "
    "straße heute morgen später vielleicht genau natürlich gemütlich tschüss grüße",
    "fr": "le la les un une et est pas je tu nous vous ils elle oui non merci beaucoup très déjà où été "
    "garçon français ça voilà bientôt demain soirée",
    "es": "el la los las y es no sí gracias por favor mañana niño señor qué cómo está después también",
    "ru": "привет как дела да нет спасибо хорошо сегодня завтра пока друг",
    "ja": "こんにちは ありがとう はい いいえ 今日 明日 友達 ラーメン 東京",
    "zh": "你好 谢谢 是的 不是 今天 明天 朋友 我们 中国",
}
_EMOJI = [*"😀😂🤣😍👍🎉🔥🙏😅🍕🚆👋🤔😴🥳👀✨💯🙈", "❤️"]
_PUNCT = [".", "!", "?", ",", "...", "!!", "?!", ":)", ":D", ";)", " -", ":"]
_MARKUP = ["[link]", "<3", "(see above)", "#general", "@here", "e-mail", "v0.3", "10:45", "2024-05-01", "$20"]


def training_text(seed: int = 1234, chars: int = 300_000) -> list[str]:
    """Deterministic chat-like lines in several languages, with emoji, numbers and punctuation."""
    rng = random.Random(seed)
    vocab = {lang: words.split() for lang, words in _WORDS.items()}
    langs = list(vocab)
    weights = [8, 2, 2, 2, 1, 1, 1]
    lines: list[str] = []
    total = 0
    while total < chars:
        lang = rng.choices(langs, weights)[0]
        n = rng.randint(2, 14)
        sep = "" if lang in ("ja", "zh") and rng.random() < 0.5 else " "
        words = [rng.choice(vocab[lang]) for _ in range(n)]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        if rng.random() < 0.15:
            words.insert(rng.randrange(len(words) + 1), rng.choice(_EMOJI))
        if rng.random() < 0.1:
            words.insert(rng.randrange(len(words) + 1), rng.choice(_MARKUP))
        if rng.random() < 0.1:
            words.append(str(rng.randint(0, 9999)))
        line = sep.join(words) + rng.choice(_PUNCT)
        if rng.random() < 0.1:
            line = "  " + line  # some indentation, so whitespace runs are seen
        lines.append(line)
        total += len(line) + 1
    return lines


# --- building -----------------------------------------------------------------------------------


def _sentencepiece_like(fam: Family, lines: list[str], vocab_size: int) -> Tokenizer:
    # Train merges on words split at "▁" the way SentencePiece does, then rebuild the model with the
    # byte-fallback pieces <0x00>..<0xFF> as ordinary vocabulary entries right after the specials.
    scheme = "first" if fam.prefix_space else "never"
    trainer_tok = Tokenizer(models.BPE(unk_token=fam.unk))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 256, min_frequency=2, limit_alphabet=250, show_progress=False
    )
    trainer_tok.train_from_iterator(lines, trainer)
    trained_vocab = trainer_tok.get_vocab()
    merges = _merges(trainer_tok)
    vocab: dict[str, int] = {}
    for token in [*fam.specials, *(f"<0x{b:02X}>" for b in range(256))]:
        vocab[token] = len(vocab)
    for token, _ in sorted(trained_vocab.items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=fam.unk, byte_fallback=True, fuse_unk=True)
    )
    # split=False like transformers' LlamaConverter: the merges never cross a "▁" anyway.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if fam.prefix_space:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    return tok


def _bytelevel(fam: Family, lines: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(fam.split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(fam.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    return tok


def _merges(tok: Tokenizer) -> list[tuple[str, str]]:
    model = json.loads(tok.to_str())["model"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def build_tokenizer(family: str, path: Path, *, vocab_size: int = 3000) -> Path:
    """Build the tiny tokenizer of `family` into the folder `path` (save_pretrained layout); return it."""
    fam = FAMILIES[family]
    lines = training_text()
    tok = (
        _sentencepiece_like(fam, lines, vocab_size)
        if fam.kind == "sentencepiece"
        else _bytelevel(fam, lines, vocab_size)
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in fam.specials])
    if fam.plain_added:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in fam.plain_added])
    if fam.kind == "bytelevel":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if fam.adds_bos:
        assert fam.bos is not None
        bos_id = tok.token_to_id(fam.bos)
        template = processors.TemplateProcessing(
            single=f"{fam.bos} $A", pair=f"{fam.bos} $A {fam.bos} $B", special_tokens=[(fam.bos, bos_id)]
        )
        if fam.kind == "bytelevel":
            template = processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
        tok.post_processor = template
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=fam.bos,
        eos_token=fam.eos,
        pad_token=fam.pad,
        unk_token=fam.unk,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    if fam.template is not None:
        hf.chat_template = template_text(fam.template)
    path.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(path)
    return path
