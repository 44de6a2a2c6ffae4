"""The Go template of one persona, derived from twinlm's own rendering: `ollama_template`.

No table of model families: probe chats of every shape up to five turns, with marker texts (and
marker names and system prompt), are rendered by render.py (twinlm.export.ollama_chat.prompt_text);
the text between two markers is the template's literal text for that place, keyed by what a Go
template can see there (the previous role, whether it was the first turn, a system prompt, whether
this turn is in the last user message, the same speaker again). A turn whose marker is missing is
one the rendering leaves out. A key that maps to two texts is a template Ollama cannot reproduce (an
error, not a guess). The keys become an if / else-if tree over the features that matter, written as
Go text/template (built-in functions only) and mirrored in Python (`OllamaTemplate.render`); the
result is checked against render.py on real conversations (text, and token ids against
`render_prompt`) before anyone writes it.

Known limits, each a place where Go templates (no string functions) cannot follow render.py:
contents are written as they are (templates that trim surrounding whitespace see the same text only
when there is none), special-token text typed in a message is not neutralized, whitespace-only
messages are not skipped (empty ones are), and consecutive user messages reach the template already
merged by Ollama.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twinlm.export.ollama_chat import Speakers, collate, conversation, prompt_ids, prompt_text, reply_text
from twinlm.prepare.render import IGNORE_INDEX, TemplateError, inspect_template, render, render_prompt
from twinlm.prepare.sample import Sample, Turn

__all__ = ["OllamaTemplate", "ollama_template"]

_PROBE_TURNS = 5  # probe chats of every shape up to this many turns (a feature needs 5 to vary)


class _Slot:
    """A place in a template segment filled at render time (never equal to any literal text)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# The speaker's name, the system prompt; DROP: the rendering leaves this turn out.
NAME, SYSTEM, DROP = _Slot("NAME"), _Slot("SYSTEM"), _Slot("DROP")
Piece = str | _Slot
Segment = tuple[Piece, ...]
# Features of a place before a turn: the previous turn's role, whether the previous turn was the
# chat's first, a system prompt, whether this turn is in the last user message, same speaker again.
_FEATURES = ("prev", "prev_first", "system", "last_user", "same")


# --- deriving the template ---------------------------------------------------------------------------

_CONTENT = "\u27e6{}\u27e7"  # ⟦0⟧, ⟦1⟧...: marker texts no template writes by itself
_MARK_SYSTEM = "\u27e6s\u27e7"
_MARK_NAMES = {"u": "\u27e6u\u27e7", "v": "\u27e6v\u27e7"}  # two different partners


@dataclass(frozen=True)
class _Leaf:
    segment: Segment


@dataclass(frozen=True)
class _Branch:
    feature: str
    arms: tuple[tuple[Any, _Leaf | _Branch], ...]  # the last arm is the `else`


_Node = _Leaf | _Branch


def _probes(speakers: Speakers) -> Iterator[tuple[str, ...]]:
    alphabet = ("u", "a") if speakers.kind == "assistant" else ("u", "v", "a")
    for n in range(_PROBE_TURNS + 1):
        yield from itertools.product(alphabet, repeat=n)


def _segments(text: str, n: int) -> tuple[list[int], list[str]]:
    """(indices of the turns whose marker text is in `text`, the texts before, between and after them)."""
    out, present, pos = [], [], 0
    for i in range(n):
        mark = _CONTENT.format(i)
        count = text.count(mark)
        if count == 0:
            continue  # a turn the rendering leaves out (an assistant turn before any user turn)
        at = text.find(mark, pos)
        if at < 0 or count != 1:
            raise TemplateError("the chat template repeats or reorders message texts")
        present.append(i)
        out.append(text[pos:at])
        pos = at + len(mark)
    return present, [*out, text[pos:]]


def _pieces(segment: str, name_mark: str | None) -> Segment:
    marks = [_MARK_SYSTEM] + ([name_mark] if name_mark else [])
    parts = re.split("(" + "|".join(map(re.escape, marks)) + ")", segment)
    pieces = tuple(SYSTEM if p == _MARK_SYSTEM else NAME if p == name_mark else p for p in parts if p)
    if any("\u27e6" in p for p in pieces if not isinstance(p, _Slot)):
        raise TemplateError(
            "the chat template writes one turn's speaker or text where another turn is: "
            "no Ollama template can reproduce it"
        )
    return pieces


