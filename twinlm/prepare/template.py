"""What a tokenizer's chat template can do, found out by probing it: `inspect_template`.

Rendering needs to know three things about the base model's chat template: whether it writes any
role name ("named": ChatML, Llama 3), only user/assistant ("alternating": Mistral, Gemma; Qwen2.5
drops unknown roles) or whether there is none ("plain": a base model, rendered with
`PLAIN_TEMPLATE`); where a system prompt goes (`system_at`): a system message that survives a chat
ending with the assistant ("message"), the last user message ("last_user": Mistral v0.3 shows it
only there, "{system}\n\n{text}", as Mistral's own encoder does) or else the first user message
("first_user": Gemma raises on a system role); and which token ids are control tokens (they end
turns and must never come out of a message's text).

These are found by rendering small made-up chats with the template itself, never looked up in a
table of templates: a table goes stale with every new checkpoint, fine-tune or template revision,
while a probe answers for exactly the template and special tokens the tokenizer carries. The
answer is cached per tokenizer, template and special tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from weakref import WeakKeyDictionary

from jinja2.exceptions import TemplateError as JinjaTemplateError
from transformers.utils.chat_template_utils import render_jinja_template

from twinlm.errors import TwinError

Style = Literal["named", "alternating", "plain"]
# Where a chat's system prompt goes: its own message, or folded into the last / first user message.
SystemAt = Literal["message", "last_user", "first_user"]
FOLD_SEPARATOR = "\n\n"  # between a folded system prompt and the user message's text

# twinlm's named-speaker format for base models without a chat template.
PLAIN_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
    "{%- else -%}{{ message['role'] + ': ' + message['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
FIXED_DATE = "26 Jul 2024"  # Llama 3.x templates print today's date unless given one; builds are reproducible
_PROBE_ROLES = ("Zorblax Quint", "Quill Yarrow")  # made-up speakers


class TemplateError(TwinError):
    """The chat template cannot render twinlm's chats, or hides where a turn's text went."""


@dataclass(frozen=True)
class TemplateProfile:
    """What a tokenizer's chat template can do, probed once per tokenizer and template."""

    style: Style
    system: bool  # a system message survives a chat that ends with the assistant
    template: str
    variables: dict[str, Any]  # what apply_chat_template passes: special tokens (+ a fixed date)
    bos: str | None
    adds_bos: bool  # the tokenizer puts BOS in front by itself (add_special_tokens=True)
    special_ids: frozenset[int]  # control token ids: never inside a text, they end turns
    control: re.Pattern[str] | None  # their strings, made plain text inside messages
    system_at: SystemAt = "message"  # where a system prompt goes (see the module doc)
    system_separator: str = FOLD_SEPARATOR  # between a folded system prompt and the user's text
    control_starts: str = ""  # the first characters of the control tokens' strings (a quick test)
    # The template's output per chat shape, found as chats are rendered (twinlm.prepare.layout.Formats).
    formats: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


# --- probing ------------------------------------------------------------------------------------

_PROFILES: WeakKeyDictionary[Any, dict[str, TemplateProfile]] = WeakKeyDictionary()


def inspect_template(tokenizer: Any) -> TemplateProfile:
    """The tokenizer's template capabilities (cached per tokenizer, template and special tokens)."""
    per_tokenizer = _PROFILES.setdefault(tokenizer, {})
    key = f"{tokenizer.chat_template}\0{len(tokenizer)}\0{tokenizer.special_tokens_map}"
    if key not in per_tokenizer:
        per_tokenizer[key] = _probe(tokenizer)
    return per_tokenizer[key]


def detect_style(tokenizer: Any) -> Style:
    return inspect_template(tokenizer).style


def _probe(tokenizer: Any) -> TemplateProfile:
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    variables: dict[str, Any] = dict(tokenizer.special_tokens_map)  # as apply_chat_template passes
    if template and "date_string" in template:
        variables["date_string"] = FIXED_DATE
    # Control tokens: the special tokens, plus added tokens the template writes itself (some
    # checkpoints mark <|im_start|> or <end_of_turn> as ordinary added tokens).
    added = {
        i: t.content
        for i, t in tokenizer.added_tokens_decoder.items()
        if t.content.strip() and (t.special or t.content in (template or ""))
    }
    # <unk> is what a text becomes where the vocabulary has no piece: not a control token.
    special_ids = (frozenset(added) | frozenset(tokenizer.all_special_ids)) - {tokenizer.unk_token_id}
    control = set(added.values())
    adds_bos = False
    if tokenizer.bos_token is not None and tokenizer.bos_token_id is not None:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        adds_bos = bool(ids) and ids[0] == tokenizer.bos_token_id
    base = TemplateProfile(
        "plain",
        True,
        template or PLAIN_TEMPLATE,
        variables,
        tokenizer.bos_token,
        adds_bos,
        special_ids,
        re.compile("|".join(map(re.escape, sorted(control, key=len, reverse=True)))) if control else None,
        control_starts="".join(sorted({c[0] for c in control})),
    )
    if not template:
        if tokenizer.eos_token is None:
            raise TemplateError("the tokenizer has neither a chat template nor an eos token to end turns")
        return base

    def renders(chat: list[tuple[str, str]]) -> str:
        try:
            return apply_template(base, [{"role": r, "content": c} for r, c in chat])[0]
        except TemplateError:
            return ""

    # Named roles must work anywhere: first, back to back, not alternating with "user".
    one, two = _PROBE_ROLES
    named = renders([(one, "7301"), (two, "7302"), (one, "7303"), ("user", "7304")])
    if named.count(one) == 2 and named.count(two) == 1 and all(f"730{i}" in named for i in range(1, 5)):
        style: Style = "named"
    elif all(x in renders([("user", "7301"), ("assistant", "7302")]) for x in ("7301", "7302")):
        style, one = "alternating", "assistant"
    else:
        raise TemplateError(
            "the chat template renders neither named roles nor user/assistant turns; "
            "set a chat template on the tokenizer or use a base model"
        )
    system = "7399" in renders([("system", "7399"), ("user", "7301"), (one, "7302")])
    if system:
        return replace(base, style=style, system=True)
    # Shown at inference only, before the last user message ("[INST] {system}\n\n{text}[/INST]"):
    # training puts it there too, with the template's own separator, so the model learns the
    # prompt where every tool will show it. Else it is folded into the first user message.
    at: SystemAt = "first_user"
    separator = FOLD_SEPARATOR
    chat = [("user", "7301"), (one, "7302")]
    shown = renders([("system", "7399"), *chat, ("user", "7303")])
    if 0 <= shown.find("7399") < shown.find("7303"):
        between = shown[shown.index("7399") + 4 : shown.index("7303")]
        if renders([*chat, ("user", f"7399{between}7303")]) == shown:
            at, separator = "last_user", between
    return replace(base, style=style, system=False, system_at=at, system_separator=separator)


def apply_template(profile: TemplateProfile, *chats: list[dict[str, str]]) -> list[str]:
    try:
        rendered, _ = render_jinja_template(list(chats), chat_template=profile.template, **profile.variables)
    except JinjaTemplateError as err:
        raise TemplateError(f"the chat template refused the chat: {err}") from None
    return rendered
