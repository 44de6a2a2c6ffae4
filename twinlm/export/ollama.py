"""`twinlm ollama`: a Modelfile whose TEMPLATE renders exactly the prompt twinlm builds at chat time.

One persona per Modelfile (twinlm-export.json's "personas": name -> system prompt; `persona` picks
one). FROM the GGUF (relative to the Modelfile), TEMPLATE from twinlm.export.gotemplate (derived
from the training rendering, checked against it), the persona's SYSTEM prompt, and PARAMETERs:
num_ctx from the training length, temperature, and every stop string.

Who a plain user message is, for a chat between people: the first name in twinlm-export.json's
"others"[persona] (the persona's partners, most frequent first); without it `me` when the persona is
someone else; else "someone", whom the persona prompt (filled for a chat with "someone") names. The
SYSTEM prompt is the persona's, filled again for a chat with that person where twinlm-export.json has
the persona_settings to do so (provenance.persona_system), as training filled it. A
user message starting "Name: " for a partner in "others" is that partner's turn (group chats); see
twinlm.export.ollama_chat. Ollama merges consecutive user messages (with a blank line) before the
template sees them, so several partners speaking in a row are one turn of the first one: on Mistral /
Gemma templates one user message "Alice: hi\nBob: yo" renders exactly as training wrote those two
turns; ChatML / Llama 3 (a header per speaker) and plain (an end of turn per speaker) cannot show that.
"""

from __future__ import annotations

import os
import re
import shlex
import unicodedata
from pathlib import Path
from typing import Any

import orjson

from twinlm.errors import TwinError
from twinlm.export.gotemplate import OllamaTemplate, ollama_template
from twinlm.export.ollama_chat import Speakers, collate, conversation, prompt_ids, prompt_text
from twinlm.export.provenance import PROVENANCE, persona_system, read_provenance
from twinlm.files import write_atomic
from twinlm.prepare.render import TemplateError

__all__ = [
    "EXPORT_INFO",
    "OllamaTemplate",
    "Speakers",
    "collate",
    "conversation",
    "load_persona",
    "model_name",
    "modelfile_text",
    "ollama_commands",
    "ollama_template",
    "prompt_ids",
    "prompt_text",
    "write_modelfile",
]

EXPORT_INFO = PROVENANCE  # twinlm-export.json, written by `twinlm merge`
ASSISTANT = "assistant"  # the persona name of assistant-style training (merge.py's convention)
_FALLBACK_PARTNER = "someone"  # who the persona prompt says it chats with when nobody is named


# --- the Modelfile -----------------------------------------------------------------------------------


def _read_info(model_dir: Path) -> dict[str, Any]:
    return read_provenance(Path(model_dir))


def load_persona(
    model_dir: Path, persona: str | None = None, *, user: str | None = None
) -> tuple[Any, Speakers]:
    """The merged model folder's tokenizer and the Speakers of one of its personas.

    `persona`: a name from twinlm-export.json's "personas" (None: the only one). `user`: who a plain
    user message is (default: the persona's most frequent partner, see the module docstring).
    """
    model_dir = Path(model_dir)
    info = _read_info(model_dir)
    path = model_dir / EXPORT_INFO
    personas = info.get("personas")
    if not isinstance(personas, dict) or not personas:
        raise TwinError(f"{path}: no personas recorded; run `twinlm merge` again")
    listed = ", ".join(map(str, personas))
    if persona is None:
        if len(personas) != 1:
            raise TwinError(f"{path}: {len(personas)} personas ({listed}); pick one with --as NAME")
        persona = str(next(iter(personas)))
    elif persona not in personas:
        raise TwinError(f"{path}: no persona {persona!r}; the personas are {listed} (--as NAME)")
    prompt = personas[persona]
    system = str(prompt) if prompt else None
    if persona == ASSISTANT:
        speakers = Speakers(ASSISTANT, "assistant", "user", (), system)
    else:
        recorded = info.get("others")
        names = recorded.get(persona) if isinstance(recorded, dict) else None
        others = tuple(str(n) for n in names or () if str(n).strip() and str(n) != persona)
        me = info.get("me")
        default = others[0] if others else str(me) if me and me != persona else _FALLBACK_PARTNER
        user = user or default
        if user == persona:
            raise TwinError(f"--user {user}: that is the persona itself; name someone it chats with")
        # As training wrote it for a chat with that person ("chatting with Sam"), not with "someone".
        system = persona_system(info, persona, user)
        speakers = Speakers(persona, "chat", user, others, system)
    from transformers import AutoTokenizer  # heavy: only when a Modelfile is made

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as err:
        raise TwinError(f"{model_dir}: cannot load the tokenizer ({err})") from None
    return tokenizer, speakers


def _printable(ch: str) -> bool:
    """Go's strconv.IsPrint (Ollama's Modelfile parser keeps only these), plus tab and newlines."""
    return ch in " \t\n\r" or unicodedata.category(ch)[0] in "LMNPS"


