"""Where each turn's text lies in the rendered chat: the template's text and every text's span.

`locate` is the reference: it renders the chat with the model's chat template twice, once as it is
and once with each text replaced by a private-use sentinel; the sentinel rendering splits into the
template's own segments, and each text's span is what lies between them in the real rendering
(trimmed texts are found too).

`Formats` is the fast path of a build, which renders the same few layouts hundreds of thousands of
times (issue 18: the Jinja rendering was a sixth of a build). A template's output depends on the
chat's shape, the messages' roles in order (names only by which are the same), and on the contents,
which templates copy whole or trimmed. So each shape is rendered once with placeholders for names
and contents (contents padded with whitespace, to see whether the template trims them), which gives
the literal pieces between them; a chat of that shape is then its pieces, names and contents joined,
with no Jinja. A shape's format is used only once it gave exactly `locate`'s layout (text and spans)
for the chat that first had that shape, and the template's own text for a probe chat of hard names
and contents (whitespace around, lower and upper case, HTML and Jinja characters, a line break);
otherwise that shape always goes through `locate`. What no probe can show, a template whose output
depends on what a text says (a substring test), is checked only on each shape's first chat.
"""

from __future__ import annotations

import re
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from twinlm.prepare.template import TemplateError, TemplateProfile, apply_template

SENTINEL0 = 0x100000  # Supplementary Private Use Area-B: one sentinel per turn
SENTINELS = re.compile("[\U00100000-\U0010fffd]")
_NAME0 = 0xF0000  # Supplementary Private Use Area-A: one placeholder per distinct name
_PLACEHOLDERS = re.compile("[\U000f0000-\U000ffffd\U00100000-\U0010fffd]")
_PAD = " \u3000\t"  # whitespace around a content placeholder: kept or trimmed by the template
_LITERAL_ROLES = frozenset({"system", "user", "assistant"})  # roles templates test for: kept as they are
_MAX_SHAPES = 8192  # formats kept per template (a group chat's shapes are many): the oldest go first
_UNSEEN: Any = object()


@dataclass(slots=True)
class Part:
    """One turn inside a message: a context prefix ("Name: "), then the turn's text."""

    prefix: str
    text: str
    trained: bool
    speaker: str


@dataclass(slots=True)
class Message:
    role: str
    parts: list[Part]
    lead: str = ""  # a folded system prompt, before the first part

    def content(self, texts: list[str] | None = None) -> str:
        """The message text; `texts` stands in for the parts' texts (sentinels)."""
        pieces = [p.prefix + (p.text if texts is None else texts[i]) for i, p in enumerate(self.parts)]
        return self.lead + "\n".join(pieces)


@dataclass(slots=True)
class Layout:
    text: str
    spans: list[tuple[int, int]]  # per part: the character span of its text
    trained: list[bool]
    turns: list[int]  # per part: the index of its turn in the sample
    add_bos: bool = False  # put the tokenizer's BOS id in front after tokenizing
    lead: str = ""  # a system prompt folded into a later user message (Mistral v0.3) ...
    lead_part: int = 0  # ... before this part's text


def _adds_bos(profile: TemplateProfile, text: str) -> bool:
    # The tokenizer's own BOS where the template wrote none: an id in front, not text, so that
    # SentencePiece still sees the first word at offset 0 ("<s>▁You" as in pretraining).
    return profile.adds_bos and bool(profile.bos) and not text.startswith(profile.bos or "")


def locate(profile: TemplateProfile, messages: list[Message], turns: list[int], sample_id: str) -> Layout:
    """The layout of `messages` through the template itself (the reference the fast path is checked on)."""
    sentinels: list[str] = []
    real: list[dict[str, str]] = []
    marked: list[dict[str, str]] = []
    parts: list[Part] = []
    lead, lead_part = "", 0
    if sum(len(m.parts) for m in messages) > 0xFFFD:
        raise TemplateError(f"sample {sample_id}: more than 65533 turns; split sessions before rendering")
    for m in messages:
        if m.lead and m.parts and parts:
            lead, lead_part = m.lead, len(parts)
        marks = [chr(SENTINEL0 + len(sentinels) + i) for i in range(len(m.parts))]
        sentinels += marks
        parts += m.parts
        real.append({"role": m.role, "content": m.content()})
        marked.append({"role": m.role, "content": m.content(marks)})
    try:
        skeleton, text = apply_template(profile, marked, real)
    except TemplateError as err:
        raise TemplateError(f"sample {sample_id}: {err}") from None
    if SENTINELS.findall(skeleton) != sentinels:
        raise TemplateError(
            f"sample {sample_id}: the chat template drops, repeats or reorders message texts, "
            "so the trained tokens cannot be located"
        )
    segments = SENTINELS.split(skeleton)
    if not text.startswith(segments[0]):
        raise TemplateError(f"sample {sample_id}: the chat template's structure depends on the texts")
    spans: list[tuple[int, int]] = []
    pos = len(segments[0])
    for k, part in enumerate(parts):
        after, last = segments[k + 1], k == len(parts) - 1
        for cand in (part.text, part.text.rstrip(), part.text.lstrip(), part.text.strip()):  # trimmed?
            end = pos + len(cand)
            if text.startswith(cand, pos) and (text[end:] == after if last else text.startswith(after, end)):
                break
        else:  # transformed some other way (upper-cased...): the text is what lies in between
            end = len(text) - len(after) if last else text.find(after, pos)
            if end < pos or not text.startswith(after, end):
                raise TemplateError(
                    f"sample {sample_id}: the chat template changes turn {turns[k]} beyond recognition"
                )
        spans.append((pos, end))
        pos = end + len(after)
    return Layout(text, spans, [p.trained for p in parts], turns, _adds_bos(profile, text), lead, lead_part)


