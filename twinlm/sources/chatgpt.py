"""ChatGPT data export: `conversations.json` (an array of conversations) or one conversation object.

Each conversation is a tree (`mapping`: node id -> {message, parent, children}); the screen shows
one branch, from `current_node` up the `parent` links to the root. Only that branch is kept, and on
it only what the user saw as the conversation: their own turns and the assistant's final answers.
Tool calls and outputs, browsing, code execution, reasoning and hidden nodes are left out (counted);
custom instructions become the conversation's system prompt.

The array is streamed one conversation at a time (exports reach gigabytes): each is parsed whole
by orjson where its end can be found (see `Stream.objects`), else by json's scanner, and only it is held
in memory while its tree is walked. Nesting is bounded there (orjson refuses 1,024 levels, json's
scanner hits the recursion limit, which `Stream` turns into an ExportError).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twinlm.errors import ExportError
from twinlm.model import Conversation, Kind, Message, ParseOptions, ParseReport, Role
from twinlm.sources._common import clip, in_slices, media_message, new_message, stable_id, track
from twinlm.sources._jsonstream import Stream, open_stream

FORMAT = "chatgpt"

_MAPPING = re.compile(r'(?<!\\)"mapping"\s*:\s*\{')
_NODE_KEYS = re.compile(r'(?<!\\)"(?:content_type|current_node|children)"\s*:')

# (author_id, author_name, role) of the kept messages' authors.
_AUTHORS = {"user": ("user", "You", Role.USER), "assistant": ("assistant", "ChatGPT", Role.ASSISTANT)}

# Content types that are never part of the visible exchange, with the reason they are counted under.
_LEFT_OUT = {
    "thoughts": "reasoning",
    "reasoning_recap": "reasoning",
    "tether_browsing_display": "browsing",
    "tether_quote": "browsing",
    "sonic_webpage": "browsing",
    "execution_output": "code execution output",
    "system_error": "system error",
    "computer_output": "computer output",
    "model_editable_context": "memory context",
}
_CUSTOM_INSTRUCTIONS = "custom instructions -> system prompt"
_WRAPPED = re.compile(r"\AThe user provided[^\n]*(?:\n[^\n]*)*?\n```(.*)```\s*\Z", re.DOTALL)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".heic", ".bmp")


def looks_like(head: str, path: Path) -> bool:
    """A JSON array/object with a `mapping` of nodes that carry ChatGPT message fields."""
    start = head.lstrip()[:1]
    if start not in ("[", "{"):
        return False
    return bool(_MAPPING.search(head)) and bool(_NODE_KEYS.search(head))


def parse(path: Path, options: ParseOptions, report: ParseReport) -> Iterator[Conversation]:
    """Yield the visible branch of every conversation, in file order."""
    with track(open_stream(path)) as f:
        s = Stream(path, f, report)
        first = s.peek()
        if first < 0:
            raise ExportError(path, "empty file: expected a ChatGPT conversations.json", "byte 0")
        if first == 0x7B:  # "{"
            conv = s.value("")
            if not isinstance(conv, dict) or not isinstance(conv.get("mapping"), dict):
                raise ExportError(
                    path, "not a ChatGPT conversation: the object has no 'mapping' of messages", "byte 0"
                )
            yield from _conversation(conv, options, report)
        elif first == 0x5B:  # "["
            for conv in s.objects("conversations"):
                if isinstance(conv, dict) and isinstance(conv.get("mapping"), dict):
                    yield from _conversation(conv, options, report)
                else:
                    report.skip("malformed conversation")
        else:
            expected = "expected a JSON array of conversations or one conversation object"
            raise ExportError(path, f"not a ChatGPT export: {expected}", "byte 0")
        s.finish("object" if first == 0x7B else "array")


# --- one conversation -------------------------------------------------------------------------


def _conversation(conv: dict[str, Any], options: ParseOptions, report: ParseReport) -> Iterator[Conversation]:
    try:
        conversation, messages = _build(conv, options, report)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError):
        report.skip("malformed conversation")
        return
    if len(messages) > options.batch_size:
        yield from in_slices(conversation, messages, options, report)
        return
    # What in_slices does for one slice, without copying the Conversation (dataclasses.replace is slow).
    report.conversations += 1
    report.messages += len(messages)
    yield conversation


def _build(
    conv: dict[str, Any], options: ParseOptions, report: ParseReport
) -> tuple[Conversation, list[Message]]:
    """The conversation (with all its messages) and the list of those messages."""
    mapping: dict[str, Any] = conv["mapping"]
    title = conv.get("title")
    title = title if isinstance(title, str) else ""
    conv_id = _conversation_id(conv, title)

    path = _visible_branch(mapping, conv.get("current_node"), report)
    on_path = set(path)
    other = sum(
        1
        for nid, node in mapping.items()
        if node.__class__ is dict and node.get("message").__class__ is dict and nid not in on_path
    )
    if other:
        report.skip("other branch", other)

    messages: list[Message] = []
    system_parts: list[str] = []
    model_slug = ""
    prefix = conv_id + ":"  # node ids may repeat across "branch in new chat" copies
    reply_to: str | None = None
    max_chars = options.max_message_chars
    for nid in path:
        node = mapping[nid]
        if node.__class__ is not dict:
            report.skip("malformed message")
            continue
        msg = node.get("message")
        if msg is None:
            continue  # structural root: no message was ever there
        if msg.__class__ is not dict:
            report.skip("malformed message")
            continue
        result = _classify(msg, options, report)
        if result.__class__ is not tuple:
            if isinstance(result, _Instructions):
                if result.text and result.text not in system_parts:
                    system_parts.append(result.text)
                report.note(_CUSTOM_INSTRUCTIONS)
            elif result:
                report.skip(result)
            continue
        text, kind, role = result
        if role == "assistant" and not model_slug:
            slug = _dict(msg.get("metadata")).get("model_slug")
            model_slug = slug if isinstance(slug, str) else ""
        author_id, author_name, author_role = _AUTHORS[role]
        timestamp = _timestamp(msg.get("create_time"), report)
        message = new_message(  # Message(...) at ~60% of the cost
            prefix + nid,
            author_id,
            author_name,
            timestamp,
            text if len(text) <= max_chars else clip(text, options, report),
            kind,
            author_role,
            reply_to,
            None,
            role == "user" and _edited(mapping, node),
        )
        messages.append(message)
        reply_to = message.id

    default_slug = conv.get("default_model_slug")
    slug = default_slug if isinstance(default_slug, str) and default_slug else model_slug
    details = [f"model: {slug}"] if slug else []
    gizmo = conv.get("gizmo_id")
    if isinstance(gizmo, str) and gizmo:
        details.append(f"gpt: {gizmo}")
    conversation = Conversation(
        source=FORMAT,
        id=conv_id,
        title=title,
        kind="assistant",
        messages=tuple(messages),
        participants=("You", "ChatGPT"),
        system_prompt="\n\n".join(system_parts) or None,
        platform_detail=" / ".join(details),
    )
    return conversation, messages


def _edited(mapping: dict[str, Any], node: dict[str, Any]) -> bool:
    """A user turn with a user-turn sibling: the user edited and resent it (a branch point)."""
    parent_id = node.get("parent")
    parent = mapping.get(parent_id) if isinstance(parent_id, str) else None
    siblings = parent.get("children") if isinstance(parent, dict) else None
    if not isinstance(siblings, list) or len(siblings) < 2:
        return False
    users = 0
    for sid in siblings:
        sib = mapping.get(sid) if isinstance(sid, str) else None
        msg = sib.get("message") if isinstance(sib, dict) else None
        if isinstance(msg, dict) and _dict(msg.get("author")).get("role") == "user":
            users += 1
    return users > 1


def _conversation_id(conv: dict[str, Any], title: str) -> str:
    for key in ("conversation_id", "id"):
        value = conv.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    created = conv.get("create_time")
    return stable_id(title, created if isinstance(created, int | float | str) else None)


def _visible_branch(mapping: dict[str, Any], current: object, report: ParseReport) -> list[str]:
    """Node ids from the root to `current_node`, guarded against cycles and dangling links."""
    if not (isinstance(current, str) and current in mapping):
        report.note("current_node missing, last branch used")
        return _last_branch(mapping)
    path: list[str] = []
    seen: set[str] = set()
    nid: str | None = current
    while nid is not None:
        seen.add(nid)
        path.append(nid)
        node = mapping[nid]
        parent = node.get("parent") if isinstance(node, dict) else None
        if parent is None:
            break
        if not isinstance(parent, str) or parent not in mapping:
            report.note("dangling parent link")
            break
        if parent in seen:
            report.note("cycle in parent links")
            break
        nid = parent
    path.reverse()
    return path


def _last_branch(mapping: dict[str, Any]) -> list[str]:
    """Without `current_node`: from the root, follow the last child down to a leaf."""
    if not mapping:
        return []
    root = next((nid for nid, node in mapping.items() if _parent_of(node) is None), None)
    if root is None:  # every node has a parent: take one whose parent is not in the mapping
        root = next((nid for nid, node in mapping.items() if _parent_of(node) not in mapping), None)
    if root is None:  # all nodes are in cycles
        root = next(iter(mapping))
    path = [root]
    seen = {root}
    while True:
        node = mapping[path[-1]]
        children = node.get("children") if isinstance(node, dict) else None
        if not isinstance(children, list):
            break
        nxt = next(
            (c for c in reversed(children) if isinstance(c, str) and c in mapping and c not in seen), None
        )
        if nxt is None:
            break
        seen.add(nxt)
        path.append(nxt)
    return path


def _parent_of(node: object) -> object:
    return node.get("parent") if isinstance(node, dict) else None


# --- one message ------------------------------------------------------------------------------


class _Instructions:
    """Custom instructions found on the branch: they become the system prompt, not a message."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _classify(
    msg: dict[str, Any], options: ParseOptions, report: ParseReport
) -> tuple[str, Kind, str] | _Instructions | str:
    """(text, kind, role) of a kept message, the custom instructions, or why the node is left out.

    Called for every node: lookups are inlined, and the usual message (one string part) short-cut.
    `x.__class__ is dict` is `isinstance` for parsed JSON (no subclasses), at less cost."""
    author = msg.get("author")
    role = author.get("role") if author.__class__ is dict else None
    content = msg.get("content")
    content = content if content.__class__ is dict else {}
    ctype = content.get("content_type")
    metadata = msg.get("metadata")
    metadata = metadata if metadata.__class__ is dict else {}
    weight = msg.get("weight")  # 0 hides a node (not False)
    hidden = metadata.get("is_visually_hidden_from_conversation") is True or (
        (weight.__class__ is float or weight.__class__ is int) and weight == 0
    )

    if ctype == "user_editable_context" or metadata.get("is_user_system_message") is True:
        return _Instructions(_custom_instructions(content, metadata))
    if role == "system":
        text = _joined_text(content) if ctype in ("text", None) else ""
        if hidden or not text.strip():
            return "hidden node"
        return _Instructions(text.strip())
    if isinstance(ctype, str) and ctype in _LEFT_OUT:
        return _LEFT_OUT[ctype]
    if role == "tool":
        return "tool message"
    recipient = msg.get("recipient")
    if recipient is not None and recipient != "all":
        return "tool call"
    channel = msg.get("channel")
    if channel is not None and channel != "final":
        name = channel[:20] if isinstance(channel, str) else type(channel).__name__
        return "reasoning" if channel == "analysis" else f"non-final channel ({name})"
    if hidden:
        return "hidden node"
    if role not in ("user", "assistant"):
        return "malformed message" if not isinstance(role, str) else f"unknown role ({role[:20]})"

    if ctype == "text" or ctype == "multimodal_text":
        parts = content.get("parts")
        if parts.__class__ is list and len(parts) == 1 and parts[0].__class__ is str:
            text, kind, dropped = parts[0], Kind.TEXT, False  # what _parts_text makes of it
        else:
            text, kind, dropped = _parts_text(parts, options, report)
    elif ctype == "code":
        code = content.get("text")
        if not isinstance(code, str):
            return "malformed message"
        lang = content.get("language")
        lang = lang if isinstance(lang, str) and lang != "unknown" else ""
        text, kind, dropped = (f"```{lang}\n{code}\n```" if code.strip() else ""), Kind.TEXT, False
    else:
        return "malformed message" if not isinstance(ctype, str) else f"unknown content type ({ctype[:40]})"

    attachments = metadata.get("attachments")
    if attachments:
        files = _file_placeholders(attachments, options, report)
        shown = [f for f in files if f is not None]
        dropped = dropped or len(shown) < len(files)
        if shown:
            if text.strip():
                text = "\n".join([text, *shown])
            else:
                text, kind = "\n".join(shown), Kind.MEDIA
    if not text or text.isspace():  # same as `not text.strip()`, without copying the text
        return "" if dropped else "empty message"  # media-only and media dropped: already counted

    return text, kind, role


