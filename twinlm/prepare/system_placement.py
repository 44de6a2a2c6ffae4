"""Where a chat's system prompt goes, given where the chat template shows one (`SystemAt`).

- "message": its own system message, first (ChatML, Llama 3, Qwen2.5, Mistral v0.2).
- "last_user": folded into the user message right before the LAST trained turn, as
  "{system}{separator}{text}" (Mistral v0.3: its template shows the system prompt only before the
  last user message, so at inference it is always there). This is where Mistral's own encoder puts
  it in training (mistral_common's `encode_instruct`, InstructTokenizerV2/V3: the last user message
  of the request gets `system_prompt + "\\n\\n"`, which mistral-finetune uses): identical for a chat
  that ends with the assistant. Where context turns follow the last trained turn (they carry no
  label), the prompt stays before the user message that leads to that trained turn, which is where
  chat time shows it when the model writes that turn; mistral_common would put it after it, where
  no trained token sees it.
- "first_user": folded into the first user message (Gemma 2 refuses a system role; a template
  that drops it everywhere): twinlm's own convention, "{system}\\n\\n{text}".

Without a user message at all (chats between people on a named template with a folding template),
the first message gets it.
"""

from __future__ import annotations

from collections.abc import Sequence

from twinlm.prepare.template import SystemAt

__all__ = ["system_target"]


def system_target(roles: Sequence[str], trained: Sequence[bool], at: SystemAt) -> int | None:
    """The index of the message that gets the system prompt folded in, or None for its own message.

    `roles`: each message's role; `trained`: whether the message holds a trained turn.
    """
    if at == "message" or not roles:
        return None
    users = [i for i, role in enumerate(roles) if role == "user"]
    if not users:
        return 0
    if at == "first_user":
        return users[0]
    last_trained = max((i for i, t in enumerate(trained) if t), default=len(roles))
    before = [i for i in users if i < last_trained]
    return before[-1] if before else users[-1]
