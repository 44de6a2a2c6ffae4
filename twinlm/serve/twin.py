"""The twin at chat time: a backend, its personas, and the prompt of a chat in the training rendering.

`open_twin` finds what to talk to: the newest export (export/RUN/: its GGUF through llama.cpp, else
its merged folder through transformers) or, where there is none, the newest run (its base model with
the run's adapter, through transformers); a `source` names a run, an export folder, a merged folder
or a GGUF. `Twin.prompt` makes the prompt token ids of a chat with `render_prompt`, the training
rendering, with the persona's system prompt filled for the people in this chat (as build filled it
for each training chat: twinlm.prepare.persona.persona_prompt with twinlm-export.json's
persona_settings), and as many of the newest turns as fit the context window.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import orjson

from twinlm.errors import TwinError
from twinlm.export.ollama_chat import Speakers, reply_text
from twinlm.export.provenance import PROVENANCE, read_provenance
from twinlm.prepare.render import TemplateError, render_prompt
from twinlm.prepare.sample import Sample, Turn
from twinlm.serve.backends import Backend, Generation, Sampling, open_backend

ASSISTANT = "assistant"  # the persona of assistant-style training (ChatGPT exports, datasets)
SOMEONE = "someone"  # who a persona chats with when nobody is named (as the export filled its prompt)
BackendChoice = Literal["auto", "transformers", "llama.cpp"]


@dataclass
class Twin:
    backend: Backend
    source: Path  # the export folder (GGUF / merged) or run folder used
    personas: dict[str, str | None]  # persona name -> its system prompt (twinlm-export.json "personas")
    me: str
    provenance: dict[str, Any]
    description: str = ""  # which model this is, in words, for the CLI to print
    others: dict[str, list[str]] = field(default_factory=dict)  # persona -> its partners, most frequent first

    def close(self) -> None:
        """Free the backend's model now where it has something to free (llama.cpp)."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    # --- personas ---------------------------------------------------------------------------------------

    def persona(self, name: str | None) -> str:
        """A persona's exact name from a user's spelling (case-insensitive); None: the first (you)."""
        if name is None:
            return self.me if self.me in self.personas else next(iter(self.personas))
        if name in self.personas:
            return name
        folded = {p.casefold(): p for p in self.personas}
        if name.casefold() in folded:
            return folded[name.casefold()]
        raise TwinError(f"no persona {name!r}; the personas are {', '.join(self.personas)}")

    def partner(self, persona: str) -> str:
        """Who a plain user message is when talking to `persona` (twinlm.export.ollama's rule)."""
        if persona == ASSISTANT:
            return "user"
        others = [n for n in self.others.get(persona, []) if n != persona]
        return others[0] if others else self.me if self.me and self.me != persona else SOMEONE

    def system_prompt(self, persona: str, partners: Sequence[str] = ()) -> str | None:
        """The persona's system prompt, filled for a chat with `partners` as build filled it."""
        persona = self.persona(persona)
        exported = self.personas[persona]
        settings = self.provenance.get("persona_settings")
        people = [p for p in dict.fromkeys(partners) if p != persona]
        if persona == ASSISTANT or not exported or not isinstance(settings, dict) or not people:
            return exported
        from pydantic import ValidationError

        from twinlm.config import BuildConfig
        from twinlm.prepare.persona import persona_prompt

        wanted = {k: settings[k] for k in ("system_prompt", "group_prompt", "targets") if settings.get(k)}
        try:
            build = BuildConfig.model_validate(wanted)
        except ValidationError:
            return exported
        return persona_prompt(
            build,
            str(self.provenance.get("template_style") or "named"),
            speaker=persona,
            participants=[persona, *people],
            platform=str(settings.get("platform") or "jsonl"),
            timestamp_ms=int(time.time() * 1000),
        )

    # --- prompts ----------------------------------------------------------------------------------------

    def prompt(
        self,
        persona: str,
        turns: Sequence[tuple[str, str]],
        *,
        system: str | None = None,
        max_new_tokens: int,
    ) -> list[int]:
        """turns: (speaker name, text), oldest first; `persona` speaks next. Made by render_prompt (the
        training rendering) with the persona's system prompt (or `system`), max_length =
        context_length - max_new_tokens (oldest turns dropped, system kept). For the assistant persona
        other speakers are the user role."""
        persona = self.persona(persona)
        if persona == ASSISTANT:
            kind = "assistant"
            chat = [Turn(ASSISTANT if who == persona else "user", text, False) for who, text in turns]
        else:
            kind = "chat"
            chat = [Turn(who, text, False) for who, text in turns]
        if system is None:
            system = self.system_prompt(persona, [t.speaker for t in chat])
        return self._render(
            Sample("chat", "chat", "chat", kind, tuple(chat), system or None), persona, max_new_tokens
        )

    def prompt_from_messages(
        self, persona: str, messages: Sequence[Mapping[str, Any]], *, max_new_tokens: int
    ) -> list[int]:
        """OpenAI-style messages -> prompt ids. `system` messages (joined by a blank line) replace the
        persona's system prompt; `assistant` messages are the persona's turns (one leading space taken
        off, as twinlm.export.ollama_chat does); a `user` message is the persona's usual partner, or
        the person its `name` says, or a partner named by a "Name: " prefix (ollama_chat.Speakers)."""
        persona = self.persona(persona)
        kind: Literal["chat", "assistant"] = ASSISTANT if persona == ASSISTANT else "chat"
        speakers = Speakers(persona, kind, self.partner(persona), tuple(self.others.get(persona, [])))
        systems: list[str] = []
        turns: list[tuple[str, str]] = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise TwinError(f"messages[{i}]: expected an object with role and content")
            role, content = m.get("role"), m.get("content")
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise TwinError(f"messages[{i}].content: expected a string")
            if role == "system":
                systems.append(content)
            elif role == "assistant":
                turns.append((persona, reply_text(content)))
            elif role == "user":
                name = m.get("name")
                if name is not None and (not isinstance(name, str) or not name.strip()):
                    raise TwinError(f"messages[{i}].name: expected a non-empty string")
                if kind == ASSISTANT:
                    turns.append(("user", content))
                elif name:
                    turns.append((name.strip(), content))
                else:
                    turns.append(speakers.speaker_of(content))
            else:
                raise TwinError(f"messages[{i}].role {role!r}: expected system, user or assistant")
        system = "\n\n".join(systems) if systems else None
        return self.prompt(persona, turns, system=system, max_new_tokens=max_new_tokens)

    def _render(self, sample: Sample, persona: str, max_new_tokens: int) -> list[int]:
        room = self.backend.context_length - max_new_tokens
        if room < 1:
            raise TwinError(
                f"max_tokens {max_new_tokens} leaves no room for the chat in a context of "
                f"{self.backend.context_length} tokens; ask for fewer"
            )
        try:
            ids = render_prompt(
                _fitting(sample, self.backend.tokenizer, room),
                self.backend.tokenizer,
                persona,
                max_length=room,
            )
        except TemplateError as err:
            raise TwinError(f"cannot render this chat: {err}") from None
        if len(ids) > room:
            raise TwinError(
                f"the system prompt and the last message alone are {len(ids)} tokens; the context has room "
                f"for {room} besides the reply: shorten them or ask for fewer max_tokens"
            )
        return ids

    def reply(
        self,
        persona: str,
        turns: Sequence[tuple[str, str]],
        *,
        sampling: Sampling,
        system: str | None = None,
        cancel: Any = None,
    ) -> Generation:
        """The persona's next turn after `turns`, streamed (see Backend.generate)."""
        persona = self.persona(persona)
        ids = self.prompt(persona, turns, system=system, max_new_tokens=sampling.max_tokens)
        return self.backend.generate(ids, _with_turn_stops(sampling, self, persona, turns), cancel)


