"""The hosted fine-tuned model as a twin for `twinlm chat --backend mistral-api`.

It offers what twinlm.serve.chat.ChatSession uses of twinlm.serve.twin.Twin (personas, persona,
partner, system_prompt, reply, close), with the chat sent as messages (twinlm.hosted.backend) instead of
prompt token ids. Its personas are the speakers whose replies the job learned (recorded in
runs/NAME/hosted.json); system prompts are filled from today's build settings (twin.yaml), as the build
filled them, with "chat" as the platform.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinlm.config import TwinConfig
from twinlm.errors import TwinError
from twinlm.hosted import job as hosted_job
from twinlm.hosted.backend import HostedGeneration, MistralAPIBackend, SamplingLike, conversation_messages
from twinlm.hosted.backend import open_hosted_backend as _open_backend
from twinlm.prepare.persona import persona_prompt

SOMEONE = "someone"
PLATFORM = "chat"


@dataclass
class HostedTwin:
    backend: MistralAPIBackend
    source: Path  # the hosted run folder
    personas: dict[str, str | None]
    me: str
    config: TwinConfig
    others: dict[str, list[str]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return (
            f"{self.backend.model} at the Mistral API (run {self.source.name}); your messages go there, "
            "and min_p and repetition_penalty do not apply"
        )

    def persona(self, name: str | None = None) -> str:
        if name is None:
            return self.me
        folded = {p.casefold(): p for p in self.personas}
        if name.casefold() in folded:
            return folded[name.casefold()]
        raise TwinError(f"no persona {name!r}; the personas are {', '.join(self.personas)}")

    def partner(self, persona: str) -> str:
        others = [n for n in self.others.get(persona, []) if n != persona]
        return others[0] if others else SOMEONE

    def system_prompt(self, persona: str, partners: Sequence[str] = ()) -> str | None:
        people = [p for p in dict.fromkeys(partners) if p != persona] or [self.partner(persona)]
        return persona_prompt(
            self.config.build,
            "alternating",
            speaker=persona,
            participants=[persona, *people],
            platform=PLATFORM,
            timestamp_ms=int(time.time() * 1000),
        )

    def prompt(
        self,
        persona: str,
        turns: Sequence[tuple[str, str]],
        *,
        system: str | None = None,
        max_new_tokens: int = 0,
    ) -> list[Any]:
        """The hosted model's prompt is the chat as messages (Mistral renders and tokenizes it on its side):
        what the server hands to MistralAPIBackend.generate in place of token ids. The API refuses a chat
        longer than the model's window itself (no local trimming: the tokenizer is theirs)."""
        return self.messages(persona, turns, system)

    def prompt_from_messages(
        self, persona: str, messages: Sequence[Mapping[str, Any]], *, max_new_tokens: int
    ) -> list[Any]:
        """OpenAI-style messages (twinlm serve's requests) -> the hosted prompt, read as
        twinlm.serve.twin.Twin reads them (who a user message is, system messages, the assistant's
        turns): Twin's own method, run on this twin (it uses only persona, partner, others and prompt)."""
        from twinlm.serve.twin import Twin

        return Twin.prompt_from_messages(self, persona, messages, max_new_tokens=max_new_tokens)  # type: ignore[arg-type]

    def messages(
        self, persona: str, turns: Sequence[tuple[str, str]], system: str | None = None
    ) -> list[dict[str, str]]:
        persona = self.persona(persona)
        if system is None:
            system = self.system_prompt(persona, [who for who, _ in turns])
        return conversation_messages(self.config.build, persona, turns, system=system, platform=PLATFORM)

    def reply(
        self,
        persona: str,
        turns: Sequence[tuple[str, str]],
        *,
        sampling: SamplingLike,
        system: str | None = None,
        cancel: threading.Event | None = None,
    ) -> HostedGeneration:
        return self.backend.generate_messages(self.messages(persona, turns, system), sampling, cancel)

    def worker(self) -> MistralAPIBackend:
        """One more backend for a server worker (same model and connection: the client is thread-safe)."""
        return MistralAPIBackend(self.backend.api, self.backend.model)

    def close(self) -> None:
        pass


def open_hosted_twin(workspace: Path, config: TwinConfig, name: str | None = None) -> HostedTwin:
    """The twin of the named hosted run (the latest if none)."""
    run = hosted_job.find_hosted_run(workspace, name)
    record = hosted_job.read_record(run)
    backend = _open_backend(workspace, config.hosted, run.name)
    personas = [str(p) for p in record.get("personas") or []]
    if not personas:
        raise TwinError(f"{run / hosted_job.RECORD}: no personas recorded; train the hosted run again")
    partners = [str(p) for p in record.get("partners") or []]
    return HostedTwin(
        backend=backend,
        source=run,
        personas=dict.fromkeys(personas),
        me=personas[0],
        config=config,
        others={p: partners for p in personas},
        provenance={"hosted": record},
    )