@dataclass(frozen=True, slots=True)
class _Format:
    """A shape's rendering: pieces[k] is the literal text before slot k; the last piece ends the chat."""

    pieces: tuple[str, ...]
    # (is a content, message or name index, trimmed on the left, trimmed on the right)
    slots: tuple[tuple[bool, int, bool, bool], ...]


def _fill(
    profile: TemplateProfile, fmt: _Format, messages: list[Message], names: list[str], turns: list[int]
) -> Layout:
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    trained: list[bool] = []
    pos, before, lead, lead_part = 0, 0, "", 0
    for piece, (is_content, index, left, right) in zip(fmt.pieces, fmt.slots, strict=False):
        out.append(piece)
        pos += len(piece)
        if not is_content:
            out.append(names[index])
            pos += len(names[index])
            continue
        m = messages[index]
        parts = m.parts
        if len(parts) == 1 and not m.lead:  # most messages: one turn, no system prompt folded in
            p = parts[0]
            content = p.prefix + p.text if p.prefix else p.text
            if not (left or right):  # copied whole: no trimming to account for
                out.append(content)
                a = pos + len(p.prefix)
                spans.append((a, a + len(p.text)))
                trained.append(p.trained)
                before += 1
                pos += len(content)
                continue
        else:
            content = m.content()
        cut = len(content) - len(content.lstrip()) if left else 0
        end = len(content.rstrip()) if right else len(content)
        out.append(content[cut:end])
        if m.lead and parts and before:
            lead, lead_part = m.lead, before
        a = len(m.lead)
        for p in parts:
            a += len(p.prefix)
            b = a + len(p.text)
            spans.append((pos + max(a, cut) - cut, pos + min(b, end) - cut))
            trained.append(p.trained)
            a = b + 1  # the newline between merged turns
        before += len(parts)
        pos += end - cut
    out.append(fmt.pieces[-1])
    text = "".join(out)
    return Layout(text, spans, trained, turns, _adds_bos(profile, text), lead, lead_part)


def _parse(out: str, n: int, n_names: int) -> _Format | None:
    """The format in a placeholder rendering; None unless each content is copied once, in order."""
    pieces: list[str] = []
    slots: list[tuple[bool, int, bool, bool]] = []
    pos, contents = 0, 0
    for match in _PLACEHOLDERS.finditer(out):
        start, end = match.span()
        code = ord(match.group())
        if code < SENTINEL0:
            if code - _NAME0 >= n_names:
                return None
            slots.append((False, code - _NAME0, False, False))
        else:
            if code - SENTINEL0 != contents:
                return None
            contents += 1
            left = start - len(_PAD) >= pos and out.startswith(_PAD, start - len(_PAD))
            right = out.startswith(_PAD, end)
            start, end = start - len(_PAD) * left, end + len(_PAD) * right
            slots.append((True, code - SENTINEL0, not left, not right))
        pieces.append(out[pos:start])
        pos = end
    if contents != n:
        return None
    pieces.append(out[pos:])
    return _Format(tuple(pieces), tuple(slots))


# Hard names and contents for the probes: a template that trims, changes case, escapes or reformats
# them shows it on one of these (a name cannot both start with a lower-case letter and with a space).
_PROBE_NAMES = ("zq{k} Ab<i>&'\"{{{{ ", " \tZq{k} aB\n")
_PROBE_TEXTS = (" \n y{m}Ab <b>&amp;'\"{{{{x}}}}{{% \n ", "Y{m} aB\t")


def _probes(shape: tuple[str | int, ...]) -> list[tuple[list[Message], list[str]]]:
    """Chats of `shape` with hard names and contents: a template that changes them shows it here."""
    found = []
    for name, text in zip(_PROBE_NAMES, _PROBE_TEXTS, strict=True):
        names = [name.format(k=k) for k in range(sum(isinstance(r, int) for r in set(shape)))]
        messages = [
            Message(role if isinstance(role, str) else names[role], [Part("", text.format(m=m), False, "")])
            for m, role in enumerate(shape)
        ]
        found.append((messages, names))
    return found