def _fitting(sample: Sample, tokenizer: Any, room: int) -> Sample:
    """The sample without turns so old that render_prompt would drop them anyway, found in one pass.

    render_prompt drops the oldest turn and renders again until the prompt fits: one rendering per
    dropped turn, slow for a long history (a server request with hundreds of messages). A suffix
    of turns whose texts alone, stripped, are more than `room` tokens (less 2 a turn: a text may
    tokenize a little shorter inside the chat) cannot fit, nor can any longer one; so the turns
    before the longest suffix that might fit go at once, and render_prompt's result is unchanged."""
    texts = [t.text.strip() for t in sample.turns]
    if len(texts) < 8:
        return sample
    counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    total = 0
    for i in range(len(counts) - 1, 0, -1):
        total += max(counts[i] - 2, 0)
        if total > room:
            return replace(sample, turns=sample.turns[min(i + 1, len(texts) - 1) :])  # at least the last
    return sample


def _with_turn_stops(
    sampling: Sampling, twin: Twin, persona: str, turns: Sequence[tuple[str, str]]
) -> Sampling:
    """A template without turn tokens ("plain": "Name: text</s>") may run on into someone else's turn:
    there, "\\nName:" of each other speaker ends the reply too."""
    if twin.provenance.get("template_style") != "plain":
        return sampling
    names = {who for who, _ in turns if who != persona} | {twin.partner(persona)}
    return replace(sampling, stop=(*sampling.stop, *(f"\n{n}:" for n in sorted(names))))


