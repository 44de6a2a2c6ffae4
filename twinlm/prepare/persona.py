"""Personas: whose turns are trained, and the system prompt that tells the model who it is.

The prompt comes from one template with a few fields (the name, the other participants, the
platform, the date); it is stored with the dataset, and chat time fills the same template.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from twinlm.identities import ME

TargetChoice = Literal["auto", "me", "assistant", "everyone"] | list[str]

DEFAULT_SYSTEM_PROMPT = "You are {name}, chatting with {others} on {platform}. Today is {date}."
TEMPLATE_FIELDS = ("name", "others", "platform", "date")

# How each source is named in a prompt (the format names are lowercase identifiers).
PLATFORM_NAMES = {
    "discord": "Discord",
    "telegram": "Telegram",
    "whatsapp": "WhatsApp",
    "messenger": "Messenger",
    "chatgpt": "ChatGPT",
    "jsonl": "a chat",
    "documents": "documents",
}


@dataclass(frozen=True, slots=True)
class Persona:
    """Who the model learns to be in one kind of conversation."""

    everyone: bool  # every speaker's turns are trained (the model can play any regular)
    names: frozenset[str]  # trained speakers (resolved names; ME for the user) when not everyone
    assistant: bool  # assistant-style conversations: the assistant role is trained

    def trains(self, speaker: str, role: str) -> bool:
        if self.assistant:
            return role == "assistant"
        return self.everyone or speaker in self.names


def persona_for(kind: str, targets: TargetChoice) -> Persona:
    """The persona for a conversation kind ("chat", "assistant", "dataset") and the configured targets."""
    assistant_style = kind in ("assistant", "dataset")
    if targets == "auto":
        return Persona(False, frozenset({ME}), assistant_style)
    if targets == "assistant":
        return Persona(False, frozenset(), True)
    if targets == "everyone":
        return Persona(True, frozenset(), False)
    if targets == "me":
        return Persona(False, frozenset({ME}), False)
    return Persona(False, frozenset(targets), False)


def system_prompt(template: str, name: str, others: Iterable[str], platform: str, date: str) -> str:
    """Fill the persona template. Unknown fields are a config error caught at load time."""
    other_names = sorted(set(others) - {name})
    return template.format(
        name=name,
        others=_join(other_names) or "someone",
        platform=PLATFORM_NAMES.get(platform, platform),
        date=date,
    )


def _join(names: list[str]) -> str:
    if len(names) <= 2:
        return " and ".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]
