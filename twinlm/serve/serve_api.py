"""The OpenAI chat completions protocol as `twinlm serve` speaks it: request checking, error objects,
model ids, and the response and stream chunk shapes.

Kept apart from the app (twinlm.serve.server) so that what a request may contain and what comes back is
readable in one place. Errors follow OpenAI's conventions: a JSON body `{"error": {"message", "type",
"param", "code"}}`, 400 for anything wrong in the request (OpenAI never answers 422), 401 for the API
key, 404 for an unknown model or path, 413 for a body over the size limit, 429 when the queue is full,
500 for a bug.

Model ids: one model per persona, its id the persona's name as a slug (lower case, ASCII letters and
digits, other runs of characters as one "-": "Alex Rivera" -> "alex-rivera"; a second persona with the
same slug gets "-2"). A request may also name the persona exactly as written ("Alex Rivera").
"""

from __future__ import annotations

import math
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

ROLES = ("system", "developer", "user", "assistant")
# Sent by common clients with values that change nothing here; accepted when they do change nothing.
_NEUTRAL = {
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "n": 1,
    "logprobs": False,
    "logit_bias": None,
    "tools": None,
    "tool_choice": None,
    "parallel_tool_calls": None,
    "response_format": None,
    "top_logprobs": None,
    "functions": None,
    "function_call": None,
}
_IGNORED = ("user", "store", "metadata", "service_tier")  # bookkeeping fields that do not change a reply
_SAMPLING = ("temperature", "top_p", "min_p", "repetition_penalty", "seed", "stop")
_KNOWN = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    *_SAMPLING,
    *_NEUTRAL,
    *_IGNORED,
}


class ApiError(Exception):
    """An error answered as OpenAI does: the status and {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


# --- model ids --------------------------------------------------------------------------------------------


def slug(name: str) -> str:
    """A persona's model id: "Alex Rivera" -> "alex-rivera", "José" -> "jose" (see the module text)."""
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-") or "persona"


def model_ids(personas: Iterable[str]) -> dict[str, str]:
    """{model id: persona name}, ids unique in the personas' order."""
    ids: dict[str, str] = {}
    for name in personas:
        base = slug(name)
        model, n = base, 1
        while model in ids:
            n += 1
            model = f"{base}-{n}"
        ids[model] = name
    return ids


def resolve_model(model: str, ids: Mapping[str, str]) -> str:
    """The model id a request's `model` names (its id, or the persona's name as written); 404 if none."""
    if model in ids:
        return model
    for model_id, name in ids.items():
        if model == name:
            return model_id
    raise ApiError(
        404,
        f"The model `{model}` does not exist. Available models: {', '.join(ids)} (GET /v1/models).",
        param="model",
        code="model_not_found",
    )


# --- requests ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_messages: int
    max_tokens: int  # the most a request may ask for
    context_length: int  # the backend's window: max_tokens must leave room for a prompt


@dataclass(frozen=True)
class ChatRequest:
    model: str  # as the client wrote it
    messages: list[dict[str, str]]  # role, content (text), and name where given
    stream: bool
    include_usage: bool
    max_tokens: int | None  # None: the configured default
    sampling: dict[str, Any]  # Sampling overrides the request gives (temperature, top_p, ...)


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise ApiError(
            400,
            f"We could not parse the JSON body of your request ({err}). The API expects a JSON object.",
            code=None,
        ) from None


