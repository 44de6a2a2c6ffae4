"""Existing fine-tuning datasets: JSON Lines of ShareGPT, OpenAI/Mistral `messages`, or Alpaca samples.

Each sample (one line) becomes one `Conversation` of kind "dataset". Decisions:

- Shapes: ShareGPT `{"conversations": [{"from", "value"}], "system"?}` (items written as
  `{"role", "content"}` are read too); OpenAI/Mistral `{"messages": [{"role", "content"}]}` with
  `content` a string or a list of parts (`tools`, `weight` and other keys ignored); Alpaca
  `{"instruction", "input"?, "output", "system"?, "history"?}` where `history` is LLaMA-Factory's
  list of earlier `[user, assistant]` pairs. The FIRST valid line decides the shape of the file;
  later lines of another known shape are skipped as "other shape".
- Roles: human/user -> USER; gpt/assistant/bot/model/chatgpt/function_call -> ASSISTANT (a ShareGPT
  "function_call" turn is the model's turn); system/developer -> SYSTEM; tool/function/observation/
  function_response/ipython -> TOOL; any other name (character names in role-play sets) becomes a
  named PARTICIPANT, so nothing is lost and build decides. author_id/author_name are the role names
  ("user", "assistant", "system", "tool") or that name; an OpenAI message's `name` key, when
  present on a user/assistant turn, is used as the author instead.
- System messages before the first other turn (and a top-level `system`) become `system_prompt`
  (joined by a blank line); a system message later in the sample is kept in place as a SYSTEM turn.
- Content parts: text (and `refusal`) parts are joined by newlines; image/audio/file parts become
  "[image]"/"[audio]"/"[file]" placeholders (after the text, on a new line; dropped when
  options.media == "drop"); other part types are skipped and counted. A turn with no text at all
  (e.g. an assistant tool call with `content: null`) is skipped and counted.
- ids: the conversation id is `stable_id` of the sample's canonical content (system prompt, roles,
  authors, texts with placeholders, before clipping), so re-ingesting, re-ordering keys, or
  converting between shapes adds nothing; duplicates within a file are skipped ("duplicate
  sample"). Message ids are `<conversation id>:<turn index>`. Timestamps are None.
- Errors: a malformed line (bad JSON, not an object, unknown shape, wrong types) is skipped and
  counted "malformed line", unless no line at all is valid: then ExportError names the first one.
- A JSON array of such samples (`[{...}, ...]`, how Alpaca/ShareGPT sets are often shipped) is read
  too, streamed with ijson; its bad items count as "malformed sample".
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson
import orjson

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport, Role
from twinlm.sources._common import (
    HEAD_BYTES,
    bounded_lines,
    clip,
    in_slices,
    media_message,
    stable_id,
    track,
)

SOURCE = "jsonl"
TITLE_CHARS = 80
MAX_DEPTH = 256
IJSON_BUF = 4096  # bytes per ijson read; see _array_items
# A line longer than this is refused before it is read whole (a 1 GB line would take gigabytes): no chat
# sample is that long (build cuts messages at max_message_chars anyway).
MAX_LINE_BYTES = 64 << 20

_ROLES: dict[str, Role] = {
    "human": Role.USER,
    "user": Role.USER,
    "gpt": Role.ASSISTANT,
    "assistant": Role.ASSISTANT,
    "bot": Role.ASSISTANT,
    "model": Role.ASSISTANT,
    "chatgpt": Role.ASSISTANT,
    "function_call": Role.ASSISTANT,
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
    "tool": Role.TOOL,
    "function": Role.TOOL,
    "observation": Role.TOOL,
    "function_response": Role.TOOL,
    "ipython": Role.TOOL,
}
_MEDIA_PARTS = {
    "image_url": "image",
    "image": "image",
    "input_image": "image",
    "input_audio": "audio",
    "audio": "audio",
    "file": "file",
    "input_file": "file",
}
_FOREIGN_MESSAGE_KEYS = {"sender_name", "author", "from", "timestamp_ms"}  # Messenger, Discord, Telegram


class _Malformed(Exception):
    """A sample that does not have the types its shape requires."""


# --------------------------------------------------------------------------------------- detection


def looks_like(head: str, path: Path) -> bool:
    body = head.lstrip()
    if body.startswith("["):
        return _shape_from_events(body.encode("utf-8", "replace"), "item") is not None
    if not body.startswith("{"):
        return False
    line, _, rest = body.partition("\n")
    try:
        complete = bool(rest) or path.stat().st_size <= HEAD_BYTES
    except OSError:
        return False
    if complete:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            return False
        return isinstance(obj, dict) and _shape(obj) is not None
    # one line longer than the head: judge from the keys seen before the cut
    return _shape_from_events(line.encode("utf-8", "replace"), "") is not None


def _shape(obj: dict[str, Any]) -> str | None:
    conv = obj.get("conversations")
    if (
        isinstance(conv, list)
        and conv
        and isinstance(conv[0], dict)
        and ({"from", "value"} & conv[0].keys() or {"role", "content"} <= conv[0].keys())
    ):
        return "sharegpt"
    msgs = obj.get("messages")
    if isinstance(msgs, list) and msgs and isinstance(msgs[0], dict):
        keys = msgs[0].keys()
        if "role" in keys and not (keys & _FOREIGN_MESSAGE_KEYS):
            return "messages"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    return None


def _shape_from_events(data: bytes, base: str) -> str | None:
    """Sniff the shape of the first sample at `base` ("" or "item") from a possibly cut JSON text."""
    top: set[str] = set()
    first_item: dict[str, set[str]] = {"conversations": set(), "messages": set()}
    done: set[str] = set()
    ended = False
    depth = 0
    try:
        for n, (prefix, event, value) in enumerate(ijson.parse(io.BytesIO(data), buf_size=IJSON_BUF)):
            if event in ("start_map", "start_array"):
                depth += 1
            elif event in ("end_map", "end_array"):
                depth -= 1
            if n > 20_000 or depth > 32:  # enough to see the keys; deep nesting costs ijson dearly
                break
            if event == "map_key" and prefix == base:
                top.add(value)
            elif prefix == base and event == "end_map":
                ended = True
                break
            for key, keys in first_item.items():
                item = f"{base}.{key}.item" if base else f"{key}.item"
                if prefix == item and key not in done:
                    if event == "map_key":
                        keys.add(value)
                    elif event == "end_map":
                        done.add(key)
    except ijson.JSONError:
        pass  # the cut (or junk) ends the sniff; judge from what was seen
    conv, msgs = first_item["conversations"], first_item["messages"]
    if "conversations" in top and ({"from", "value"} & conv or {"role", "content"} <= conv):
        return "sharegpt"
    if "messages" in top and "role" in msgs and not (msgs & _FOREIGN_MESSAGE_KEYS):
        return "messages"
    if "instruction" in top and ("output" in top or not ended):
        return "alpaca"
    return None


# ------------------------------------------------------------------------------------------- parse

_Turn = tuple[Role, str, str, list[str], list[str]]  # role, author, full text, text parts, media


def parse(path: Path, options: ParseOptions, report: ParseReport) -> Iterator[Conversation]:
    try:
        f = track(open(path, "rb"))  # noqa: SIM115 - closed below
    except OSError as e:
        raise ExportError(path, f"cannot read file ({e.strerror or e})") from None
    with f:
        start = f.read(4096)
        if start.startswith(b"\xef\xbb\xbf"):
            start = start[3:]
        if start.lstrip()[:1] == b"[":
            f.seek(0)
            if f.read(3) != b"\xef\xbb\xbf":
                f.seek(0)
            yield from _parse_array(path, f, options, report)
            return
        f.seek(0)
        yield from _parse_lines(path, f, options, report)


def _parse_lines(
    path: Path, f: io.BufferedReader, options: ParseOptions, report: ParseReport
) -> Iterator[Conversation]:
    state = _State()
    try:
        for lineno, raw in enumerate(bounded_lines(path, f, MAX_LINE_BYTES, "a JSONL dataset"), 1):
            line = raw.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else raw
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                state.bad(report, "malformed line", lineno, f"invalid JSON ({str(e)[:80]})")
                continue
            yield from state.take(obj, options, report, "malformed line", lineno)
    except OSError as e:
        raise ExportError(path, f"cannot read file ({e.strerror or e})") from None
    state.finish(path, report, "line")


def _parse_array(
    path: Path, f: io.BufferedReader, options: ParseOptions, report: ParseReport
) -> Iterator[Conversation]:
    state = _State()
    for index, obj in enumerate(_array_items(path, f)):
        yield from state.take(obj, options, report, "malformed sample", index)
    state.finish(path, report, "item")


def _array_items(path: Path, f: io.BufferedReader) -> Iterator[object]:
    """The items of a top-level JSON array, streamed, refusing absurd nesting.

    ijson builds one prefix string per open level for every event of a buffer before handing any
    over, so time and memory grow with the square of the depth: 200 KB of "[[[[..." would exhaust
    memory with its default 64 KiB buffer. Small buffers plus a depth limit keep that bounded
    (samples are never deeper than MAX_DEPTH) at no cost in throughput.
    """
    depth = 0
    builder: ijson.ObjectBuilder | None = None
    for _prefix, event, value in _events(path, f):
        if event in ("start_map", "start_array"):
            depth += 1
            if depth > MAX_DEPTH:
                raise ExportError(path, f"JSON nested deeper than {MAX_DEPTH} levels", f"byte {f.tell()}")
            if depth == 1:
                if event != "start_array":
                    raise ExportError(path, "a JSON array of samples was expected", "byte 0")
                continue
            if depth == 2:
                builder = ijson.ObjectBuilder()
        elif event in ("end_map", "end_array"):
            depth -= 1
            if depth == 0:
                continue
        elif depth == 1:
            yield value  # a scalar item
            continue
        if builder is not None:
            builder.event(event, value)
            if depth == 1:  # the item just closed
                yield builder.value
                builder = None


def _events(path: Path, f: io.BufferedReader) -> Iterator[tuple[str, str, Any]]:
    """_common.json_events with a small read buffer (see _array_items)."""
    try:
        yield from ijson.parse(f, buf_size=IJSON_BUF, use_float=True)
    except ijson.JSONError as e:
        why = " ".join(str(e).split())[:120] or type(e).__name__
        raise ExportError(path, f"invalid or truncated JSON ({why})", f"byte {f.tell()}") from None


class _State:
    """What a file has shown so far: its shape, the ids seen, the first bad record."""

    def __init__(self) -> None:
        self.shape: str | None = None
        self.valid = 0
        self.first_bad: tuple[int, str] | None = None
        self.seen: set[str] = set()

    def bad(self, report: ParseReport, reason: str, where: int, why: str) -> None:
        report.skip(reason)
        if self.first_bad is None:
            self.first_bad = (where, why)

    def take(
        self, obj: object, options: ParseOptions, report: ParseReport, reason: str, where: int
    ) -> Iterator[Conversation]:
        if not isinstance(obj, dict):
            self.bad(report, reason, where, f"a JSON {type(obj).__name__}, not an object")
            return
        shape = _shape(obj)
        if shape is None:
            self.bad(report, reason, where, "not a ShareGPT, OpenAI messages or Alpaca sample")
            return
        if self.shape is not None and shape != self.shape:
            self.valid += 1
            report.skip("other shape")
            return
        local = ParseReport()  # skips inside a sample count only if the sample turns out valid
        try:
            system, turns = _SHAPES[shape](obj, local)
        except (_Malformed, KeyError, TypeError, ValueError, AttributeError) as e:
            self.bad(report, reason, where, f"{shape} sample with wrong types ({str(e)[:80]})")
            return
        report.merge(local)
        self.shape = shape  # the first valid sample decides the file's shape
        self.valid += 1
        yield from _conversation(system, turns, options, report, self.seen)

    def finish(self, path: Path, report: ParseReport, unit: str) -> None:
        if self.valid == 0 and self.first_bad is not None:
            where, why = self.first_bad
            place = f"line {where}" if unit == "line" else f"item[{where}]"
            raise ExportError(path, f"no valid dataset sample; the first is {why}", place)
        if self.valid == 0:
            report.skip("empty file")


def _conversation(
    system: str | None, turns: list[_Turn], options: ParseOptions, report: ParseReport, seen: set[str]
) -> Iterator[Conversation]:
    canonical: list[object] = [system or ""]
    for role, author, text, _parts, _media in turns:
        canonical += [role.value, author, text]
    conv_id = stable_id(SOURCE, *canonical)
    if conv_id in seen:
        report.skip("duplicate sample")
        return
    seen.add(conv_id)
    messages: list[Message] = []
    for i, (role, author, text, parts, media) in enumerate(turns):
        kind = Kind.TEXT if parts else Kind.MEDIA
        if options.media == "drop":
            for what in media:
                media_message(options, report, what)
            text = "\n".join(parts)
            if not text:
                continue
        messages.append(
            Message(
                id=f"{conv_id}:{i}",
                author_id=author,
                author_name=author,
                timestamp=None,
                text=clip(text, options, report),
                kind=kind,
                role=role,
            )
        )
    if not messages:
        report.skip("empty sample")
        return
    first = next((m for m in messages if m.role == Role.USER), messages[0])
    title = first.text.strip().split("\n", 1)[0][:TITLE_CHARS]
    template = Conversation(
        source=SOURCE,
        id=conv_id,
        title=title,
        kind="dataset",
        messages=(),
        participants=tuple(dict.fromkeys(m.author_name for m in messages)),
        system_prompt=clip(system, options, report) if system is not None else None,
    )
    yield from in_slices(template, iter(messages), options, report)


# ------------------------------------------------------------------------------------------ shapes


def _text(value: object, report: ParseReport) -> tuple[list[str], list[str]]:
    """A message content (string, list of parts, or null) as (text parts, media kinds)."""
    if value is None:
        return [], []
    if isinstance(value, str):
        return ([value] if value.strip() else []), []
    if not isinstance(value, list):
        raise _Malformed(f"content is a {type(value).__name__}")
    parts: list[str] = []
    media: list[str] = []
    for part in value:
        if isinstance(part, str):
            piece: object = part
        elif not isinstance(part, dict):
            raise _Malformed(f"content part is a {type(part).__name__}")
        elif part.get("type") in ("text", "input_text", "output_text", None):
            piece = part.get("text")
        elif part.get("type") == "refusal":
            piece = part.get("refusal")
        elif part.get("type") in _MEDIA_PARTS:
            media.append(_MEDIA_PARTS[part["type"]])
            continue
        else:
            report.skip("unsupported content part")
            continue
        if not isinstance(piece, str):
            raise _Malformed("text part without a string text")
        if piece.strip():
            parts.append(piece)
    return parts, media


def _turn(name: object, content: object, display: object, report: ParseReport) -> _Turn | None:
    if not isinstance(name, str):
        raise _Malformed("role is not a string")
    key = name.strip().lower()
    role = _ROLES.get(key, Role.PARTICIPANT)
    author = role.value if role != Role.PARTICIPANT else name.strip() or "unknown"
    if isinstance(display, str) and display.strip() and role in (Role.USER, Role.ASSISTANT):
        author = display.strip()
    parts, media = _text(content, report)
    if not parts and not media:
        report.skip("empty message")
        return None
    parts = [_valid_unicode(p, report) for p in parts]
    text = "\n".join(parts + [f"[{m}]" for m in media])
    return role, _valid_unicode(author, report), text, parts, media


def _valid_unicode(text: str, report: ParseReport) -> str:
    """Replace lone surrogates (from "\\ud800"-style escapes) that could not be stored as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        report.note("invalid unicode replaced")
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _split_system(turns: list[_Turn], system: list[str]) -> tuple[str | None, list[_Turn]]:
    """Leading SYSTEM turns join the top-level system prompt; later ones stay in place."""
    i = 0
    while i < len(turns) and turns[i][0] == Role.SYSTEM:
        system.append(turns[i][2])
        i += 1
    prompt = "\n\n".join(s for s in system if s.strip())
    return (prompt or None), turns[i:]