def _last_block(seq: Sequence[str], kept: Sequence[int]) -> int:
    """The index of the persona's last reply that a user turn follows (-1: none).

    Turns after it form the last user message (where Mistral v0.3 shows the system prompt). The
    chat's first turn never counts: alternating templates render a first persona turn as user text.
    """
    block = -1
    for p, j in enumerate(kept):
        if seq[j] == "a" and p > 0 and any(seq[k] != "a" for k in kept[p + 1 :]):
            block = j
    return block


def _table(tokenizer: Any, speakers: Speakers) -> dict[str, dict[tuple[Any, ...], Segment]]:
    """{"user" / "assistant" / "end": {features: the text before that turn (or the prompt's end)}}."""
    assistant = speakers.kind == "assistant"
    names = {"u": "user" if assistant else _MARK_NAMES["u"], "v": _MARK_NAMES["v"], "a": speakers.persona}
    tables: dict[str, dict[tuple[Any, ...], Segment]] = {"user": {}, "assistant": {}, "end": {}}
    for seq in _probes(speakers):
        for system in (False, True):
            turns = tuple(Turn(names[s], _CONTENT.format(i), False) for i, s in enumerate(seq))
            sample = Sample("probe", "ollama:probe", "ollama", speakers.kind, turns, _MARK_SYSTEM * system)
            try:
                text = prompt_text(sample, tokenizer, speakers.persona)
            except TemplateError:
                continue  # a chat training cannot render (an empty one): no text to match there
            kept, segments = _segments(text, len(seq))
            block = _last_block(seq, kept)
            prev, only_one, started = "", False, False
            parts = iter(segments)
            for k, cur in enumerate([*seq, "end"]):
                role = "end" if cur == "end" else "assistant" if cur == "a" else "user"
                key = (
                    "" if not prev else "assistant" if prev == "a" else "user",
                    only_one,
                    system,
                    k > block,
                    prev == (cur if cur != "end" else "a"),
                )
                if k < len(seq) and k not in kept:
                    pieces: Segment = (DROP,)
                else:
                    pieces = _pieces(next(parts), None if assistant or role != "user" else names[cur])
                    prev, only_one, started = cur, not started, True
                if tables[role].setdefault(key, pieces) != pieces:
                    raise TemplateError(
                        "the chat template's text between turns depends on more than an Ollama "
                        "template can see (previous role, first turn, system prompt, last user "
                        "message, same speaker)"
                    )
    return tables


def _tree(table: dict[tuple[Any, ...], Segment], features: tuple[str, ...]) -> _Node:
    """An if / else-if tree over the features that matter, each leaf one segment."""
    if len(set(table.values())) == 1:
        return _Leaf(next(iter(table.values())))
    for i in range(len(features)):  # drop a feature the segments never depend on
        groups: dict[tuple[Any, ...], set[Segment]] = {}
        for key, segment in table.items():
            groups.setdefault(key[:i] + key[i + 1 :], set()).add(segment)
        if all(len(s) == 1 for s in groups.values()):
            projected = {k: next(iter(s)) for k, s in groups.items()}
            return _tree(projected, features[:i] + features[i + 1 :])
    values = sorted({key[0] for key in table}, key=repr)
    subtrees = [(v, _tree({k[1:]: s for k, s in table.items() if k[0] == v}, features[1:])) for v in values]
    # The most common subtree is the `else`: arms that would repeat it are left out.
    counts = [sum(t == other for _, other in subtrees) for _, t in subtrees]
    default = subtrees[max(range(len(subtrees)), key=lambda i: (counts[i], i))][1]
    arms = tuple((v, t) for v, t in subtrees if t != default)
    if not arms:
        return default
    return _Branch(features[0], (*arms, (None, default)))


