"""One conversation as the build will train it (`twinlm show`, the review page).

The build's own steps, called the way `twinlm.prepare.build` calls them: speakers resolved by the same
`Identities`, messages in the same order (`_in_time_order`'s rule), each message through `clean_message`,
time-gap sessions by `split_by_gap`, those no target speaker talks in set aside (`Persona.trains_someone_in`),
the others through the `Redactor` and `clean_session`, turns by `merge_turns`, trained turns by the same
`Persona`. Only the cut of a whole conversation into review sessions restates the order and the
gap rule, on arrays (`_cut`: a chat of millions of messages is cached in a few bytes a message); a test
holds it to the build's functions. What each rule did is kept per message and per session (the counters
the build sums into build.json), and every message keeps its row id so it can be edited or excluded from
the view.

A view also holds what the build leaves out (the user's exclusions, messages superseded by a newer export)
so the user can bring them back. Review sessions ("parts") are time-gap runs of *all* messages: a build
session is a run of the cleaned ones, so it always lies inside one part (dropping messages only widens the
gaps), and excluding a part excludes each of its messages.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twinlm.config import TwinConfig
from twinlm.corpus.browse import prepare
from twinlm.corpus.db import Corpus, data_version
from twinlm.corpus.queries import account_names, owners
from twinlm.identities import ME, Identities
from twinlm.prepare.clean import Msg, clean_message, clean_session
from twinlm.prepare.persona import persona_for
from twinlm.prepare.redact import Redactor
from twinlm.prepare.sample import read_sample_outlines
from twinlm.prepare.select import Line
from twinlm.prepare.sessions import merge_turns, split_by_gap

_SESSION_RULE = "dropped by a session rule"  # a message's reason where its session's counts name none


@dataclass(slots=True)
class MessageView:
    id: int
    native_id: str
    author_name: str
    speaker: str  # as the build names the speaker (me -> the first name of `me:`)
    ts: int | None
    kind: str
    text: str  # the user's edit, else the export's text
    original: str  # the export's text
    edited: bool  # by the user
    excluded: bool  # by the user (this message, or its whole conversation)
    superseded: bool  # no longer in the newest export of its conversation
    trained_text: str | None = None  # cleaned and redacted; None when a rule dropped it
    rules: dict[str, int] = field(default_factory=dict)  # what each cleaning / redaction rule did
    sample: str | None = None  # the sample id it lands in
    turn: int | None = None  # its turn in that sample
    trained: bool = False  # its turn is trained

    @property
    def status(self) -> str:
        if self.superseded:
            return "superseded"
        if self.excluded:
            return "excluded"
        if self.sample is None:
            return "dropped"
        return "trained" if self.trained else "context"


@dataclass(slots=True)
class TurnView:
    speaker: str
    text: str
    trained: bool
    messages: list[int]


@dataclass(slots=True)
class SampleView:
    id: str  # as in the build's samples.jsonl
    turns: list[TurnView]
    kept: bool  # False: the build makes no sample of it (no trained turn after the first)
    rules: dict[str, int] = field(default_factory=dict)  # session rules (duplicates, enders, low quality)
    # The training rows it becomes (twinlm.curate.pieces, filled by `show`): several when the build splits
    # it under build.max_length, each with its `build --preview` id and the turns it trains.
    pieces: list[Any] = field(default_factory=list)

    @property
    def trained_chars(self) -> int:
        return sum(len(t.text) for t in self.turns if t.trained) if self.kept else 0


@dataclass(slots=True)
class PartView:
    index: int
    messages: list[MessageView]
    samples: list[SampleView]

    @property
    def excluded(self) -> bool:
        return all(m.excluded for m in self.messages)


@dataclass(slots=True)
class ConversationView:
    id: int
    source: str
    native_id: str
    kind: str
    title: str
    excluded: bool
    note: str | None
    parts: list[PartView]  # the sessions asked for
    total_parts: int = 0  # every session of the conversation

    @property
    def key(self) -> str:
        return f"{self.source}:{self.native_id}"

    def samples(self) -> list[SampleView]:
        return [s for p in self.parts for s in p.samples if s.kept]

    def rule_counts(self) -> dict[str, int]:
        """What each rule did in the sessions shown, counted as the build counts it: the message rules
        and redaction from the messages, the session rules from the sessions. (A message a session rule
        dropped names that session's reasons too, all of them where it has several: not counted again.)"""
        counts: Counter[str] = Counter()
        for part in self.parts:
            by_sessions = {rule for sample in part.samples for rule in sample.rules}
            for m in part.messages:
                counts.update(
                    {
                        rule: n
                        for rule, n in m.rules.items()
                        if rule not in by_sessions and rule != _SESSION_RULE
                    }
                )
            for sample in part.samples:
                counts.update(sample.rules)
        return dict(counts)

    def to_json(self) -> dict[str, Any]:
        """The sessions asked for; samples and trained turns are theirs (every session's for `show`)."""
        return {
            "id": self.id,
            "key": self.key,
            "source": self.source,
            "kind": self.kind,
            "title": self.title,
            "excluded": self.excluded,
            "note": self.note,
            "parts": self.total_parts,
            "first": self.parts[0].index if self.parts else 0,
            "samples": len(self.samples()),
            "trained_turns": sum(t.trained for s in self.samples() for t in s.turns),
            "trained_chars": sum(s.trained_chars for s in self.samples()),
            "sessions": [part_json(p) for p in self.parts],
        }


def part_json(part: PartView) -> dict[str, Any]:
    return {
        "index": part.index,
        "excluded": part.excluded,
        "first": next((m.ts for m in part.messages if m.ts is not None), None),
        "last": next((m.ts for m in reversed(part.messages) if m.ts is not None), None),
        "messages": [
            {
                "id": m.id,
                "native_id": m.native_id,
                "author": m.author_name,
                "speaker": m.speaker,
                "ts": m.ts,
                "kind": m.kind,
                "text": m.text,
                "original": m.original,
                "edited": m.edited,
                "status": m.status,
                "trained_text": m.trained_text,
                "rules": m.rules,
                "sample": m.sample,
                "turn": m.turn,
            }
            for m in part.messages
        ],
        "samples": [
            {
                "id": s.id,
                "kept": s.kept,
                "rules": s.rules,
                "turns": [
                    {"speaker": t.speaker, "text": t.text, "trained": t.trained, "messages": t.messages}
                    for t in s.turns
                ],
                "pieces": [{"id": p.id, "trained_turns": list(p.trained_turns)} for p in s.pieces],
            }
            for s in part.samples
        ],
    }


# Every message's id, time (NO_TIME for none) and whether the build leaves it out, in the build's row order
# (the curation index holds them).
_KEYS = """
SELECT id, coalesce(ts, ?), excluded OR superseded_by_import IS NOT NULL
FROM messages WHERE conversation + 0 = ? ORDER BY id
"""
NO_TIME = -(1 << 63)  # a message without a time, in the int64 array of times
_TEXTS = "SELECT id, coalesce(user_text, text), kind FROM messages WHERE id IN ({marks})"
_MESSAGES = """
SELECT id, native_id, author_id, author_name, ts, kind, role, text, user_text, excluded,
       superseded_by_import IS NOT NULL
FROM messages WHERE id IN ({marks})
"""

_IDS_A_QUERY = 500  # under SQLite's limit on bound parameters


def _by_id(db: Any, query: str, ids: list[int]) -> dict[int, tuple[Any, ...]]:
    """The rows of `query` (its first column the message id, `{marks}` the ids' places) for `ids`."""
    found = {}
    for start in range(0, len(ids), _IDS_A_QUERY):
        chunk = ids[start : start + _IDS_A_QUERY]
        found.update(
            (row[0], row) for row in db.execute(query.format(marks=",".join("?" * len(chunk))), chunk)
        )
    return found


# The sessions of the last conversations viewed (Viewer._parts): the review page asks for one page at a time.
_PARTS: OrderedDict[tuple[Any, ...], _Parts] = OrderedDict()
_PARTS_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class _Parts:
    """A conversation cut into review sessions, in arrays: 17 bytes a message (a chat of millions is cached
    and paged through; a Python object per message cost ~110 bytes, 300 MB for a 2.7M-message chat)."""

    ids: np.ndarray  # int64: the message ids in time order
    times: np.ndarray  # int64: their times (NO_TIME for none)
    out: np.ndarray  # bool: left out by the build (excluded by the user, superseded by a newer export)
    starts: np.ndarray  # int64: where each session starts in `ids`, then len(ids)
    # int64: the build sessions (sample numbers) each session's messages make once cleaned, -1 until they
    # have been cleaned (Viewer._numbered_before): the samples of a later session are numbered after them.
    made: np.ndarray

    def __len__(self) -> int:
        return len(self.starts) - 1

    def ids_of(self, first: int, end: int) -> list[int]:
        """The message ids of sessions first to end - 1."""
        return self.ids[self.starts[first] : self.starts[end]].tolist()


def _cut(rows: np.ndarray, gap_minutes: float, one_session: bool) -> _Parts:
    """`rows` (id, time or NO_TIME, left out; in row order) put in time order as the build orders a chat
    (`_in_time_order`: a message without a time keeps its place after the one before it) and cut where
    `split_by_gap` cuts (nowhere for `one_session`)."""
    ids, times, out = rows[:, 0], rows[:, 1], rows[:, 2].astype(bool)
    timed = times != NO_TIME
    # Each message's sort key is its time, or the time of the last timed message before it (-inf first).
    last = np.maximum.accumulate(np.where(timed, np.arange(len(times)), -1))
    keys = np.where(last >= 0, times[np.maximum(last, 0)].astype(np.float64), -np.inf)
    if len(keys) > 1 and bool((keys[1:] < keys[:-1]).any()):  # else already in time order (the usual case)
        order = np.argsort(keys, kind="stable")  # stable: ties keep the row order
        ids, times, out = ids[order], times[order], out[order]
    group = np.zeros(len(ids), dtype=np.int64)
    breaks = np.zeros(0, np.int64) if one_session else np.flatnonzero(_breaks(times, group, gap_minutes))
    starts = np.concatenate(([0], breaks, [len(ids)])).astype(np.int64) if len(ids) else np.zeros(1, np.int64)
    return _Parts(ids.copy(), times.copy(), out.copy(), starts, np.full(len(starts) - 1, -1, dtype=np.int64))


def _sessions_made(times: np.ndarray, group: np.ndarray, groups: int, gap_minutes: float) -> np.ndarray:
    """Per group (0 to groups - 1), how many sessions `split_by_gap` makes of its messages (`times`, in
    order, each with its group; a group's messages together)."""
    cuts = _breaks(times, group, gap_minutes)
    made = (np.bincount(group, minlength=groups) > 0).astype(np.int64)
    return made + np.bincount(group[cuts], minlength=groups)


def _breaks(times: np.ndarray, group: np.ndarray, gap_minutes: float) -> np.ndarray:
    """Where `iter_by_gap` starts a new session, run on each group (runs of equal `group`) on its own: a
    timed message more than the gap after the last timed message before it in its group."""
    gap_ms = gap_minutes * 60_000
    if not len(times):
        return np.zeros(0, dtype=bool)
    timed = times != NO_TIME
    previous = np.maximum.accumulate(np.where(timed, np.arange(len(times)), -1))
    previous = np.concatenate(([-1], previous[:-1]))  # the last timed message before each one
    at = np.maximum(previous, 0)
    return timed & (previous >= 0) & (group[at] == group) & ((times - times[at]) > gap_ms)


class Viewer:
    """Views of conversations for one config; the speakers and the persona are resolved once."""

    def __init__(self, config: TwinConfig, corpus: Corpus, identities: Identities | None = None) -> None:
        prepare(corpus)
        self.corpus = corpus
        self.config = config
        self.settings = settings = config.build
        self.identities = identities or Identities(config, owners(corpus), account_names(corpus))
        self.me_name = config.me[0] if config.me else "me"
        if isinstance(settings.targets, list):  # as the build: any alias or name used means that speaker
            meant = sorted(set().union(*map(self.identities.targets, settings.targets)))
            self.settings = settings.model_copy(update={"targets": meant})
        self.redactor = Redactor(settings.redact, config.people)

    def conversation(self, row_id: int, first: int = 0, count: int | None = None) -> ConversationView:
        """The conversation's sessions `first` to `first + count` (all of them when `count` is None).

        Sessions are cut from every message's time alone (one indexed read), so a page of a huge chat
        reads and cleans its own messages. Sample ids are numbered as the build numbers them: the build
        cuts its sessions after cleaning, so a message a rule drops can part one review session into two
        of the build's. A page after the first counts the earlier sessions' by cleaning their messages,
        once (kept with the cut; a page already shown counts its own).
        """
        head = self.corpus.db.execute(
            "SELECT source, native_id, kind, title, excluded, user_note FROM conversations WHERE id = ?",
            (row_id,),
        ).fetchone()
        if head is None:
            raise KeyError(row_id)
        source, native_id, kind, title, excluded, note = head
        parts = self._parts(row_id, kind)
        chosen = (
            range(len(parts))
            if count is None
            else range(min(first, len(parts)), min(first + count, len(parts)))
        )
        conversation = ConversationView(
            row_id, source, native_id, kind, title, bool(excluded), note, [], len(parts)
        )
        # The build numbers its sessions across the whole conversation (those of chats between people).
        numbered = kind == "chat" and not excluded
        index = self._numbered_before(parts, chosen.start) if numbered and chosen else 0
        wanted = parts.ids_of(chosen.start, chosen.stop) if chosen else []
        rows = _by_id(self.corpus.db, _MESSAGES, wanted)
        key = f"{source}:{native_id}"
        for n in chosen:
            timed = [self._timed(source, bool(excluded), rows[i]) for i in parts.ids_of(n, n + 1)]
            samples, after = self._samples(kind, key, timed, index)
            if numbered:  # its messages are cleaned now: the next page needs not clean them again
                parts.made[n] = after - index
            index = after
            conversation.parts.append(PartView(n, [t.message for t in timed], samples))
        return conversation

    def _parts(self, row_id: int, kind: str) -> _Parts:
        """The conversation cut into sessions by time, kept for the next page or change while the corpus and
        the cleaning rules stay the same (a long chat costs a second to cut)."""
        db, gap = self.corpus.db, self.settings.session_gap_minutes
        key = (
            str(self.corpus.path),
            row_id,
            data_version(db),
            kind,
            gap,
            self.settings.clean.model_dump_json(),  # the rules decide the sample numbers (_numbered_before)
        )
        with _PARTS_LOCK:  # the review page's requests run in threads
            parts = _PARTS.get(key)
            if parts is not None:
                _PARTS.move_to_end(key)
                return parts
        found = db.execute(_KEYS, (NO_TIME, row_id))
        rows = np.fromiter(itertools.chain.from_iterable(found), dtype=np.int64).reshape(-1, 3)
        # An assistant chat or a document is one session whatever the pauses, as in the build.
        parts = _cut(rows, gap, one_session=kind != "chat")
        with _PARTS_LOCK:
            _PARTS[key] = parts
            while len(_PARTS) > 8:
                _PARTS.popitem(last=False)
        return parts

    def _numbered_before(self, parts: _Parts, first: int) -> int:
        """The build sessions the messages of review sessions 0 to first - 1 make: the messages of those not
        counted yet go through the message rules, as the build cuts its sessions after them."""
        todo = np.flatnonzero(parts.made[:first] < 0)
        if len(todo):
            session = np.repeat(np.arange(len(parts)), np.diff(parts.starts))  # each message's session
            at = np.flatnonzero(np.isin(session, todo) & ~parts.out)
            kept = np.zeros(len(at), dtype=bool)
            clean, counts = self.settings.clean, Counter[str]()
            step = 20 * _IDS_A_QUERY  # a block at a time: a chat's texts are not held together
            for start in range(0, len(at), step):
                block = parts.ids[at[start : start + step]].tolist()
                texts = _by_id(self.corpus.db, _TEXTS, block)
                for k, i in enumerate(block, start):
                    kept[k] = clean_message(texts[i][1], texts[i][2], clean, counts) is not None
            at = at[kept]
            made = _sessions_made(parts.times[at], session[at], len(parts), self.settings.session_gap_minutes)
            parts.made[todo] = made[todo]
        return int(parts.made[:first].sum())

    def _timed(self, source: str, conversation_excluded: bool, row: tuple[Any, ...]) -> _Timed:
        mid, nid, author_id, author_name, ts, mkind, role, text, user_text, m_excluded, superseded = row
        speaker = self.identities.speaker(source, author_id, author_name)
        view = MessageView(
            mid,
            nid,
            author_name,
            self.me_name if speaker == ME else speaker,
            ts,
            mkind,
            user_text if user_text is not None else text,
            text,
            user_text is not None,
            bool(conversation_excluded or m_excluded),
            bool(superseded),
        )
        return _Timed(Line(speaker, author_name, view.text, mkind, role, ts), view)

    def _samples(self, kind: str, key: str, part: list[_Timed], index: int) -> tuple[list[SampleView], int]:
        settings = self.settings
        assistant_style = kind in ("assistant", "dataset")
        cleaned: list[_Timed] = []
        for t in part:
            m, line = t.message, t.line
            if m.excluded or m.superseded:
                continue
            counts: Counter[str] = Counter()
            text = clean_message(line.text, line.kind, settings.clean, counts, assistant=assistant_style)
            if text is not None and kind == "document":
                text = self.redactor(text, counts)
            m.rules = dict(counts)
            m.trained_text = text
            if text is not None:
                msg = Msg(line.speaker, text, line.kind, line.timestamp_ms, line.role)
                cleaned.append(_Timed(line, m, msg))
        if kind == "document":  # chunked whole by the build: no sessions or turns to show
            return [], index
        persona = persona_for(kind, settings.targets)
        sessions = split_by_gap(cleaned, settings.session_gap_minutes) if kind == "chat" else [cleaned]
        found = []
        for session in sessions:
            sample_id = f"{key}#{index}"
            index += 1
            counts = Counter[str]()
            if session and not persona.trains_someone_in(t.msg for t in session):
                for t in session:  # never redacted nor trained (the build sets the session aside)
                    t.message.trained_text = None
                found.append(SampleView(sample_id, [], False, {}))
                continue
            if settings.redact.enabled:
                for t in session:  # as the build redacts the session, each message's counts apart
                    redacted: Counter[str] = Counter()
                    (t.msg,) = self.redactor.session([t.msg], redacted, ME)
                    t.message.trained_text = t.msg.text
                    t.message.rules.update(redacted)
            msgs = [t.msg for t in session]
            kept = clean_session(msgs, settings.clean, counts) if kind == "chat" else msgs
            survivors = {id(m) for m in kept or ()}
            # Which session rule dropped a message is in the counts: all of them when the session went.
            why = [k for k in counts if k.startswith("session dropped" if not kept else "message dropped")]
            for t in session:
                if id(t.msg) not in survivors:
                    t.message.rules.update(dict.fromkeys(why or [_SESSION_RULE], 1))
            if not kept:
                found.append(SampleView(sample_id, [], False, dict(counts)))
                continue
            alive = [t for t in session if id(t.msg) in survivors]
            roles = {m.author: m.role for m in kept}
            merged = merge_turns((m.author, m.text) for m in kept)
            groups: list[list[_Timed]] = []  # one speaker's consecutive messages: one turn, as merge_turns
            for t in alive:
                if groups and groups[-1][-1].msg.author == t.msg.author:
                    groups[-1].append(t)
                else:
                    groups.append([t])
            turns = [TurnView("", "", False, [t.message.id for t in group]) for group in groups]
            assert len(turns) == len(merged)
            for i, (turn, (speaker, text)) in enumerate(zip(turns, merged, strict=True)):
                turn.speaker = self.me_name if speaker == ME else speaker
                turn.text = text
                turn.trained = i > 0 and persona.trains(speaker, roles[speaker])
            sample = SampleView(sample_id, turns, any(t.trained for t in turns), dict(counts))
            if sample.kept:
                for i, (turn, group) in enumerate(zip(turns, groups, strict=True)):
                    for t in group:
                        t.message.sample, t.message.turn, t.message.trained = sample_id, i, turn.trained
            found.append(sample)
        return found, index


@dataclass(slots=True)
class _Timed:
    """A line with its message view (and its cleaned Msg): what split_by_gap and the views share."""

    line: Line
    message: MessageView
    msg: Any = None

    @property
    def timestamp_ms(self) -> int | None:
        return self.line.timestamp_ms


def last_build(data: Any) -> dict[str, dict[str, int]]:
    """What the last build made of each conversation (samples, trained turns), from its samples.jsonl."""
    found: dict[str, dict[str, int]] = {}
    if not (data / "samples.jsonl").is_file():
        return found
    for conversation, turns in read_sample_outlines(data / "samples.jsonl"):
        entry = found.setdefault(conversation, {"samples": 0, "trained_turns": 0, "trained_chars": 0})
        entry["samples"] += 1
        for trained, chars in turns:
            if trained:
                entry["trained_turns"] += 1
                entry["trained_chars"] += chars
    return found