def _parts_text(parts: object, options: ParseOptions, report: ParseReport) -> tuple[str, Kind, bool]:
    """Text of `text`/`multimodal_text` parts: strings kept, images and voice as placeholders.

    Also says whether any media was dropped (options.media == "drop"; counted there)."""
    if not isinstance(parts, list):
        return "", Kind.TEXT, False
    texts: list[str] = []
    media: list[str | None] = []
    voice = 0
    transcribed = False
    for part in parts:
        if isinstance(part, str):
            if part:
                texts.append(part)
            continue
        if not isinstance(part, dict):
            continue
        ptype = part.get("content_type")
        ptype = ptype if isinstance(ptype, str) else ""
        if ptype == "audio_transcription":
            said = part.get("text")
            if isinstance(said, str) and said.strip():
                texts.append(said)
                transcribed = True
        elif "audio" in ptype:
            voice += 1
        elif "image" in ptype:
            media.append(media_message(options, report, "image"))
        elif "video" in ptype:
            media.append(media_message(options, report, "video"))
        else:
            report.skip(f"unknown content part ({ptype[:40] or type(part).__name__})")
    if voice and transcribed:
        report.note("voice message kept as its transcription")
    elif voice:
        media.append(media_message(options, report, "voice message"))
    shown = [m for m in media if m is not None]
    kind = Kind.TEXT if any(t.strip() for t in texts) or not shown else Kind.MEDIA
    return "\n".join(texts + shown), kind, len(shown) < len(media)


