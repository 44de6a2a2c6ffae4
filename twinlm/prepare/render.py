"""The one rendering function: a `Sample` becomes token ids and exact labels, for training and chat.

The rendering rules (an exported template, e.g. an Ollama Modelfile, must reproduce them byte for
byte; the messages below go through the model's own chat template, as apply_chat_template does):

1. Assistant-style samples (kinds "assistant": ChatGPT exports, "dataset": imported sets) are the
   template's own conversation, the way the base model was instruct-tuned: the trained speaker's
   turns are role "assistant", everyone else's "user", with no names anywhere and no "Name: "
   prefix (only where several speakers share the user side, role-play sets, does each user turn
   start "Name: "). So the text equals apply_chat_template of the plain user/assistant(/system)
   messages. Alternating templates merge consecutive user turns (newline-joined) and leave out an
   assistant turn before the first user turn (counted); named templates keep it, untrained.
2. Chats between people, by the template's probed style (twinlm.prepare.template):
   - "named" (ChatML, Llama 3): each speaker's name is the role.
   - "alternating" (Mistral, Gemma; Qwen2.5 drops unknown roles): the played speaker is
     `assistant`, everyone else `user` (consecutive turns merged, newline-joined); each turn starts
     "Name: ", context that chat time prefills. A session with several trained speakers is
     rendered once per speaker, each rendering with that speaker's own system prompt where the
     caller gives one (`system_for`).
3. "plain": no template (a base model): `PLAIN_TEMPLATE`, "{speaker}: {text}{eos}", same Jinja
   path, for both kinds.
4. The system prompt, for both kinds, goes where the template shows it at inference (probed,
   `TemplateProfile.system_at`; twinlm.prepare.system_placement): its own first message where it
   survives a chat ending with the assistant ("message"); else "{system}{sep}" (sep "\n\n" for
   Mistral) in front of the user message right before the LAST trained turn where the template
   shows it before the last user message ("last_user": Mistral v0.3, as mistral_common's
   `encode_instruct` places it; at chat time that is the last user message); else "{system}\n\n"
   in front of the first user message ("first_user": Gemma 2 raises on a system role).
5. The first turn is always context. A person is never rendered as a role the template gives a
   meaning: a speaker called "system", "tool" (or, in a chat between people, "user" or
   "assistant") is written capitalized ("System"), so that a Discord user named "system" never
   gives the model instructions.

Labels are exactly the trained turns' text tokens plus the end-of-turn token the template writes
after them (</s>, <|im_end|>, <|eot_id|>, <end_of_turn>, eos for plain), found with no per-family
code: rendered once with each text replaced by a private-use sentinel, the output splits into
template segments; the real rendering is those segments with the (maybe trimmed) texts between, so
each text's character span is known and the tokens over it (offsets of one tokenization with
add_special_tokens=False; for a byte-level BPE, its tokens' byte lengths added up, which are the same
offsets: twinlm.prepare.tokens) are labelled. Labels are explicit: an end-of-turn id equal to the pad id
stays trained. BOS is written by the template where the family has one; where the tokenizer adds
BOS itself and the template did not, its id is put in front once.

Special-token text inside a message (a user typing "<|im_end|>") must never become a control token
(prompt injection into training data and chats): special-token strings in texts, names and the
system prompt get an invisible WORD JOINER (U+2060) after their first character.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from twinlm.prepare.layout import SENTINELS, Formats, Layout, Message, Part
from twinlm.prepare.sample import IGNORE_INDEX, Sample, Turn
from twinlm.prepare.system_placement import system_target
from twinlm.prepare.template import (
    FIXED_DATE,
    FOLD_SEPARATOR,
    PLAIN_TEMPLATE,
    Style,
    SystemAt,
    TemplateError,
    TemplateProfile,
    detect_style,
    inspect_template,
)
from twinlm.prepare.tokens import Tokens, byte_lengths, byte_offsets

__all__ = [
    "FIXED_DATE",
    "IGNORE_INDEX",
    "PLAIN_TEMPLATE",
    "WORD_JOINER",
    "Rendered",
    "Row",
    "Style",
    "SystemAt",
    "SystemFor",
    "TemplateError",
    "TemplateProfile",
    "detect_style",
    "inspect_template",
    "render",
    "render_arrays",
    "render_many",
    "render_prompt",
    "to_messages",
]

WORD_JOINER = "\u2060"
_PROBE_TEXT = "Hello"  # a typical first word: where the model starts writing at chat time
_RESERVED_ROLES = frozenset({"system", "tool", "ipython", "tool_results", "developer"})
# In chats between people, the chat roles too: only assistant-style samples use them as roles.
_RESERVED_IN_CHATS = _RESERVED_ROLES | {"user", "assistant"}
_ROLE_KINDS = ("assistant", "dataset")  # sample kinds whose speakers are the roles user/assistant

# The system prompt of one rendering that plays `speaker` (a display name) on an alternating template.
SystemFor = Callable[[Sample, str], str | None]
_EOT_LOOKAHEAD = 4  # whitespace tokens allowed between a text and its end-of-turn token


@dataclass(frozen=True, slots=True)
class Rendered:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where not trained, else the token id
    text: str  # the rendered chat (BOS included when it was added)
    sample_id: str = ""
    window: int = 0  # 0, 1, ...: several when the sample was split or rendered per speaker
    trained_turns: tuple[int, ...] = ()  # the sample's turns this row trains (`twinlm show`'s pieces)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True, slots=True)
class Row:
    """A rendered row as the build writes it (`render_arrays`): int32 arrays."""

    sample_id: str
    input_ids: np.ndarray
    labels: np.ndarray  # IGNORE_INDEX where not trained
    trained_tokens: int
    runs: list[int]  # the lengths of the runs of trained labels, in order (whose.Tally counts them)


# --- messages -----------------------------------------------------------------------------------


def _neutralize(text: str, control: re.Pattern[str] | None, starts: str = "") -> tuple[str, int]:
    """Special-token strings typed in a message become plain text; stray sentinels are dropped.

    `starts`: the control strings' first characters, where the caller knows them: a text with none
    of them needs no search for the strings themselves (nearly every text)."""
    if SENTINELS.search(text):
        text = SENTINELS.sub("", text)
    if control is None or (starts and not any(c in text for c in starts)):
        return text, 0
    return control.subn(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], text)


@lru_cache(maxsize=1 << 14)  # names repeat in every sample of a chat
def _clean_name(
    name: str, control: re.Pattern[str] | None, reserved: frozenset[str] = _RESERVED_ROLES
) -> str:
    """A name usable as a role: one line, no control tokens, never a reserved role like system."""
    name = " ".join(_neutralize(name, control)[0].split()) or "someone"
    return name[0].upper() + name[1:] if name.lower() in reserved else name


def _add(counts: Counter[str], reason: str, n: int) -> None:
    if n:  # a Counter entry only for what happened
        counts[reason] += n


def _build(
    sample: Sample,
    style: Style,
    system_at: SystemAt,
    assistant: str | None,
    control: re.Pattern[str] | None = None,
    counts: Counter[str] | None = None,
    separator: str = FOLD_SEPARATOR,
    starts: str = "",
) -> tuple[list[Message], list[int]]:
    """The messages, and for each part (in order) the index of its turn in the sample."""
    counts = counts if counts is not None else Counter()
    messages: list[Message] = []
    turn_of_part: list[int] = []
    reserved = _RESERVED_ROLES if sample.kind in _ROLE_KINDS else _RESERVED_IN_CHATS
    # Assistant-style samples on a chat template: the template's own user/assistant chat, no names.
    # Their assistant: the one played, else the one trained speaker (several: rendered as people).
    as_roles = sample.kind in _ROLE_KINDS and style != "plain"
    if as_roles and assistant is None:
        trained_speakers = {t.speaker for t in sample.turns[1:] if t.trained and t.text.strip()}
        assistant = next(iter(trained_speakers)) if len(trained_speakers) == 1 else None
    if assistant is not None:
        assistant = _clean_name(assistant, control, reserved)
    as_roles = as_roles and assistant is not None
    # Names only where the role does not tell who spoke: several speakers on the user side.
    say_who = (
        as_roles and len({_clean_name(t.speaker, control, reserved) for t in sample.turns} - {assistant}) > 1
    )
    for index, turn in enumerate(sample.turns):
        text, n = _neutralize(turn.text, control, starts)
        if not text.strip():
            counts["empty turns skipped"] += 1
            continue
        speaker = _clean_name(turn.speaker, control, reserved)
        first = not messages
        if as_roles:
            role = "assistant" if speaker == assistant else "user"
            if first and role == "assistant" and style == "alternating":  # the template starts with a user
                counts["assistant turns before the first user turn left out"] += 1
                continue
            named = say_who and role == "user" and speaker != "user"
        elif style == "alternating":
            role = "assistant" if speaker == assistant and not first else "user"
            named = speaker != role
        else:
            role, named = speaker, False
        _add(counts, "special-token text made plain", n)
        _add(counts, "first turn trained but rendered as context", turn.trained and first)
        turn_of_part.append(index)
        trained = turn.trained and not first and (role == "assistant" or style != "alternating")
        last = messages[-1] if messages else None
        if style == "alternating" and last is not None and last.role == role:
            # Merged: the name only where the author changes.
            prefix = f"{speaker}: " if named and last.parts[-1].speaker != speaker else ""
            last.parts.append(Part(prefix, text, trained, speaker))
        else:
            messages.append(Message(role, [Part(f"{speaker}: " if named else "", text, trained, speaker)]))
    system_text, n = _neutralize(sample.system or "", control, starts)
    if system_text.strip() and messages:  # a system prompt alone is no chat
        _add(counts, "special-token text made plain", n)
        target = (
            None
            if system_at == "message"  # the common case, without the lists system_target reads
            else system_target(
                [m.role for m in messages], [any(p.trained for p in m.parts) for m in messages], system_at
            )
        )
        if target is None:
            messages.insert(0, Message("system", [], lead=system_text))
        else:
            messages[target].lead = system_text + separator
    return messages, turn_of_part


def to_messages(
    sample: Sample, style: Style, *, system: bool | SystemAt = True, assistant: str | None = None
) -> list[dict[str, str]]:
    """The chat messages of a sample: the one place that decides roles, names and merging.

    `system`: where the system prompt goes (`TemplateProfile.system_at`; True: its own message,
    False: folded into the first user message). `assistant` (alternating, assistant-style
    samples): the played speaker, by default the last trained one.
    """
    at: SystemAt = "message" if system is True else "first_user" if system is False else system
    if style == "alternating" and assistant is None:
        assistant = next((t.speaker for t in reversed(sample.turns[1:]) if t.trained), None)
    messages, _ = _build(sample, style, at, assistant)
    return [{"role": m.role, "content": m.content()} for m in messages]


# --- tokens, labels and windows -----------------------------------------------------------------


@dataclass(slots=True)
class _Piece:
    """One row before it becomes lists (Rendered) or arrays (Row): ids and the labelled ranges."""

    sample_id: str
    ids: list[int]
    ranges: list[tuple[int, int]]  # [i, j): labels equal ids there, IGNORE_INDEX elsewhere
    text: str
    trained_turns: tuple[int, ...]
    array: np.ndarray | None = None  # `ids` as int32, where the tokenizer's batch gave them so

    def rendered(self, window: int) -> Rendered:
        labels = [IGNORE_INDEX] * len(self.ids)
        for i, j in self.ranges:
            labels[i:j] = self.ids[i:j]
        return Rendered(self.ids, labels, self.text, self.sample_id, window, self.trained_turns)

    def row(self) -> Row:
        ids = self.array if self.array is not None else np.array(self.ids, dtype=np.int32)
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
        # The trained runs are the ranges' union, read from the ranges instead of the labels (a token id
        # is never IGNORE_INDEX): numpy's run finding cost a few microseconds a row (issue 18).
        runs: list[int] = []
        end = -1
        for i, j in sorted(self.ranges):
            labels[i:j] = ids[i:j]
            if j <= max(i, end):
                continue
            if i <= end:  # touches or overlaps the run before: the same run
                runs[-1] += j - end
            else:
                runs.append(j - i)
            end = j
        return Row(self.sample_id, ids, labels, sum(runs), runs)


class _Renderer:
    """Renders samples with one tokenizer: batches, labels, and splitting at turn boundaries."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        counts: Counter[str] | None,
        system_for: SystemFor | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.system_for = system_for
        self.profile = inspect_template(tokenizer)
        self.formats = Formats(self.profile)
        self.max_length = max_length
        self.counts = counts if counts is not None else Counter()

    def variants(self, sample: Sample) -> list[tuple[str | None, Sample]]:
        """(played speaker, sample): an alternating template plays one trained speaker at a time."""
        if self.profile.style != "alternating":
            return [(None, sample)]
        speakers = sorted({t.speaker for t in sample.turns[1:] if t.trained})
        if len(speakers) <= 1:
            return [(speakers[0] if speakers else None, sample)]
        self.counts["extra renderings: one per trained speaker (alternating template)"] += len(speakers) - 1
        return [
            (
                who,
                replace(
                    sample,
                    turns=tuple(replace(t, trained=t.trained and t.speaker == who) for t in sample.turns),
                    system=self.system_for(sample, who) if self.system_for else sample.system,
                ),
            )
            for who in speakers
        ]

    def layout(self, sample: Sample, assistant: str | None, count: bool = True) -> Layout:
        p = self.profile
        messages, turns = _build(
            sample,
            p.style,
            p.system_at,
            assistant,
            p.control,
            self.counts if count else None,
            p.system_separator,
            p.control_starts,
        )
        return self.formats.layout(messages, turns, sample.id) if messages else Layout("", [], [], [])

    def encode(self, layouts: list[Layout]) -> list[Tokens]:
        texts = [layout.text for layout in layouts]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        bos = self.tokenizer.bos_token_id
        if backend is not None:  # the fast tokenizer's batch call, without the wrapper's conversions
            table = byte_lengths(self.tokenizer)
            if table is None or not hasattr(backend, "encode_batch_fast"):
                encodings = backend.encode_batch(texts, add_special_tokens=False)
                return [self._with_offsets(layout, e) for layout, e in zip(layouts, encodings, strict=True)]
            # Offsets from the tokens' byte lengths, so the tokenizer skips tracking them; a text whose
            # tokens are not its bytes (one an NFC normalizer changes) is tokenized again with offsets.
            id_lists = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
            out = []
            for layout, ids, bounds in zip(
                layouts, id_lists, byte_offsets(id_lists, texts, table), strict=True
            ):
                if bounds is None:
                    (e,) = backend.encode_batch([layout.text], add_special_tokens=False)
                    out.append(self._with_offsets(layout, e))
                else:
                    out.append(
                        Tokens([bos, *ids], shift=1, bounds=bounds)
                        if layout.add_bos
                        else Tokens(ids, bounds=bounds)
                    )
            return out
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for layout, ids, offsets in zip(layouts, enc["input_ids"], enc["offset_mapping"], strict=True):
            if layout.add_bos:
                ids, offsets = [bos, *ids], [(0, 0), *offsets]
            out.append(Tokens(list(ids), offsets=list(offsets)))
        return out

    def _with_offsets(self, layout: Layout, encoding: Any) -> Tokens:
        """A fast tokenizer's Encoding of `layout`, asked for the offsets labels need."""
        if layout.add_bos:
            return Tokens([self.tokenizer.bos_token_id, *encoding.ids], encoding, shift=1)
        return Tokens(encoding.ids, encoding)

    def first_token(self, tokens: Tokens, text: str, a: int) -> int:
        """The first token of the text starting at character `a`.

        The first token ending after `a` ("▁Sure" covers the space before "Sure" too), or a
        space-only token right before it: pre-tokenizers attach that space to the word only when
        the merge exists, so the model must learn to write it (and chat time stops before it).
        """
        return self.back_to_space(tokens, text, tokens.ending_after(a))

    def back_to_space(self, tokens: Tokens, text: str, i: int) -> int:
        """`i`, or the space-only token right before it (`first_token`)."""
        while i > 0 and tokens.ids[i - 1] not in self.profile.special_ids:
            start, end = tokens.chars(i - 1)
            # Not `end <= start`: a tokenizer that trims offsets (ByteLevel trim_offsets=true) gives a
            # space-only token empty offsets; it is still the space before the word.
            if text[start:end].strip(" "):
                break
            i -= 1
        return i

    def rendered(self, sample: Sample, layout: Layout, tokens: Tokens) -> _Piece:
        ids, special, text = tokens.ids, self.profile.special_ids, layout.text
        ranges: list[tuple[int, int]] = []
        spans = layout.spans
        after = tokens.ending_after_each([a for a, _ in spans])  # first_token, before the space check
        ends = tokens.starting_from_each([b for _, b in spans])  # the first token at or after each text's end
        for i, j, trained in zip(after, ends, layout.trained, strict=True):
            i = self.back_to_space(tokens, text, i)
            j = max(i, j)
            if not special.isdisjoint(ids[i:j]):
                raise TemplateError("a message text became a control token; this is a twinlm bug")
            if not trained:
                continue
            # The end-of-turn token: the special token right after the text (maybe after spaces).
            k = j
            while k < len(ids) and k - j < _EOT_LOOKAHEAD and ids[k] not in special:
                start, end = tokens.chars(k)
                if not text[start:end].isspace():
                    break
                k += 1
            if k < len(ids) and ids[k] in special:
                j = k + 1
            else:
                self.counts["trained turn without an end-of-turn token"] += 1
            ranges.append((i, j))
        shown = (self.profile.bos or "") + text if layout.add_bos else text
        trained = tuple(sorted({t for t, y in zip(layout.turns, layout.trained, strict=True) if y}))
        return _Piece(sample.id, ids, ranges, shown, trained, tokens.array)

    def finish(self, batch: list[tuple[Sample, str | None, Layout]]) -> Iterator[tuple[_Piece, int]]:
        """The batch's rows, each with its window number."""
        # A batch holds every rendering of a sample, so window numbers can restart per batch.
        windows: Counter[str] = Counter()
        for (sample, assistant, layout), tokens in zip(
            batch, self.encode([x[2] for x in batch]), strict=True
        ):
            if not any(layout.trained):
                self.counts["samples without a trained turn"] += 1
                continue
            if len(tokens.ids) <= self.max_length:
                pieces: Iterable[_Piece] = [self.rendered(sample, layout, tokens)]
            else:
                self.counts["samples split at turn boundaries"] += 1
                pieces = self.split(sample, assistant, layout, tokens)
            for piece in pieces:
                self.counts["sequences"] += 1
                yield piece, windows[sample.id]
                windows[sample.id] += 1

    def split(
        self, sample: Sample, assistant: str | None, layout: Layout, tokens: Tokens
    ) -> Iterator[_Piece]:
        """Windows of whole turns, each with the system prompt and a context turn first.

        A window's last turn is the next window's context turn, so each trained turn is trained
        once. Turn sizes (text, end of turn, next header) come from the full rendering; each
        window is rendered again and checked. A turn too long even alone is dropped (counted).
        """
        first = [self.first_token(tokens, layout.text, a) for a, _ in layout.spans]
        head = first[0]  # BOS, system prompt, first header
        cost = [b - a for a, b in zip(first, [*first[1:], len(tokens.ids)], strict=True)]
        if layout.lead_part:  # a system prompt in a later user message: every window has it
            lead = len(self.tokenizer(layout.lead, add_special_tokens=False)["input_ids"])
            head, cost[layout.lead_part - 1] = head + lead, cost[layout.lead_part - 1] - lead
        keep = [k for k in range(len(cost)) if head + cost[k] <= self.max_length]
        _add(self.counts, "turns dropped: longer than max_length", len(cost) - len(keep))
        x = 0
        while x < len(keep) - 1:
            e, total = x + 1, head + cost[keep[x]]
            while e < len(keep) and total + cost[keep[e]] <= self.max_length:
                total += cost[keep[e]]
                e += 1
            # A turn's cost counts the next turn's header too, which a window's last turn does not
            # have: a context turn and the turn after it may fit although the estimate says no.
            e = max(e, x + 2)
            piece = None
            while e - x >= 2:  # the estimate can be a few tokens off: check the real rendering
                piece = self.window(sample, assistant, [layout.turns[keep[y]] for y in range(x, e)])
                if piece is None or len(piece.ids) <= self.max_length:
                    break
                piece, e = None, e - 1
            if e - x < 2:  # no room for a context turn before the next turn: it can only be context
                _add(
                    self.counts,
                    "trained turns lost: no room for the turn before them",
                    layout.trained[keep[x + 1]],
                )
                x += 1
                continue
            if piece is not None:
                yield piece
            x = e - 1

    def window(self, sample: Sample, assistant: str | None, turns: list[int]) -> _Piece | None:
        picked = [sample.turns[i] for i in turns]
        picked[0] = replace(picked[0], trained=False)  # a window starts with context
        if not any(t.trained for t in picked[1:]):
            return None
        sub = replace(sample, turns=tuple(picked))
        layout = self.layout(sub, assistant, count=False)
        (tokens,) = self.encode([layout])
        piece = self.rendered(sample, layout, tokens)
        # The window's layout numbers its own turns: back to the sample's.
        piece.trained_turns = tuple(turns[i] for i in piece.trained_turns)
        return piece


