"""An Ollama chat as twinlm sees it: who each message is, and the prompt text training would build.

Ollama renders a Modelfile's TEMPLATE with Go's text/template. It passes `.System` (every system
message's text, joined by a blank line; the Modelfile's SYSTEM where the client sent none) and
`.Messages` (the client's messages, consecutive ones of one role merged with a blank line: `collate`,
system messages included). `conversation` is the twinlm chat those messages stand for, and
`prompt_text` the text of `twinlm.prepare.render.render_prompt` for it: what the TEMPLATE must render.

Roles. An `assistant` message is the persona's turn. For an assistant-style persona ("assistant":
the ChatGPT job) a `user` message is the user's turn, rendered as the template's own user /
assistant chat. For a chat between people a `user` message is a turn of the persona's partner
(`Speakers.user`: twinlm-export.json's "others" first, see twinlm.export.ollama), rendered as
training writes that speaker (the name as the role on ChatML / Llama 3 templates, a "Name: " prefix
on Mistral / Gemma). A user message that starts with "Name: " for one of the partners listed in
"others" is a turn of that person (group chats): the prefix is taken off and the turn is that
person's. An assistant message loses one leading space (`reply_text`). BOS is left to the GGUF
tokenizer's add-BOS flag, as Ollama expects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

# render_prompt's own code path, for its text (render_prompt returns only token ids).
from twinlm.prepare.render import _PROBE_TEXT, TemplateError, _Renderer, inspect_template
from twinlm.prepare.sample import Sample, Turn

__all__ = ["Speakers", "collate", "conversation", "prompt_ids", "prompt_text", "reply_text"]


@dataclass(frozen=True)
class Speakers:
    """Who is who in the Ollama chat of one persona."""

    persona: str  # the assistant role: the name training wrote for the persona
    kind: Literal["chat", "assistant"]
    user: str  # who a plain user message is
    others: tuple[str, ...] = ()  # partners a user message may name with a "Name: " prefix
    system: str | None = None  # the persona's system prompt (the Modelfile's SYSTEM)

    def speaker_of(self, content: str) -> tuple[str, str]:
        """(speaker, text) of a user message: a known partner's "Name: " prefix names the speaker."""
        for name in sorted(self.others, key=len, reverse=True):
            if content.startswith(f"{name}: "):
                return name, content[len(name) + 2 :]
        return self.user, content


# --- what Ollama passes, and what twinlm renders for it --------------------------------------------


def collate(messages: Iterable[Mapping[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    """Ollama's own step before templating: (.System, .Messages).

    System texts are joined by a blank line; consecutive messages of one role (tool results
    aside) are merged with a blank line; system messages stay in the list.
    """
    system: list[str] = []
    out: list[dict[str, str]] = []
    for m in messages:
        role, content = str(m.get("role", "")), str(m.get("content") or "")
        if role == "system":
            system.append(content)
        if out and out[-1]["role"] == role and role != "tool":
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    return "\n\n".join(system), out


def reply_text(content: str) -> str:
    """The persona's turn text in an assistant message: one leading space taken off.

    A SentencePiece model's reply starts with the space of its first token ("▁Hello" after the
    prompt's "Max:"), and Ollama hands it back as " Hello"; training wrote "Max: Hello". Texts are
    stripped when a dataset is built, so a reply never starts with a space of its own.
    """
    return content[1:] if content.startswith(" ") else content


def conversation(messages: Iterable[Mapping[str, Any]], speakers: Speakers) -> Sample:
    """The twinlm chat an Ollama client's messages stand for (after Ollama's collate)."""
    system, collated = collate(messages)
    turns = []
    for m in collated:
        if m["role"] == "assistant":
            turns.append(Turn(speakers.persona, reply_text(m["content"]), False))
        elif m["role"] == "user":
            turns.append(Turn(*speakers.speaker_of(m["content"]), False))
    return Sample("ollama", "ollama:chat", "ollama", speakers.kind, tuple(turns), system or None)


def _adds_bos(tokenizer: Any) -> bool:
    return inspect_template(tokenizer).adds_bos


def prompt_text(sample: Sample, tokenizer: Any, speaker: str) -> str:
    """The text of `render_prompt(sample, tokenizer, speaker)`, as Ollama must render it.

    A BOS the tokenizer adds by itself is left out (the GGUF's add-BOS flag puts it back, and
    Ollama warns about a template that writes it too); the text ends where the first token of the
    speaker's text would start, so it tokenizes to exactly render_prompt's ids.
    """
    renderer = _Renderer(tokenizer, 0, None)
    turns = [replace(t, trained=False) for t in sample.turns]
    profile = renderer.profile
    if profile.style == "alternating" and not any(t.text.strip() for t in turns):
        raise TemplateError("this chat template needs at least one turn before the model speaks")
    probe = replace(sample, turns=(*turns, Turn(speaker, _PROBE_TEXT, True)))
    layout = renderer.layout(probe, speaker, count=False)
    if not layout.spans:
        raise TemplateError("the chat template renders nothing for this chat")
    (tokens,) = renderer.encode([layout])
    cut = renderer.first_token(tokens, layout.text, layout.spans[-1][0])
    text = layout.text[: tokens.offsets[cut][0]]
    if profile.adds_bos and profile.bos and text.startswith(profile.bos):
        text = text[len(profile.bos) :]
    return text


def prompt_ids(text: str, tokenizer: Any) -> list[int]:
    """The ids Ollama feeds for a rendered prompt: BOS where the tokenizer adds it, then the text."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return [tokenizer.bos_token_id, *ids] if _adds_bos(tokenizer) else ids