def _joined_text(content: dict[str, Any]) -> str:
    parts = content.get("parts")
    if not isinstance(parts, list):
        return ""
    return "\n".join(p for p in parts if isinstance(p, str) and p)


def _file_placeholders(attachments: object, options: ParseOptions, report: ParseReport) -> list[str | None]:
    """ "[file]" (None when dropped) for each attached non-image file (images are image parts)."""
    if not isinstance(attachments, list):
        return []
    out: list[str | None] = []
    for att in attachments:
        if not isinstance(att, dict):
            continue
        mime = att.get("mime_type")
        name = att.get("name")
        if isinstance(mime, str) and mime.startswith("image/"):
            continue
        if not isinstance(mime, str) and isinstance(name, str) and name.lower().endswith(_IMAGE_SUFFIXES):
            continue
        out.append(media_message(options, report, "file"))
    return out


def _custom_instructions(content: dict[str, Any], metadata: dict[str, Any]) -> str:
    """The user's own profile + instructions text, without OpenAI's wrapper sentences."""
    texts: list[str] = []
    data = _dict(metadata.get("user_context_message_data"))
    for key in ("about_user_message", "about_model_message"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            texts.append(value.strip())
    if not texts:
        for key in ("user_profile", "user_instructions"):
            value = content.get(key)
            if isinstance(value, str) and value.strip():
                match = _WRAPPED.match(value.strip())
                inner = match.group(1).strip() if match else value.strip()
                if inner:
                    texts.append(inner)
    if not texts:
        joined = _joined_text(content).strip()
        if joined:
            texts.append(joined)
    return "\n\n".join(texts)


def _timestamp(value: object, report: ParseReport) -> datetime | None:
    if value.__class__ is not float and value.__class__ is not int:  # None, strings, booleans...
        return None
    try:
        return datetime.fromtimestamp(value, UTC)  # type: ignore[arg-type]
    except (OverflowError, OSError, ValueError):
        report.note("absurd timestamp dropped")
        return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