# --- finding the model ----------------------------------------------------------------------------------


def _newest(paths: list[Path], stamp: str) -> list[Path]:
    return sorted(paths, key=lambda p: (p / stamp).stat().st_mtime)


def _exports(root: Path) -> list[Path]:
    folder = root / "export"
    if not folder.is_dir():
        return []
    found = [
        p for p in folder.iterdir() if not p.name.startswith(".") and (p / "merged" / PROVENANCE).is_file()
    ]
    return sorted(found, key=lambda p: (p / "merged" / PROVENANCE).stat().st_mtime)


def _runs(root: Path) -> list[Path]:
    folder = root / "runs"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if not p.name.startswith(".") and (p / "config.json").is_file()]
    return _newest([p for p in found if (p / "final").is_dir()], "config.json")


def _ggufs(export: Path) -> list[Path]:
    """The export's GGUFs of its final weights, newest first (checkpoint exports, RUN-step-N-*, apart)."""
    found = [
        p
        for p in export.glob("*.gguf")
        if not p.name.startswith(".") and not p.name.startswith(f"{export.name}-step-")
    ]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _llama_cpp_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


@dataclass(frozen=True)
class _Choice:
    kind: Literal["transformers", "llama.cpp"]
    model: Path  # GGUF or model folder
    info_dir: Path | None  # the merged folder (twinlm-export.json, tokenizer); None for a run
    run: Path | None = None  # a run: base model + adapter
    source: Path = Path()
    note: str = ""  # said after what is used (a newer run that is not exported)


def _resolve(root: Path, source: str | Path | None, backend: BackendChoice) -> _Choice:
    if source is None:
        exports = _exports(root)
        if exports:
            choice = _from_export(exports[-1], backend)
            newer = _trained_since(root, exports)
            if newer is None:
                return choice
            # A run trained after the newest export is not what the user talks to: say so, and how.
            note = (
                f"run {newer.name} is newer and not exported: `twinlm export -w {root}` to talk to it as a "
                f"GGUF, or name it (`{newer.name}`) to talk to it now"
            )
            return replace(choice, note=note)
        runs = _runs(root)
        if runs:
            return _from_run(runs[-1], backend)
        raise TwinError(
            f"{root}: nothing to talk to yet (no export/ and no finished run in runs/); train one with "
            "`twinlm train` (and export it with `twinlm export`)"
        )
    path = Path(source)
    if not path.exists() and "/" not in str(source):
        for candidate in (root / "export" / str(source), root / "runs" / str(source)):
            if candidate.exists():
                path = candidate
                break
    if path.is_file() and path.suffix == ".gguf":
        if backend == "transformers":
            raise TwinError(
                f"{path}: a GGUF runs with --backend llama.cpp; name the merged folder for transformers"
            )
        merged = _merged_for(path)
        return _Choice("llama.cpp", path, merged, source=path)
    if path.is_dir() and (path / PROVENANCE).is_file():  # a merged folder
        if backend == "llama.cpp":
            gguf = next(iter(_ggufs(path.parent)), None) if path.name == "merged" else None
            if gguf is None:
                raise TwinError(
                    f"{path}: a merged folder runs with --backend transformers (no GGUF beside it)"
                )
            return _Choice("llama.cpp", gguf, path, source=gguf)
        return _Choice("transformers", path, path, source=path)
    if path.is_dir() and (path / "merged" / PROVENANCE).is_file():
        return _from_export(path, backend)
    if path.is_dir() and (path / "config.json").is_file() and (path / "tokenizer").is_dir():
        return _from_run(path, backend)
    raise TwinError(
        f"{source}: not a run, an export folder, a merged model folder or a GGUF (looked in "
        f"{root / 'export'} and {root / 'runs'} too)"
    )


def _trained_since(root: Path, exports: list[Path]) -> Path | None:
    """The newest finished run started after the newest export and not exported itself, if any."""
    made = (exports[-1] / "merged" / PROVENANCE).stat().st_mtime
    exported = {p.name for p in exports}
    newer = [r for r in _runs(root) if r.name not in exported and (r / "config.json").stat().st_mtime > made]
    return newer[-1] if newer else None