def render(
    sample: Sample,
    tokenizer: Any,
    max_length: int,
    counts: Counter[str] | None = None,
    *,
    system_for: SystemFor | None = None,
) -> list[Rendered]:
    """Token ids and labels of one sample: pieces of at most max_length tokens, split between turns."""
    return list(render_many([sample], tokenizer, max_length, counts, system_for=system_for))


def render_many(
    samples: Iterable[Sample],
    tokenizer: Any,
    max_length: int,
    counts: Counter[str] | None = None,
    *,
    batch_size: int = 256,
    system_for: SystemFor | None = None,
) -> Iterator[Rendered]:
    """`render` over many samples, tokenizing `batch_size` chats per call of the fast tokenizer.

    `system_for(sample, speaker)`: the system prompt of the rendering that plays `speaker`, where an
    alternating template renders a sample once per trained speaker (the persona prompt of each);
    without it every rendering keeps the sample's own.
    """
    for piece, window in _pieces(samples, tokenizer, max_length, counts, batch_size, system_for):
        yield piece.rendered(window)


def render_arrays(
    samples: Iterable[Sample],
    tokenizer: Any,
    max_length: int,
    counts: Counter[str] | None = None,
    *,
    batch_size: int = 256,
    system_for: SystemFor | None = None,
) -> Iterator[Row]:
    """`render_many`'s rows as the build writes them: int32 arrays, without the text."""
    for piece, _ in _pieces(samples, tokenizer, max_length, counts, batch_size, system_for):
        yield piece.row()


