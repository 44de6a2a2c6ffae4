"""The `tiny` preset: a small tokenizer and a small random-initialised model made on this machine.

It lets the whole pipeline run on a CPU in seconds, with no download: the demo, the tests and a
quick check of a new dataset. The tokenizer is a byte-level BPE (any text, emoji included, encodes
without unknown tokens) trained on generated multilingual text, with a ChatML chat template that
accepts any speaker name as a role. The model is a 2-layer causal LM of a real architecture
(Mistral, Llama or Qwen2), so training, merging and GGUF export run the same code paths as on the
real models, only smaller.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel

from twinlm.files import write_atomic

NAME = "tiny"
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Generic ChatML: every message's role is written as is, so speakers' names work as roles.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen2's pre-tokenizer split: words, single digits, punctuation runs, newlines, spaces.
_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_WORDS = (
    "the of and to in is you that it for on with as are this be at have from or one had by word but not "
    "what all were we when your can said there use an each which she do how their if will up other about "
    "out many then them these so some her would make like him into time has look two more write go see "
    "number no way could people my than first water been call who now find long down day did get come "
    "made may part hey lol ok yes sure thanks tomorrow tonight coffee climbing gym weekend dinner "
    "der die und ist nicht ich du wir gut danke morgen ja nein el la que de y en un es por favor gracias "
    "le les et est pas je tu nous merci oui café école naïve über straße año mañana 😂 👍 ❤️ 🙂 🔥 🎉"
).split()


def training_lines(seed: int = 7, count: int = 20_000) -> list[str]:
    """Deterministic chat-like lines: words, numbers, punctuation, emoji, several languages."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(2, 14))]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, len(words)), str(rng.randint(0, 2024)))
        line = " ".join(words)
        lines.append(line[0].upper() + line[1:] + rng.choice((".", "!", "?", "", "...", " :)")))
    return lines


def build_tiny_tokenizer(folder: Path) -> Path:
    """Train the tiny tokenizer into `folder` (a transformers tokenizer folder). Deterministic."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    write_atomic(folder / "TWINLM-TINY", "built by twinlm's tiny preset\n")
    return folder


TinyArch = Literal["mistral", "llama", "qwen2"]
ARCHITECTURES: tuple[TinyArch, ...] = ("mistral", "llama", "qwen2")
# Small enough that a training step takes milliseconds on a CPU, shaped like the real models:
# grouped-query attention (4 query heads sharing 2 KV heads), separate input/output embeddings.
HIDDEN_SIZE = 64
INTERMEDIATE_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
MAX_POSITIONS = 4096


def _config(arch: TinyArch, tokenizer: PreTrainedTokenizerFast) -> PreTrainedConfig:
    """The transformers config of a tiny model of `arch` whose vocabulary is `tokenizer`'s."""
    # Imported here: the tokenizer-only callers (build, validate) should not pay for torch models.
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = {
        "vocab_size": len(tokenizer),  # includes the added special tokens
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "tie_word_embeddings": False,
        # The tokenizer adds no BOS; EOS is the end of a chat turn, as in ChatML models.
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "mistral":
        # Mistral v0.3 has no sliding window; keep the tiny one the same so packing behaves alike.
        return MistralConfig(sliding_window=None, **common)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(use_sliding_window=False, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")


def _model_class(arch: TinyArch) -> type[PreTrainedModel]:
    from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

    classes: dict[str, type[PreTrainedModel]] = {
        "mistral": MistralForCausalLM,
        "llama": LlamaForCausalLM,
        "qwen2": Qwen2ForCausalLM,
    }
    return classes[arch]


def build_tiny_model(folder: Path, arch: TinyArch = "mistral", seed: int = 0) -> Path:
    """Write a random-initialised tiny causal LM of `arch` (safetensors) and the tiny tokenizer
    into `folder`. The same seed gives byte-identical weights; the global RNG is left untouched."""
    import torch

    config = _config(arch, _ensure_tokenizer(folder))
    # fork_rng: tests and training seed the global RNG themselves; building a model must not shift it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_class(arch)(config)
    # Written next to the folder, then moved in with config.json last: `ensure_tiny` treats
    # config.json as "the model is complete", so a killed build never looks finished.
    with tempfile.TemporaryDirectory(prefix=".tiny-model-", dir=folder.parent) as tmp:
        with _no_progress_bars():  # a one-shard write needs no bar in the CLI's output
            model.save_pretrained(tmp)  # transformers 5 always writes safetensors
        names = sorted(os.listdir(tmp), key=lambda name: name == "config.json")
        for name in names:
            os.replace(Path(tmp) / name, folder / name)
    return folder


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def _ensure_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    if not (folder / "TWINLM-TINY").is_file():
        build_tiny_tokenizer(folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    return tokenizer


def ensure_tiny(folder: Path) -> Path:
    """The tiny preset's folder (tokenizer and Mistral-architecture weights), built on first use."""
    if not (folder / "TWINLM-TINY").is_file():
        build_tiny_tokenizer(folder)
    if not (folder / "config.json").is_file():
        build_tiny_model(folder, "mistral")
    return folder
