"""Personas: whose turns are trained, and the system prompt that tells the model who it is.

`persona_prompt` is the one function that writes the prompt, at build time and at chat time, from
the settings (`build.system_prompt`, `build.group_prompt`, `build.targets`), the template style
and the chat:

- one trained speaker (you, by default): "You are {name}, chatting with {others} on ...";
- several trained speakers on a template with named roles (ChatML, Llama 3, plain): one rendering
  trains all of them, so the group prompt names everyone and nobody as "you";
- several on a template with only user/assistant (Mistral, Gemma): each rendering plays one of them
  (twinlm.prepare.render) and gets that speaker's own "You are ..." prompt.

The templates are stored with the dataset (build.json), so chat time fills the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from twinlm.config import DEFAULT_GROUP_PROMPT, DEFAULT_SYSTEM_PROMPT, BuildConfig
from twinlm.identities import ME

if TYPE_CHECKING:
    from twinlm.prepare.clean import Msg
    from twinlm.prepare.template import Style

__all__ = [
    "DEFAULT_GROUP_PROMPT",
    "DEFAULT_SYSTEM_PROMPT",
    "PLATFORM_NAMES",
    "Persona",
    "TargetChoice",
    "persona_for",
    "persona_prompt",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

TargetChoice = Literal["auto", "me", "assistant", "everyone"] | list[str]

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

    def trains_someone_in(self, messages: Iterable[Msg]) -> bool:
        """Whether a trained speaker wrote one of `messages`. A session where none did trains nobody
        whatever its cleaning drops, so the build counts it as such before the session rules and
        redaction and runs neither (about half the sessions of a chat export: issue 18)."""
        trains = self.trains
        return any(trains(m.author, m.role) for m in messages)

    @property
    def several(self) -> bool:
        """Whether more than one speaker can be trained in a chat (a group persona)."""
        return not self.assistant and (self.everyone or len(self.names) > 1)


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


def persona_prompt(
    settings: BuildConfig,
    style: Style | str,
    *,
    speaker: str | None,
    participants: Iterable[str],
    platform: str,
    timestamp_ms: int | None,
) -> str:
    """The persona's system prompt for a chat (build and chat time alike).

    `style`: the chat template's style (twinlm.prepare.render.detect_style). `speaker`: the display
    name of the one speaker the model writes in this rendering (with a one-speaker persona, that
    speaker; on an alternating template, the one it plays); None where one rendering writes several
    (the group prompt). `participants`: display names of the chat's speakers (the speaker may be
    among them). `platform`: the source's format name. `timestamp_ms`: when the chat happens, in
    milliseconds since 1970 UTC (its first message at build time, now at chat time).
    """
    names = set(participants)
    date = _date(timestamp_ms)
    shown = PLATFORM_NAMES.get(platform, platform)
    # Unknown fields cannot reach here: the config refuses them when it is loaded.
    group = speaker is None or (style != "alternating" and persona_for("chat", settings.targets).several)
    if group:
        everyone = sorted(names | ({speaker} if speaker else set()))
        return settings.group_prompt.format(names=_join(everyone) or "someone", platform=shown, date=date)
    return settings.system_prompt.format(
        name=speaker, others=_join(sorted(names - {speaker})) or "someone", platform=shown, date=date
    )


def _date(timestamp_ms: int | None) -> str:
    """The UTC calendar day of a millisecond timestamp, as YYYY-MM-DD ("unknown" without one)."""
    if timestamp_ms is None:
        return "unknown"
    return _day(timestamp_ms // _MS_A_DAY)  # floor division: the day before 1970 for negative times


_MS_A_DAY = 86_400_000


@lru_cache(maxsize=4096)  # a build asks per sample, and a chat's sessions share their days
def _day(days: int) -> str:
    """The date `days` days after 1970-01-01, as YYYY-MM-DD."""
    return (_EPOCH + timedelta(days=days)).date().isoformat()


def _join(names: list[str]) -> str:
    if len(names) <= 2:
        return " and ".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]
