"""twinlm-export.json: where a merged model comes from, and the persona prompts chat and the Modelfile use.

Written by `twinlm.export.merge` into the merged folder. Keys: twinlm_export (format 1), run, step (a
number, or "final"), base_model (as the run names it), base_path (the folder merged into), method, dtype,
created (UTC, ISO 8601), twinlm_version, max_length (the run's build.max_length), template_style, me,
personas ({name: system prompt, or None where the persona had none}), persona_settings (the prompt
templates, targets and platform, for filling a prompt with other participants at chat time), others.

"others" ({persona: [names]}, added after format 1's first keys; readers treat it as optional): the
people each chat persona talked with in its training samples, most trained first (ranked by the
persona's trained turns in samples where they speak, ties by name; at most MAX_PARTNERS). Chat and
the Modelfile take the first as the other side of a plain user message instead of "someone". Read
from the run's dataset (samples.jsonl, where its build.json is still the run's); a persona with no
partner found, or a run whose dataset has changed or gone, gets [] (the "assistant" persona none).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from twinlm import __version__
from twinlm.errors import TwinError

PROVENANCE = "twinlm-export.json"
MAX_PARTNERS = 50  # a persona's partners kept in "others" (a large group chat has hundreds)
ASSISTANT = "assistant"  # the persona of assistant-style training


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
        "others": partners(run_dir, record, list(named)),
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
        return {ASSISTANT: None}, platform
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
        personas[ASSISTANT] = None
    return personas, platform


def persona_system(info: dict[str, Any], persona: str, partner: str) -> str | None:
    """The persona's system prompt filled for a chat with `partner`, as build fills it, dated the export
    day like "personas"; the recorded prompt where it cannot be refilled (the assistant, no prompt, no
    persona_settings, a partner who is nobody in particular)."""
    recorded = (info.get("personas") or {}).get(persona)
    settings = info.get("persona_settings")
    if persona == ASSISTANT or not recorded or not isinstance(settings, dict) or partner in ("", "someone"):
        return str(recorded) if recorded else None
    from pydantic import ValidationError

    from twinlm.config import BuildConfig
    from twinlm.prepare.persona import persona_prompt

    wanted = {k: settings[k] for k in ("system_prompt", "group_prompt", "targets") if settings.get(k)}
    try:
        build = BuildConfig.model_validate(wanted)
        when = int(datetime.fromisoformat(str(info.get("created"))).timestamp() * 1000)
    except (ValidationError, ValueError):
        return str(recorded)
    return persona_prompt(
        build,
        str(info.get("template_style") or "named"),
        speaker=persona,
        participants=[persona, partner],
        platform=str(settings.get("platform") or "jsonl"),
        timestamp_ms=when,
    )


def partners(run_dir: Path, record: dict[str, Any], names: list[str]) -> dict[str, list[str]]:
    """{chat persona: the people it talked with in its training samples, most trained first}.

    Each trained turn of a persona counts once for every other speaker of its sample (train split,
    chats only). The samples are the run's dataset's samples.jsonl, used only while that dataset's
    build.json is byte for byte the one the run copied (a rebuilt dataset is not what was trained)."""
    counts: dict[str, Counter[str]] = {name: Counter() for name in names if name != ASSISTANT}
    samples = _trained_samples(run_dir, record)
    if counts and samples is not None:
        try:
            with samples.open("rb") as f:
                for line in f:
                    _count_partners(line, counts)
        except OSError as err:
            raise TwinError(f"{samples}: unreadable ({err.strerror or err})") from None
    return {
        name: [other for other, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_PARTNERS]]
        for name, c in counts.items()
    }


def _trained_samples(run_dir: Path, record: dict[str, Any]) -> Path | None:
    dataset = record.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        return None
    samples, build = Path(dataset) / "samples.jsonl", Path(dataset) / "build.json"
    try:
        same = build.read_bytes() == (run_dir / "build.json").read_bytes()
    except OSError:
        return None
    return samples if same and samples.is_file() else None


def _count_partners(line: bytes, counts: dict[str, Counter[str]]) -> None:
    try:
        sample = orjson.loads(line)
    except orjson.JSONDecodeError:
        return  # a blank or hand-broken line: the build's validation reports it, not the export
    if not isinstance(sample, dict) or sample.get("kind") != "chat" or sample.get("split") == "eval":
        return
    turns = [t for t in sample.get("turns") or () if isinstance(t, dict)]
    speakers = {str(t.get("speaker") or "") for t in turns} - {""}
    for turn in turns:
        who = str(turn.get("speaker") or "")
        if turn.get("trained") and who in counts:
            counts[who].update(speakers - {who})