def _name_as_rendered(tokenizer: Any, speakers: Speakers, name: str, first: Segment) -> str:
    """How training writes `name` (render.py capitalizes role-like names, drops control text)."""
    if NAME not in first:
        return name
    text = prompt_text(
        Sample("probe", "ollama:probe", "ollama", "chat", (Turn(name, _CONTENT.format(0), False),)),
        tokenizer,
        speakers.persona,
    )
    pattern, group = "", False
    for p in first:
        if p is NAME:
            pattern += r"\1" if group else "(.+?)"
            group = True
        else:
            pattern += re.escape(p)
    match = re.fullmatch(pattern, _segments(text, 1)[1][0], re.S)
    if not match:
        raise TemplateError(f"the chat template writes the speaker name {name!r} differently from others")
    return match.group(1)


@dataclass(frozen=True)
class OllamaTemplate:
    """The Go template of one persona, its stop strings, and a Python twin of it for checking."""

    speakers: Speakers
    trees: dict[str, _Node]  # "user", "assistant", "end"
    names: dict[str, str]  # speaker -> the name training writes for it
    stops: tuple[str, ...]

    def render(self, messages: Iterable[Mapping[str, Any]]) -> str:
        """What Go's text/template renders from the TEMPLATE for these client messages."""
        system, msgs = collate(messages)
        block, seen, any_turn = -1, -1, False  # see _last_block
        for i, m in enumerate(msgs):
            if m["content"] and m["role"] == "assistant":
                seen, any_turn = (i if any_turn else seen), True
            elif m["content"] and m["role"] == "user":
                block, any_turn = seen, True
        out: list[str] = []
        prev, prev_name, started, only_one = "", "", False, False
        for i, m in enumerate(msgs):
            if m["role"] not in ("user", "assistant"):
                continue
            name, text = self._speaker(m)
            name = self.names.get(name, name)  # as the Go template holds it: the name training writes
            if not text:
                continue
            feats = {"prev": prev, "prev_first": only_one, "system": bool(system)}
            feats |= {"last_user": i > block, "same": name == prev_name}
            pieces = self._fill(self.trees[m["role"]], feats, system, name)
            if pieces is None:
                continue
            out += [*pieces, text]
            prev, prev_name, only_one, started = m["role"], name, not started, True
        feats = {"prev": prev, "prev_first": only_one, "system": bool(system), "last_user": True}
        feats["same"] = prev_name == self.speakers.persona
        out += self._fill(self.trees["end"], feats, system, self.speakers.persona) or []
        return "".join(out)

    def _speaker(self, m: Mapping[str, str]) -> tuple[str, str]:
        if m["role"] == "assistant":
            return self.speakers.persona, reply_text(m["content"])
        if self.speakers.kind == "assistant":
            return self.speakers.user, m["content"]
        return self.speakers.speaker_of(m["content"])

    @staticmethod
    def _fill(node: _Node, feats: Mapping[str, Any], system: str, name: str) -> list[str] | None:
        """The segment's text, None for a turn the rendering leaves out."""
        while isinstance(node, _Branch):
            node = next((n for v, n in node.arms[:-1] if feats[node.feature] == v), node.arms[-1][1])
        if DROP in node.segment:
            return None
        return [system if p is SYSTEM else name if p is NAME else p for p in node.segment]

    # --- Go ---

    def go(self) -> str:
        """The TEMPLATE text (Go text/template, only its built-in functions)."""
        s = self.speakers
        lines = [
            "{{- /* written by twinlm: the training rendering of " + _go_comment(s.persona) + " */ -}}",
            # $block: the persona's last reply that a user message follows (the first message never counts)
            "{{- $block := -1 }}{{ $seen := -1 }}{{ $any := false }}",
            "{{- range $i, $m := .Messages }}{{ if $m.Content }}",
            '{{- if eq $m.Role "assistant" }}{{ if $any }}{{ $seen = $i }}{{ end }}{{ $any = true }}',
            '{{- else if eq $m.Role "user" }}{{ $block = $seen }}{{ $any = true }}{{ end }}',
            "{{- end }}{{ end }}",
            '{{- $prev := "" }}{{ $prevName := "" }}{{ $started := false }}{{ $onlyOne := false }}',
            "{{- range $i, $m := .Messages }}",
            '{{- if or (eq $m.Role "user") (eq $m.Role "assistant") }}',
            f"{{{{- $name := {_go_string(s.persona)} }}}}{{{{ $text := $m.Content }}}}",
            # ollama_chat.reply_text: the space a SentencePiece model's reply starts with
            '{{- if eq $m.Role "assistant" }}{{ if ge (len $text) 1 }}{{ if eq (slice $text 0 1) " " }}'
            "{{ $text = slice $text 1 }}{{ end }}{{ end }}{{ end }}",
        ]
        lines.append(
            f'{{{{- if eq $m.Role "user" }}}}{{{{ $name = {_go_string(self.names.get(s.user, s.user))} }}}}'
        )
        if s.kind == "chat":
            lines.append("{{- $found := false }}")
            for name in sorted(s.others, key=len, reverse=True):
                prefix = f"{name}: "
                n = len(prefix.encode("utf-8"))
                lines.append(
                    f"{{{{- if not $found }}}}{{{{ if ge (len $text) {n} }}}}"
                    f"{{{{ if eq (slice $text 0 {n}) {_go_string(prefix)} }}}}"
                    f"{{{{ $name = {_go_string(self.names[name])} }}}}{{{{ $text = slice $text {n} }}}}"
                    "{{ $found = true }}{{ end }}{{ end }}{{ end }}"
                )
        lines.append("{{- end }}")
        lines.append("{{- if $text }}{{ $keep := true }}")
        lines.append('{{- if eq $m.Role "user" }}')
        lines += self._go_node(self.trees["user"], "loop")
        lines.append("{{- else }}")
        lines += self._go_node(self.trees["assistant"], "loop")
        lines.append("{{- end }}")
        lines.append(
            "{{- if $keep }}{{ $text }}{{ $prev = $m.Role }}{{ $prevName = $name }}"
            "{{ $onlyOne = not $started }}{{ $started = true }}{{ end }}"
        )
        lines += ["{{- end }}", "{{- end }}", "{{- end }}"]
        lines += self._go_node(self.trees["end"], "end")
        return "\n".join(lines)

    def _go_node(self, node: _Node, where: str) -> list[str]:
        if isinstance(node, _Leaf):
            if DROP in node.segment:
                return ["{{- $keep = false }}"]
            name = "$name" if where == "loop" else _go_string(self.speakers.persona)
            bodies = [
                "$.System" if p is SYSTEM else name if p is NAME else _go_string(p) for p in node.segment
            ]
            return (
                ["".join(("{{- " if k == 0 else "{{ ") + b + " }}" for k, b in enumerate(bodies))]
                if bodies
                else []
            )
        lines = []
        for k, (value, child) in enumerate(node.arms):
            if k == len(node.arms) - 1:
                lines.append("{{- else }}")
            else:
                cond = self._go_cond(node.feature, value, where)
                lines.append(f"{{{{- {'if' if k == 0 else 'else if'} {cond} }}}}")
            lines += self._go_node(child, where)
        lines.append("{{- end }}")
        return lines

    def _go_cond(self, feature: str, value: Any, where: str) -> str:
        if feature == "prev":
            return f"eq $prev {_go_string(value)}"
        if feature == "prev_first":
            return "$onlyOne" if value else "not $onlyOne"
        if feature == "system":
            return "$.System" if value else "not $.System"
        if feature == "last_user":
            if where == "end":
                return "true" if value else "false"
            return f"{'gt' if value else 'le'} $i $block"
        other = "$name" if where == "loop" else _go_string(self.speakers.persona)
        return f"{'eq' if value else 'ne'} $prevName {other}"