def _value(text: str, what: str) -> str:
    bad = next((ch for ch in text if not _printable(ch)), None)
    if bad is not None:
        raise TwinError(
            f"{what}: the character U+{ord(bad):04X} cannot be written in a Modelfile (Ollama's parser drops "
            "it); change the text in twin.yaml and export again"
        )
    if '"""' in text:
        raise TwinError(
            f'{what}: contains """, which ends a Modelfile value; change the text and export again'
        )
    return text


def _temperature(model_dir: Path, info: dict[str, Any], temperature: float | None) -> float | None:
    if temperature is None and isinstance(info.get("temperature"), int | float):
        temperature = float(info["temperature"])
    if temperature is None and (model_dir / "generation_config.json").is_file():
        try:
            generation = orjson.loads((model_dir / "generation_config.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            generation = {}
        if isinstance(generation, dict) and isinstance(generation.get("temperature"), int | float):
            temperature = float(generation["temperature"])
    if temperature is not None and not 0 <= temperature <= 100:
        raise TwinError(f"--temperature {temperature}: must be between 0 and 100")
    return temperature


def modelfile_text(
    model_dir: Path,
    gguf_path: Path,
    out_path: Path,
    *,
    persona: str | None = None,
    temperature: float | None = None,
    user: str | None = None,
) -> str:
    """The Modelfile of one persona of the merged model `model_dir`, for the GGUF `gguf_path`.

    FROM names the GGUF relative to `out_path`'s folder (Ollama resolves it from there).
    `temperature`: default the export's, else generation_config.json's, else none (Ollama's).
    `user`: who a plain user message is (default: see the module docstring).
    """
    model_dir, gguf_path, out_path = Path(model_dir), Path(gguf_path), Path(out_path)
    info = _read_info(model_dir)
    tokenizer, speakers = load_persona(model_dir, persona, user=user)
    try:
        template = ollama_template(tokenizer, speakers)
    except TemplateError as err:
        raise TwinError(f"{model_dir}: no Ollama template for this chat template: {err}") from None
    rel = os.path.relpath(gguf_path.resolve(), out_path.parent.resolve())
    source = rel if rel.startswith("..") or os.path.isabs(rel) else f"./{rel}"
    source = _value(source, "the GGUF path")
    if any(ch.isspace() for ch in source) or '"' in source:
        source = f'"{source}"'
    who = f'persona "{speakers.persona}"'
    lines = [
        f"# Ollama Modelfile for the twinlm {who}"
        + (f" (run {info.get('run')}, step {info.get('step')})" if info.get("run") else ""),
        f"#   ollama create NAME -f {out_path.name} && ollama run NAME",
        "# TEMPLATE reproduces twinlm's training rendering token for token; do not edit it by hand.",
    ]
    if speakers.kind == "chat":
        lines.append(
            f"# A user message is {speakers.user}'s turn; an assistant message is {speakers.persona}'s."
        )
        if speakers.others:
            lines.append(
                '# In a group chat, start a user message with "Name: " to speak as '
                + ", ".join(speakers.others)
                + "."
            )
    lines += [f"FROM {source}", f'TEMPLATE """{_value(template.go(), "the template")}"""']
    if speakers.system:
        lines.append(f'SYSTEM """{_value(speakers.system, f"the system prompt of {who}")}"""')
    max_length = info.get("max_length")
    if isinstance(max_length, int) and max_length > 0:
        lines.append(f"PARAMETER num_ctx {max_length}")
    temp = _temperature(model_dir, info, temperature)
    if temp is not None:
        lines.append(f"PARAMETER temperature {temp:g}")
    for stop in template.stops:
        lines.append(f'PARAMETER stop "{_value(stop, "a stop string")}"')
    return "\n".join(lines) + "\n"


def write_modelfile(
    model_dir: Path,
    gguf_path: Path,
    out_path: Path,
    *,
    persona: str | None = None,
    temperature: float | None = None,
    user: str | None = None,
) -> Path:
    """Write `modelfile_text(...)` to `out_path` atomically and return the path."""
    text = modelfile_text(model_dir, gguf_path, out_path, persona=persona, temperature=temperature, user=user)
    try:
        write_atomic(Path(out_path), text)
    except OSError as err:
        raise TwinError(f"{out_path}: cannot write the Modelfile ({err.strerror or err})") from None
    return Path(out_path)


def model_name(run: str, persona: str) -> str:
    """An Ollama model name for a run's persona: lowercase letters, digits, '-', '_' and '.'."""
    raw = f"{run}-{persona}".lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", raw).strip("-._")
    return name or "twinlm"


def ollama_commands(out_path: Path, name: str) -> list[str]:
    """The shell commands that create the Ollama model from the Modelfile and chat with it."""
    return [
        f"ollama create {shlex.quote(name)} -f {shlex.quote(str(out_path))}",
        f"ollama run {shlex.quote(name)}",
    ]
