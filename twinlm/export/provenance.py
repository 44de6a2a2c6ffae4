"""twinlm-export.json: where a merged model comes from, and the persona prompts chat and the Modelfile use.

Written by `twinlm.export.merge` into the merged folder. Keys: twinlm_export (format 1), run, step (a
number, or "final"), base_model (as the run names it), base_path (the folder merged into), method, dtype,
created (UTC, ISO 8601), twinlm_version, max_length (the run's build.max_length), template_style, me,
personas ({name: system prompt, or None where the persona had none}), persona_settings (the prompt
templates, targets and platform, for filling a prompt with other participants at chat time).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from twinlm import __version__
from twinlm.errors import TwinError

PROVENANCE = "twinlm-export.json"


def read_provenance(folder: Path) -> dict[str, Any]:
    """The provenance of a merged model folder; a TwinError in one line where it is missing or unreadable."""
    path = Path(folder) / PROVENANCE
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise TwinError(f"{path}: missing; not a folder `twinlm merge` wrote (merge the run again)") from None
    except (OSError, orjson.JSONDecodeError) as err:
        raise TwinError(f"{path}: unreadable ({err}); merge the run again") from None
    if not isinstance(data, dict):
        raise TwinError(f"{path}: not a JSON object; merge the run again")
    return data


def provenance(
    run_dir: Path, record: dict[str, Any], step: int | str, base: Path, method: str, out_dtype: str
) -> dict[str, Any]:
    """The provenance of a merge of run `run_dir` (its record `record`) at `step` into `base`."""
    config = record.get("config") or {}
    build_settings = config.get("build") or {}
    created = datetime.now(UTC)
    info: dict[str, Any] = {}
    if (run_dir / "build.json").is_file():
        try:
            info = orjson.loads((run_dir / "build.json").read_bytes())
        except orjson.JSONDecodeError as err:
            raise TwinError(f"{run_dir / 'build.json'}: unreadable ({err})") from None
    named, platform = personas(record, info, created)
    return {
        "twinlm_export": 1,
        "run": run_dir.name,
        "step": step,
        "base_model": record.get("model"),
        "base_path": str(base.resolve()),
        "method": method,
        "dtype": out_dtype,
        "created": created.isoformat(timespec="seconds"),
        "twinlm_version": __version__,
        "max_length": build_settings.get("max_length"),
        "template_style": record.get("template_style") or info.get("template_style"),
        "me": record.get("me") or info.get("me"),
        "personas": named,
        # What chat needs to fill a prompt for other participants, a platform or a date the same way.
        "persona_settings": {
            "system_prompt": build_settings.get("system_prompt"),
            "group_prompt": build_settings.get("group_prompt"),
            "targets": build_settings.get("targets"),
            "platform": platform,
        },
    }


def personas(
    record: dict[str, Any], info: dict[str, Any], created: datetime
) -> tuple[dict[str, str | None], str]:
    """{persona name: its system prompt} for chat and the Modelfile, and the platform used to fill them.

    Chat personas are the speakers the run trained (build.json's trained_by_speaker), each filled with
    `persona_prompt` as a chat with "someone" on the platform most trained, dated the export day.
    Assistant-style training (ChatGPT, datasets) is the persona "assistant", whose samples carried their
    own system prompt or none: None.
    """
    from pydantic import ValidationError

    from twinlm.config import TwinConfig
    from twinlm.prepare.persona import persona_prompt
    from twinlm.prepare.whose import DOCUMENTS

    try:
        settings = TwinConfig.model_validate(record.get("config") or {}).build
    except ValidationError:
        settings = TwinConfig().build
    style = str(record.get("template_style") or info.get("template_style") or "named")
    me = str(record.get("me") or info.get("me") or "me")
    by_source = info.get("trained_by_source") or {}
    chats = [s for s in by_source if s not in ("documents", "chatgpt") and by_source[s].get("tokens")]
    platform = chats[0] if chats else "jsonl"  # trained_by_source is sorted by trained tokens
    speakers = [
        name
        for name, counts in (info.get("trained_by_speaker") or {}).items()
        if name != DOCUMENTS and counts.get("tokens", counts.get("turns"))
    ]
    targets = settings.targets
    if targets == "assistant":
        return {"assistant": None}, platform
    if targets in ("auto", "me"):
        # Under "auto" the only other trained turns are assistant-style samples' assistant replies.
        names = [me] if me in speakers or not speakers else []
        assistant = targets == "auto" and any(name != me for name in speakers)
    else:
        names, assistant = speakers, False
    when = int(created.timestamp() * 1000)
    personas: dict[str, str | None] = {
        name: persona_prompt(
            settings, style, speaker=name, participants=[name], platform=platform, timestamp_ms=when
        )
        for name in names
    }
    if assistant:
        personas["assistant"] = None
    return personas, platform