def _merged_for(gguf: Path) -> Path:
    """The merged folder a GGUF was made from (export/RUN/RUN-TYPE.gguf: merged/; a checkpoint's,
    RUN-step-N-TYPE.gguf: merged-step-N/)."""
    stem = gguf.name.removeprefix(f"{gguf.parent.name}-")
    step = stem.split("-")[1] if stem.startswith("step-") and stem.count("-") >= 2 else None
    merged = gguf.parent / (f"merged-step-{step}" if step else "merged")
    if not (merged / PROVENANCE).is_file():
        raise TwinError(
            f"{gguf}: no merged folder beside it ({merged.name}/ with {PROVENANCE}), whose tokenizer and "
            "personas chat needs; export the run again with `twinlm export`"
        )
    return merged


def _from_export(folder: Path, backend: BackendChoice) -> _Choice:
    merged = folder / "merged"
    ggufs = _ggufs(folder)
    if backend == "llama.cpp" or (backend == "auto" and ggufs and _llama_cpp_installed()):
        if not ggufs:
            raise TwinError(
                f"{folder}: no GGUF to run with llama.cpp; make one with `twinlm export` or use "
                "--backend transformers"
            )
        return _Choice("llama.cpp", ggufs[0], merged, source=folder)
    return _Choice("transformers", merged, merged, source=folder)


def _from_run(run: Path, backend: BackendChoice) -> _Choice:
    if backend == "llama.cpp":
        raise TwinError(f"{run}: a run (not exported) runs with transformers; export it for llama.cpp")
    return _Choice("transformers", run / "final", None, run=run, source=run)


def _run_info(run: Path) -> tuple[Path, Path | None, dict[str, Any]]:
    """(model folder, adapter or None, provenance) of a run's final weights, as merge would record them."""
    from twinlm.export.merge import _base_folder
    from twinlm.export.provenance import provenance
    from twinlm.train.run import read_record

    record = read_record(run)
    final = run / "final"
    config_path = final / "adapter_config.json"
    if config_path.is_file():
        try:
            adapter_config = orjson.loads(config_path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as err:
            raise TwinError(f"{config_path}: unreadable ({err})") from None
        base, adapter = _base_folder(run, record, adapter_config), final
    else:
        base, adapter = final, None
    return base, adapter, provenance(run, record, "final", base, "run", "float32")


def open_twin(
    workspace: Path,
    source: str | Path | None = None,
    *,
    backend: BackendChoice = "auto",
    context_length: int | None = None,
    device: str | None = None,
    slots: int = 1,
) -> Twin:
    """The newest export (GGUF -> llama.cpp; merged folder -> transformers) or, where none, the newest
    run (base + adapter -> transformers); `source` names a run, export folder, merged folder or GGUF.
    `.description` says which it uses. `slots`: replies a GGUF makes at once (batched; see
    open_llama_cpp). One-line TwinError where nothing fits."""
    root = Path(workspace)
    choice = _resolve(root, source, backend)
    if choice.run is not None:
        model, adapter, info = _run_info(choice.run)
        opened = open_backend(
            "transformers",
            model,
            adapter=adapter,
            tokenizer_dir=choice.run / "tokenizer",
            context_length=context_length,
            device=device,
        )
        what = f"run {choice.run.name} (base model + {'adapter' if adapter else 'weights'}, not exported)"
    else:
        assert choice.info_dir is not None
        info = read_provenance(choice.info_dir)
        opened = open_backend(
            choice.kind,
            choice.model,
            tokenizer_dir=choice.info_dir,
            context_length=context_length,
            device=device,
            slots=slots,
        )
        what = f"{_shown(root, choice.model)}"
    if choice.note:
        what = f"{what} ({choice.note})"
    personas = info.get("personas")
    if not isinstance(personas, dict) or not personas:
        raise TwinError(f"{choice.source}: no personas recorded; export the run again with `twinlm export`")
    others = info.get("others")
    return Twin(
        backend=opened,
        source=choice.source,
        personas={str(k): (str(v) if v else None) for k, v in personas.items()},
        me=str(info.get("me") or ""),
        provenance=info,
        description=f"{what} via {opened.name}, context {opened.context_length} tokens",
        others={str(k): [str(n) for n in v] for k, v in others.items() if isinstance(v, list)}
        if isinstance(others, dict)
        else {},
    )


def _shown(root: Path, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