def _go_string(text: str) -> str:
    """A Go string literal in ASCII: Modelfile-safe (Ollama's parser drops unprintable characters)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _go_comment(text: str) -> str:
    return _go_string(text)[1:-1].replace("*/", "* /")


# --- building and checking --------------------------------------------------------------------------

_CHECK_TEXTS = (
    "hey, are you around tonight?",
    "Ça marche 😀 — à demain!",
    "two lines\nof text",
    "ok",
    'quotes " and {{ braces }} and \\ too',
)


def ollama_template(tokenizer: Any, speakers: Speakers) -> OllamaTemplate:
    """The Ollama template of `speakers.persona` for the chat template `tokenizer` trained with.

    Raises TemplateError where no Go template can reproduce the rendering, or where the result
    differs from render.py on any check conversation (text, and token ids against render_prompt).
    """
    tables = _table(tokenizer, speakers)
    trees = {role: _tree(table, _FEATURES) for role, table in tables.items() if table}
    trees.setdefault("end", _Leaf(()))
    first = tables["user"].get(("", False, False, True, False), ())
    names = {
        name: _name_as_rendered(tokenizer, speakers, name, first)
        for name in dict.fromkeys([speakers.user, *speakers.others])
    }
    template = OllamaTemplate(speakers, trees, names, ())
    template = replace(template, stops=_stops(tokenizer, speakers, tables, names))
    _verify(template, tokenizer)
    return template


def _stops(
    tokenizer: Any,
    speakers: Speakers,
    tables: dict[str, dict[tuple[Any, ...], Segment]],
    names: dict[str, str],
) -> tuple[str, ...]:
    """The end-of-turn token training taught, the control tokens that open the next turn, and on
    templates without such tokens (plain) the other speakers' "Name:" openers."""
    profile = inspect_template(tokenizer)
    found: list[str] = []
    turns = (Turn(speakers.user, "hey there", False), Turn(speakers.persona, "ok sure", True))
    (rendered,) = render(Sample("probe", "ollama:probe", "ollama", speakers.kind, turns), tokenizer, 1 << 30)
    last = max(i for i, label in enumerate(rendered.labels) if label != IGNORE_INDEX)
    eot = None
    if rendered.input_ids[last] in profile.special_ids:
        eot = tokenizer.convert_ids_to_tokens(rendered.input_ids[last])
        found.append(eot)
    for (prev, prev_first, *_), segment in tables["user"].items():
        if prev != "assistant" or prev_first:
            continue  # after a turn of the persona that was not the chat's first (then it is context)
        literal = "".join(p for p in segment if not isinstance(p, _Slot))
        found += profile.control.findall(literal) if profile.control else []
        if NAME in segment and speakers.kind == "chat":
            at = segment.index(NAME)
            before = "".join(p for p in segment[:at] if not isinstance(p, _Slot))
            if eot:
                before = before.replace(eot, "")
            if not (profile.control and profile.control.search(before)):  # no token opens a turn
                after = (
                    segment[at + 1]
                    if at + 1 < len(segment) and not isinstance(segment[at + 1], _Slot)
                    else ""
                )
                found += [(name + after).rstrip() for name in names.values()]
    if tokenizer.eos_token and tokenizer.eos_token_id in profile.special_ids:
        found.append(tokenizer.eos_token)
    return tuple(s for s in dict.fromkeys(found) if s.strip())