def _top_system(obj: dict[str, Any], report: ParseReport) -> list[str]:
    value = obj.get("system", obj.get("system_prompt"))
    if value is None:
        return []
    parts, _media = _text(value, report)
    return [_valid_unicode("\n".join(parts), report)] if parts else []


def _sharegpt(obj: dict[str, Any], report: ParseReport) -> tuple[str | None, list[_Turn]]:
    system = _top_system(obj, report)
    turns: list[_Turn] = []
    for item in obj["conversations"]:
        if not isinstance(item, dict):
            raise _Malformed("turn is not an object")
        name = item.get("from", item.get("role"))
        content = item["value"] if "value" in item else item.get("content")
        turn = _turn(name, content, None, report)
        if turn:
            turns.append(turn)
    return _split_system(turns, system)


def _messages(obj: dict[str, Any], report: ParseReport) -> tuple[str | None, list[_Turn]]:
    turns: list[_Turn] = []
    for item in obj["messages"]:
        if not isinstance(item, dict):
            raise _Malformed("message is not an object")
        content = item.get("content")
        if content is None and item.get("tool_calls"):
            if not isinstance(item.get("role"), str):
                raise _Malformed("role is not a string")
            report.skip("tool call without text")
            continue
        turn = _turn(item.get("role"), content, item.get("name"), report)
        if turn:
            turns.append(turn)
    return _split_system(turns, _top_system(obj, report))


def _alpaca(obj: dict[str, Any], report: ParseReport) -> tuple[str | None, list[_Turn]]:
    instruction, extra, output = obj["instruction"], obj.get("input"), obj["output"]
    if not isinstance(instruction, str) or not isinstance(output, str):
        raise _Malformed("instruction/output not strings")
    if extra is not None and not isinstance(extra, str):
        raise _Malformed("input not a string")
    history = obj.get("history") or []
    if not isinstance(history, list):
        raise _Malformed("history not a list")
    turns: list[_Turn] = []
    for pair in history:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise _Malformed("history item not a [user, assistant] pair")
        for name, text in zip(("user", "assistant"), pair, strict=True):
            turn = _turn(name, text, None, report)
            if turn:
                turns.append(turn)
    user = instruction + ("\n\n" + extra if extra and extra.strip() else "")
    if not instruction.strip() and extra and extra.strip():
        user = extra
    for name, text in (("user", user), ("assistant", output)):
        turn = _turn(name, text, None, report)
        if turn:
            turns.append(turn)
    system = _top_system(obj, report)
    return ("\n\n".join(system) or None), turns


_SHAPES = {"sharegpt": _sharegpt, "messages": _messages, "alpaca": _alpaca}