def _pieces(
    samples: Iterable[Sample],
    tokenizer: Any,
    max_length: int,
    counts: Counter[str] | None,
    batch_size: int,
    system_for: SystemFor | None,
) -> Iterator[tuple[_Piece, int]]:
    renderer = _Renderer(tokenizer, max_length, counts, system_for)
    batch: list[tuple[Sample, str | None, Layout]] = []
    for sample in samples:
        for assistant, variant in renderer.variants(sample):
            batch.append((variant, assistant, renderer.layout(variant, assistant)))
        if len(batch) >= batch_size:
            yield from renderer.finish(batch)
            batch = []
    if batch:
        yield from renderer.finish(batch)


def render_prompt(
    sample: Sample, tokenizer: Any, next_speaker: str, max_length: int | None = None
) -> list[int]:
    """Token ids that make the model write `next_speaker`'s next turn after the sample's turns.

    The training rendering with a probe turn of `next_speaker` appended, cut where the probe's
    text starts: exactly the tokens the model saw before each trained turn. `max_length` drops the
    oldest turns (the system prompt stays) until the prompt fits.
    """
    renderer = _Renderer(tokenizer, max_length or 0, None)
    turns = [replace(t, trained=False) for t in sample.turns]
    alternating = renderer.profile.style == "alternating"
    role_kind = sample.kind in _ROLE_KINDS

    def renderable(history: list[Turn]) -> bool:
        """Whether an alternating template has something to render before the model's turn: a turn
        with text and, in a role chat, one that is not the assistant's own (assistant turns before the
        first user turn are left out)."""
        if not alternating:
            return True
        if role_kind:
            return any(t.text.strip() and t.speaker != next_speaker for t in history)
        return any(t.text.strip() for t in history)

    if alternating and not any(t.text.strip() for t in turns):
        raise TemplateError("this chat template needs at least one turn before the model speaks")
    if not renderable(turns):
        raise TemplateError("this chat template needs a user message before the assistant answers")
    while True:
        probe = replace(sample, turns=(*turns, Turn(next_speaker, _PROBE_TEXT, True)))
        layout = renderer.layout(probe, next_speaker, count=False)
        (tokens,) = renderer.encode([layout])
        cut = renderer.first_token(tokens, layout.text, layout.spans[-1][0])
        # Dropping stops before the history would leave the template nothing to render (the last
        # user message is kept even when it alone is over max_length: the caller sees the length).
        if max_length is None or cut <= max_length or len(turns) <= 1 or not renderable(turns[1:]):
            return tokens.ids[:cut]
        turns = turns[1:]