# Chats where some people speak twice or more, to see whether a template treats a repeated name apart.
_NAME_PATTERNS: tuple[tuple[str | int, ...], ...] = (
    (0, 1, 0, 0, 2, 1),
    ("system", 0, 0, 1, 0),
    ("system", 0, 1, 2, 2),
    (0, 0),
)
_ALIKE_NAMES = ("Ann Lee", "bo", "Cy D")


class Formats:
    """Layouts of chats through per-shape formats (see the module doc), kept on the template's profile."""

    def __init__(self, profile: TemplateProfile) -> None:
        self.profile = profile
        self.state = profile.formats  # {"shapes": {shape: format or None}, "names": whether names matter}
        self.shapes: dict[tuple[str | int, ...], _Format | None] = self.state.setdefault("shapes", {})

    def layout(self, messages: list[Message], turns: list[int], sample_id: str) -> Layout:
        names = [m.role for m in messages if m.role not in _LITERAL_ROLES]
        if names and self._names_alike():
            # A name slot per named message: chats whose people speak in another order share the shape.
            count = iter(range(len(names)))
            shape = tuple(m.role if m.role in _LITERAL_ROLES else next(count) for m in messages)
        else:
            index: dict[str, int] = {}
            shape = tuple(
                m.role if m.role in _LITERAL_ROLES else index.setdefault(m.role, len(index)) for m in messages
            )
            names = list(index)
        fmt = self.shapes.get(shape, _UNSEEN)
        if fmt is _UNSEEN:
            found = locate(self.profile, messages, turns, sample_id)  # raises as the template does
            self._learn(shape, messages, names, turns, found)
            return found
        if fmt is None:
            return locate(self.profile, messages, turns, sample_id)
        return _fill(self.profile, fmt, messages, names, turns)

    def _names_alike(self) -> bool:
        """Whether the template renders a named message the same whoever else shares its name: a format
        learnt with a name per message, filled with repeated names, gives the template's own text."""
        alike = self.state.get("names alike")
        if alike is None:
            alike = all(self._alike(pattern) for pattern in _NAME_PATTERNS)
            self.state["names alike"] = alike
        return bool(alike)

    def _alike(self, pattern: tuple[str | int, ...]) -> bool:
        slots = [r for r in pattern if isinstance(r, int)]
        distinct: list[str | int] = []
        k = 0
        for r in pattern:
            distinct.append(r if isinstance(r, str) else k)
            k += not isinstance(r, str)
        names = [_ALIKE_NAMES[r] for r in slots]
        messages = [
            Message(r if isinstance(r, str) else _ALIKE_NAMES[r], [Part("", f"text {m}", False, "")])
            for m, r in enumerate(pattern)
        ]
        chat = [
            {
                "role": r if isinstance(r, str) else chr(_NAME0 + r),
                "content": _PAD + chr(SENTINEL0 + m) + _PAD,
            }
            for m, r in enumerate(distinct)
        ]
        try:
            out, real = apply_template(
                self.profile, chat, [{"role": m.role, "content": m.content()} for m in messages]
            )
        except TemplateError:
            return False
        fmt = _parse(out, len(distinct), len(names))
        return (
            fmt is not None
            and _fill(self.profile, fmt, messages, names, list(range(len(messages)))).text == real
        )

    def _learn(
        self,
        shape: tuple[str | int, ...],
        messages: list[Message],
        names: list[str],
        turns: list[int],
        found: Layout,
    ) -> None:
        chat = [
            {
                "role": role if isinstance(role, str) else chr(_NAME0 + role),
                "content": _PAD + chr(SENTINEL0 + m) + _PAD,
            }
            for m, role in enumerate(shape)
        ]
        probes = _probes(shape)
        chats = [[{"role": m.role, "content": m.content()} for m in probe] for probe, _ in probes]
        try:
            out, *probed = apply_template(self.profile, chat, *chats)
        except TemplateError:
            fmt = None
        else:
            fmt = _parse(out, len(shape), len(probes[0][1]))
        if fmt is not None and (
            _fill(self.profile, fmt, messages, names, turns) != found
            or any(
                _fill(self.profile, fmt, probe, probe_names, list(range(len(probe)))).text != text
                for (probe, probe_names), text in zip(probes, probed, strict=True)
            )
        ):
            fmt = None
        if len(self.shapes) >= _MAX_SHAPES:
            # The oldest out; another thread (serve's workers share a profile) may have taken it already.
            with suppress(RuntimeError, StopIteration):
                self.shapes.pop(next(iter(self.shapes)), None)
        self.shapes[shape] = fmt
