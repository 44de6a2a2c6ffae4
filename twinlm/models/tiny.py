"""The `tiny` preset: a small tokenizer (and, with training, a small model) made on this machine.

It lets the whole pipeline run on a CPU in seconds, with no download: the demo, the tests and a
quick check of a new dataset. The tokenizer is a byte-level BPE (any text, emoji included, encodes
without unknown tokens) trained on generated multilingual text, with a ChatML chat template that
accepts any speaker name as a role.
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

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


def ensure_tiny(folder: Path) -> Path:
    """The tiny preset's folder, built on first use."""
    if not (folder / "TWINLM-TINY").is_file():
        build_tiny_tokenizer(folder)
    return folder