def _check_conversations(speakers: Speakers) -> Iterator[list[dict[str, str]]]:
    other = next((n for n in speakers.others if n != speakers.user), speakers.user)
    texts = itertools.cycle(_CHECK_TEXTS)
    system = speakers.system or "You are who you are."
    for n in range(1, 4):
        for seq in itertools.product("uva" if speakers.kind == "chat" else "ua", repeat=n):
            for with_system in (False, True):
                msgs = [{"role": "system", "content": system}] if with_system else []
                for s in seq:
                    text = next(texts)
                    role = "assistant" if s == "a" else "user"
                    msgs.append({"role": role, "content": f"{other}: {text}" if s == "v" else text})
                yield msgs
    # A longer chat, a system message mid-chat, and an empty message Ollama passes on.
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": next(texts)} for i in range(7)]
    yield [{"role": "system", "content": system}, *long]
    yield [*long[:2], {"role": "system", "content": "Stay brief."}, *long[2:5]]
    yield [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}, *long[:3]]


def _verify(template: OllamaTemplate, tokenizer: Any) -> None:
    persona = template.speakers.persona
    for messages in _check_conversations(template.speakers):
        sample = conversation(messages, template.speakers)
        try:
            want = prompt_text(sample, tokenizer, persona)
        except TemplateError:
            continue  # a chat training cannot render (only persona turns on some templates)
        got = template.render(messages)
        if got != want:
            at = next(
                (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                min(len(got), len(want)),
            )
            raise TemplateError(
                f"the Ollama template would render {got[at - 20 : at + 40]!r} where training has "
                f"{want[at - 20 : at + 40]!r}"
            )
        if prompt_ids(want, tokenizer) != render_prompt(sample, tokenizer, persona):
            raise TemplateError(
                "the prompt text does not tokenize to render_prompt's ids; this is a twinlm bug"
            )
