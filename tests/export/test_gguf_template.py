"""The chat template embedded in the GGUF, rendered by llama-cpp-python's Jinja chat formatter (what
`llama-server --jinja` and LM Studio do), gives the training rendering byte for byte (issue 10)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tools_required import require
from transformers import AutoTokenizer

from twinlm.export.ollama_chat import prompt_text
from twinlm.prepare.render import render
from twinlm.prepare.sample import Sample, Turn

from conftest import FamilyGguf, FamilyModel

BOT = "ChatGPT"
EXCHANGE = [
    ("Alex Rivera", "How do I boil an egg?"),
    ("ChatGPT", "Put it in boiling water for 9 minutes."),
    ("Alex Rivera", "Thanks! And a soft one? 🥚"),
    ("ChatGPT", "About 6 minutes, then cool it in cold water."),
]


def embedded_template(gguf: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


@pytest.mark.parametrize("family", ["mistral", "llama", "qwen2", "gemma2"])
@pytest.mark.parametrize("system", [None, "Answer briefly. I live in Lyon."])
def test_llama_cpp_jinja_renders_the_embedded_template_as_training_does(
    family_model: FamilyModel, family_gguf: FamilyGguf, family: str, system: str | None
) -> None:
    """The whole chat as training renders it, and the chat-time prompt before the last answer (where
    Mistral v0.3 shows the system prompt: before the last user message, as training places it)."""
    require("llama_cpp")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    tokenizer: Any = AutoTokenizer.from_pretrained(family_model(family))
    template = embedded_template(family_gguf(family, "f16"))
    assert template == (family_model(family) / "chat_template.jinja").read_text(encoding="utf-8")
    turns = tuple(Turn(who, text, who == BOT) for who, text in EXCHANGE)
    sample = Sample(
        id="s", conversation="c:1", source="chatgpt", kind="assistant", turns=turns, system=system
    )
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "assistant" if who == BOT else "user", "content": t} for who, t in EXCHANGE]
    if family == "gemma2" and system:  # Gemma refuses a system role: training folds it in, as a client must
        messages = [{"role": "user", "content": f"{system}\n\n{EXCHANGE[0][1]}"}, *messages[2:]]

    def jinja(chat: list[dict[str, str]], generation_prompt: bool) -> str:
        formatter = Jinja2ChatFormatter(
            template, tokenizer.eos_token, tokenizer.bos_token, add_generation_prompt=generation_prompt
        )
        return formatter(messages=chat).prompt

    prompt = prompt_text(replace(sample, turns=turns[:-1]), tokenizer, BOT)
    bos = tokenizer.bos_token
    if bos and "bos_token" in template and not prompt.startswith(bos):
        prompt = bos + prompt  # prompt_text leaves out the BOS the tokenizer adds itself (Ollama adds it)
    assert jinja(messages[:-1], True) == prompt
    (trained,) = render(sample, tokenizer, 4096, Counter())
    assert trained.text.startswith(prompt)  # the last answer is trained after exactly that prompt
    if not (family == "mistral" and system):  # v0.3 drops the system prompt when the chat ends with an answer
        assert jinja(messages, False) == trained.text
