"""The pieces a conversation's samples are split into under build.max_length (`twinlm show`).

A sample longer than build.max_length tokens becomes several training rows, cut between turns by the
build's own rendering (`render_many`, its `split`). The view's samples are turned back into the build's
`Sample`s (same turns, same system prompts: `_system`, `_speaker_prompts`) and rendered with the build's
tokenizer, so each piece gets the id `build --preview` gives it (`ID#piece-K/N`, K counted from 1 in row
order; one row keeps the sample's id) and the turns it trains.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from twinlm.curate.view import ConversationView, Viewer
from twinlm.models import resolve_model
from twinlm.prepare.build import _speaker_prompts, _system, load_tokenizer
from twinlm.prepare.render import detect_style, render_many
from twinlm.prepare.sample import Sample, Turn
from twinlm.prepare.select import Chat


@dataclass(frozen=True, slots=True)
class Piece:
    id: str  # as `build --preview` names the row
    trained_turns: tuple[int, ...]  # indices into the sample's turns


def piece_ids(sample_id: str, count: int) -> list[str]:
    """The ids `build --preview` gives a sample's rows."""
    return [sample_id] if count == 1 else [f"{sample_id}#piece-{k}/{count}" for k in range(1, count + 1)]


def add_pieces(viewer: Viewer, view: ConversationView, root: Path) -> None:
    """Fills each kept sample's `pieces` (empty when none is made: no turn fits max_length)."""
    kept = view.samples()
    if not kept or view.kind not in ("chat", "assistant", "dataset"):
        return
    settings = viewer.settings
    tokenizer = load_tokenizer(
        resolve_model(settings.model, root), trust_remote_code=settings.trust_remote_code
    )
    style = detect_style(tokenizer)
    system_prompt = viewer.corpus.db.execute(
        "SELECT system_prompt FROM conversations WHERE id = ?", (view.id,)
    ).fetchone()[0]
    chat = Chat(view.key, view.source, view.kind, view.title, "", (), system_prompt, ())
    times = {m.id: m.ts for p in view.parts for m in p.messages}
    started: dict[str, int | None] = {}
    samples = []
    for s in kept:
        turns = [Turn(t.speaker, t.text, t.trained) for t in s.turns]
        first = next((times[i] for t in s.turns for i in t.messages if times[i] is not None), None)
        if view.kind == "chat":
            started[s.id] = first
        samples.append(
            Sample(
                id=s.id,
                conversation=view.key,
                source=view.source,
                kind="chat" if view.kind == "chat" else "assistant",
                turns=tuple(turns),
                system=_system(chat, first, turns, settings, style),
            )
        )
    rows: defaultdict[str, list[tuple[int, ...]]] = defaultdict(list)
    for r in render_many(
        samples,
        tokenizer,
        settings.max_length,
        Counter(),
        system_for=_speaker_prompts(settings, style, started),
    ):
        rows[r.sample_id].append(r.trained_turns)
    for s in kept:
        found = rows.get(s.id, [])
        s.pieces = [Piece(i, t) for i, t in zip(piece_ids(s.id, len(found)), found, strict=True)]