def _number(value: Any, name: str, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(
            f"Invalid type for '{name}': expected a number, but got {_kind(value)}.", name, "invalid_type"
        )
    if value < low or value > high or (low_open and value == low):
        bound = f"greater than {low}" if low_open else f"at least {low}"
        raise invalid(f"Invalid '{name}': {value} must be {bound} and at most {high}.", name)
    return float(value)


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(
            f"Invalid type for '{name}': expected an integer, but got {_kind(value)}.", name, "invalid_type"
        )
    return value


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _content(value: Any, param: str) -> str:
    """A message's text: a string, or a list of text parts (as newer clients send), joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise invalid(
                    f'Invalid \'{param}[{i}]\': only text parts ({{"type": "text", "text": ...}}) are '
                    "supported.",
                    f"{param}[{i}]",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(
        f"Invalid type for '{param}': expected a string or an array of text parts, but got {_kind(value)}.",
        param,
        "invalid_type",
    )


def _messages(value: Any, limits: Limits) -> list[dict[str, str]]:
    if value is None:
        raise invalid("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(value, list):
        raise invalid(
            f"Invalid type for 'messages': expected an array, but got {_kind(value)}.",
            "messages",
            "invalid_type",
        )
    if not value:
        raise invalid(
            "Invalid 'messages': empty array. Expected an array with at least 1 message.", "messages"
        )
    if len(value) > limits.max_messages:
        raise invalid(
            f"Invalid 'messages': {len(value)} messages, more than this server's limit "
            f"of {limits.max_messages}.",
            "messages",
            "too_many_messages",
        )
    messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(
                f"Invalid type for '{where}': expected an object, but got {_kind(message)}.",
                where,
                "invalid_type",
            )
        role = message.get("role")
        if role not in ROLES:
            shown = role if isinstance(role, str) else orjson.dumps(role).decode()
            raise invalid(
                f"Invalid value: '{shown}'. Supported values are: 'system', 'developer', 'user' "
                "and 'assistant'.",
                f"{where}.role",
            )
        if "content" not in message or message["content"] is None:
            raise invalid(
                f"Missing required parameter: '{where}.content'.",
                f"{where}.content",
                "missing_required_parameter",
            )
        parsed = {
            "role": "system" if role == "developer" else role,
            "content": _content(message["content"], f"{where}.content"),
        }
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise invalid(
                    f"Invalid type for '{where}.name': expected a string, but got {_kind(name)}.",
                    f"{where}.name",
                    "invalid_type",
                )
            parsed["name"] = name
        for key in message:
            if key not in ("role", "content", "name"):
                raise invalid(
                    f"Unrecognized parameter '{where}.{key}'.", f"{where}.{key}", "unknown_parameter"
                )
        messages.append(parsed)
    return messages


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid(
            "Invalid type for 'stop': expected a string or an array of strings.", "stop", "invalid_type"
        )
    if len(stops) > 4:
        raise invalid(f"Invalid 'stop': {len(stops)} stop sequences, at most 4.", "stop")
    return tuple(s for s in stops if s)


def parse_chat_request(data: Any, limits: Limits) -> ChatRequest:
    """A chat completion request checked as OpenAI checks it; ApiError (400) naming the parameter."""
    if not isinstance(data, dict):
        raise invalid(f"The request body must be a JSON object, but got {_kind(data)}.", None, "invalid_type")
    for key in data:
        if key not in _KNOWN:
            raise invalid(f"Unrecognized request argument supplied: {key}", key, "unknown_parameter")
    model = data.get("model")
    if model is None:
        raise invalid("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    if not isinstance(model, str):
        raise invalid(
            f"Invalid type for 'model': expected a string, but got {_kind(model)}.", "model", "invalid_type"
        )
    messages = _messages(data.get("messages"), limits)
    for key, neutral in _NEUTRAL.items():
        value = data.get(key)
        if value is not None and value != neutral and value not in ({}, []):
            if key == "response_format" and value == {"type": "text"}:
                continue
            raise invalid(
                f"Unsupported parameter: '{key}' (this server supports only {neutral!r}).",
                key,
                "unsupported_parameter",
            )
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid(
            f"Invalid type for 'stream': expected a boolean, but got {_kind(stream)}.",
            "stream",
            "invalid_type",
        )
    include_usage = False
    options = data.get("stream_options")
    if options is not None:
        if not stream:
            raise invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
            )
        if not isinstance(options, dict) or any(k != "include_usage" for k in options):
            raise invalid(
                "Invalid 'stream_options': only {\"include_usage\": true|false} is supported.",
                "stream_options",
            )
        include_usage = options.get("include_usage") is True
    max_tokens = None
    for name in ("max_completion_tokens", "max_tokens"):
        if data.get(name) is not None:
            max_tokens = _integer(data[name], name)
            ceiling = min(limits.max_tokens, limits.context_length - 1)
            if max_tokens < 1:
                raise invalid(f"Invalid '{name}': {max_tokens}; it must be at least 1.", name)
            if max_tokens > ceiling:
                raise invalid(
                    f"{name} is too large: {max_tokens}. This server allows at most {ceiling} "
                    "completion tokens.",
                    name,
                )
    sampling: dict[str, Any] = {}
    if data.get("temperature") is not None:
        sampling["temperature"] = _number(data["temperature"], "temperature", 0, 2)
    if data.get("top_p") is not None:
        sampling["top_p"] = _number(data["top_p"], "top_p", 0, 1, low_open=True)
    if data.get("min_p") is not None:
        sampling["min_p"] = _number(data["min_p"], "min_p", 0, 1)
    if data.get("repetition_penalty") is not None:
        sampling["repetition_penalty"] = _number(
            data["repetition_penalty"], "repetition_penalty", 0, 10, low_open=True
        )
    if data.get("seed") is not None:
        sampling["seed"] = _integer(data["seed"], "seed")
    if data.get("stop") is not None:
        sampling["stop"] = _stop(data["stop"])
    return ChatRequest(model, messages, bool(stream), include_usage, max_tokens, sampling)


# --- responses --------------------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finish_reason(reason: str | None) -> str:
    """OpenAI's values: "stop" or "length" ("cancelled" only happens for a client that left)."""
    return "length" if reason == "length" else "stop"


def completion(
    cid: str, created: int, model: str, text: str, reason: str | None, used: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason(reason),
            }
        ],
        "usage": used,
    }


class Chunks:
    """The `data: {json}\\n\\n` events of one streamed completion, shaped as OpenAI's."""

    def __init__(self, cid: str, created: int, model: str, include_usage: bool) -> None:
        self.head = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self.include_usage = include_usage

    def _event(self, choices: list[dict[str, Any]], used: dict[str, int] | None = None) -> bytes:
        chunk = {**self.head, "choices": choices}
        if self.include_usage:
            chunk["usage"] = used  # null on every chunk but the last, as OpenAI sends it
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def delta(self, delta: dict[str, Any], reason: str | None = None) -> bytes:
        return self._event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}])

    def role(self) -> bytes:
        return self.delta({"role": "assistant", "content": "", "refusal": None})

    def content(self, text: str) -> bytes:
        return self.delta({"content": text})

    def end(self, reason: str | None, used: dict[str, int]) -> bytes:
        last = self.delta({}, finish_reason(reason))
        if self.include_usage:
            last += self._event([], used)
        return last + b"data: [DONE]\n\n"

    @staticmethod
    def error(error: ApiError) -> bytes:
        return b"data: " + orjson.dumps(error.body()) + b"\n\n"
