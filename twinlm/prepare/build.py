"""`twinlm build`: from the corpus to a dataset that trains exactly the right tokens.

Top to bottom: select conversations -> clean messages -> split into sessions -> set aside the sessions
no target speaker talks in -> redact -> session rules -> merge turns -> mark the persona's turns as
trained -> documents into chunks -> render with the base model's own chat template and mask labels ->
train/eval split (by trained tokens) -> write the folder. So the session rules' and redaction's counts
in build.json are those of the sessions that can reach the dataset.
The folder describes itself (build.json: config, tokenizer, template style, persona prompt), so
training needs only its path.

It streams (issue 18): chats are read one at a time (a very long one row by row), each session goes
on to rendering as soon as it is cut, rows and sample lines go to temporary files (stream.py) and the
split, decided from a few numbers per sample, is applied while they are copied into the dataset. Memory
holds one chat (of a very long one, the session being cut) and a render batch, not the dataset.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from twinlm.collector import collector_paused
from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.corpus.queries import account_names, owners
from twinlm.errors import TwinError
from twinlm.files import Staged, remove_leftovers
from twinlm.identities import ME, Identities
from twinlm.models import resolve_model
from twinlm.prepare.clean import Msg, clean_message, clean_session
from twinlm.prepare.documents import document_samples
from twinlm.prepare.outputs import eval_positions, eval_share
from twinlm.prepare.persona import Persona, persona_for, persona_prompt
from twinlm.prepare.redact import Redactor, redacted_kinds
from twinlm.prepare.render import SystemFor, detect_style, render_arrays
from twinlm.prepare.sample import Sample, Turn
from twinlm.prepare.select import Chat, Reading, chats
from twinlm.prepare.sessions import iter_by_gap, merge_turns
from twinlm.prepare.stream import SampleKeys, Spill, SplitStats
from twinlm.prepare.teacher import ConfirmSend, generate_qa
from twinlm.prepare.whose import Tally, warnings


def load_tokenizer(model: str, *, trust_remote_code: bool = False) -> Any:
    """The base model's tokenizer (a local folder, or a hub id: fetched once, then cached)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TwinError(f"build.model: cannot load a tokenizer from {model!r} ({first})") from None


@dataclass(slots=True)
class BuildResult:
    folder: Path
    samples: dict[str, int] = field(default_factory=dict)  # per split
    tokens: dict[str, int] = field(default_factory=dict)  # per split
    trained_tokens: dict[str, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)  # what each rule removed or changed
    report: dict[str, Any] = field(default_factory=dict)
    # Temporary files a killed build left in the folder, removed before this one wrote (not in build.json,
    # which stays the same for the same corpus and config).
    removed_leftovers: list[str] = field(default_factory=list)


# A chat longer than this many messages is read as it is used, not held whole (select.chats).
STREAM_OVER = 20_000

# The dataset folder's outputs, replaced together (files.Staged); build.json is written last and means
# "a dataset is here": readers check it first. One a build does not make (the held-out questions of an
# older build that asked the teacher) is deleted, not left beside another dataset.
DATASET_FILES = ("samples.jsonl", "train.parquet", "eval.parquet", "heldout_questions.jsonl", "tokenizer")

BUILD_LOCK = ".build.lock"  # held while a build writes the folder: one build at a time


@contextmanager
def _one_build_at_a_time(out: Path) -> Iterator[None]:
    """An exclusive lock on the dataset folder, so that removing a killed build's leftovers never removes
    a running build's files (and two builds never mix their outputs). Released when the process ends."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one build at a time is then the user's to keep
        yield
        return
    with open(out / BUILD_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TwinError(f"{out}: another `twinlm build` is writing this dataset; let it finish") from None
        yield


def build(
    config: TwinConfig,
    corpus: Corpus,
    out: Path,
    *,
    on_stage: Callable[[str], None] | None = None,
    render_batch_size: int = 256,  # texts per tokenizer call; 1 is the per-sample baseline of `make bench`
    confirm_send: ConfirmSend | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Build the dataset for `config` from `corpus` into the folder `out` (replaced atomically by file).

    `confirm_send` is asked before document chunks go to the teacher endpoint (the command line asks the
    user, or takes --yes); it raises to send nothing. `on_progress(read, total)`: the corpus messages
    read so far of those the build reads, told a few hundred times over the read and once at its end
    (then read == total)."""
    out.mkdir(parents=True, exist_ok=True)
    with _one_build_at_a_time(out):
        leftovers = [p.name for p in remove_leftovers(out)]
        with collector_paused():  # a tuple or two per message, none cyclic: ~10% of a build's time
            result = _build(config, corpus, out, on_stage, render_batch_size, confirm_send, on_progress)
    result.removed_leftovers = leftovers
    return result


def _build(
    config: TwinConfig,
    corpus: Corpus,
    out: Path,
    on_stage: Callable[[str], None] | None,
    render_batch_size: int,
    confirm_send: ConfirmSend | None,
    on_progress: Callable[[int, int], None] | None,
) -> BuildResult:
    settings = config.build
    stage = on_stage or (lambda _: None)
    counts: Counter[str] = Counter()
    stage("loading the tokenizer")
    model = resolve_model(settings.model, out.parent)
    tokenizer = load_tokenizer(model, trust_remote_code=settings.trust_remote_code)
    style = detect_style(tokenizer)

    stage("reading, cleaning and tokenizing the corpus")
    identities = Identities(config, owners(corpus), account_names(corpus))
    me_name = config.me[0] if config.me else "me"
    asked = settings.targets
    if isinstance(asked, list):  # any alias of a person, or any name an account used, means that speaker
        meant = sorted(set().union(*map(identities.targets, asked)))
        settings = settings.model_copy(update={"targets": meant})
    speakers: set[str] = set()
    chat_speakers: set[str] | None = None  # who speaks in chat-kind conversations (None: there are none)
    started: dict[str, int | None] = {}  # chat sample id -> its first message's time (the prompt's date)
    redactor = Redactor(settings.redact, config.people)
    documents: list[tuple[str, str]] = []  # (chunk id, text) for the teacher
    qa: Any = None
    reading = Reading()
    told = 0  # reading.done when on_progress was last told

    def tell_progress() -> None:  # called per session: a few hundred calls of on_progress in all
        nonlocal told
        if on_progress is not None and reading.done - told >= max(reading.total // 500, 1):
            told = reading.done
            on_progress(told, reading.total)

    def all_samples() -> Iterator[Sample]:
        nonlocal chat_speakers, qa
        found = chats(
            corpus,
            identities.speaker,
            counts,
            settings.sources or None,
            stream_over=STREAM_OVER,
            reading=reading,
        )
        with closing(found):  # closed with this generator: the reader's clean-up needs the corpus open
            for chat in found:
                # The chat's samples are rendered (and their prompts read) before the next chat starts,
                # and its lines are read once, as its sessions are made (a long chat is never held whole).
                started.clear()
                yield from _samples_of(
                    chat, settings, me_name, counts, style, started, redactor, tell_progress
                )
                if not isinstance(chat.lines, tuple):  # streamed: read what the samples did not (documents
                    for _ in chat.lines:  # left out), so that every speaker is noted
                        pass
                speakers.update(chat.speakers)
                if chat.kind == "chat":
                    chat_speakers = set() if chat_speakers is None else chat_speakers
                    chat_speakers.update(chat.speakers)
                tell_progress()
        if on_progress is not None:
            on_progress(reading.done, reading.total)
        if not speakers:
            raise TwinError(_empty_corpus(corpus, settings.sources))
        if isinstance(asked, list):
            unknown = sorted(name for name in asked if not identities.targets(name) & speakers)
            if unknown:
                raise TwinError(
                    f"build.targets: {', '.join(map(repr, unknown))} never speak in the corpus; use names as "
                    "`twinlm people` shows them (or their canonical names from people: in twin.yaml)"
                )
        if settings.teacher.enabled:
            stage("asking the teacher model about the documents")
            qa = generate_qa(documents, settings.teacher, out / "teacher_cache.jsonl", confirm=confirm_send)
            counts["teacher question/answer pairs"] += len(qa.samples)
            yield from qa.samples

    # Tokenized before the split: it holds out a share of the trained tokens, not of the samples. So the
    # first pass keeps per sample only its conversation, kind and trained tokens; rows go to disk.
    keys = SampleKeys()  # per sample in order: (conversation, is a document)
    weights = array("q")  # trained tokens per sample
    pending: dict[str, tuple[int, Sample]] = {}  # samples sent to rendering whose rows may still come
    whose = Tally()
    spill = Spill(out)
    staged = Staged(out, DATASET_FILES, marker="build.json")

    def to_render() -> Iterator[Sample]:
        with closing(all_samples()) as made:  # closed with this generator (see the `finally` below)
            for sample in made:
                position = len(keys)
                keys.append(sample.conversation, sample.kind == "document")
                weights.append(0)
                spill.sample(sample)
                whose.add_sample(sample)
                if settings.teacher.enabled and sample.kind == "document":
                    documents.append((sample.id, sample.turns[0].text))
                if not _is_completion(sample):
                    pending[sample.id] = (position, sample)
                    yield sample
                    continue
                row = _completion(sample, tokenizer, settings.max_length, counts)
                if row is not None:
                    weights[position] += len(row[2])
                    whose.add_row(sample, row[2])
                    spill.completions.add(*row)

    samples = to_render()
    try:
        rendered = render_arrays(
            samples,
            tokenizer,
            settings.max_length,
            counts,
            batch_size=render_batch_size,
            system_for=_speaker_prompts(settings, style, started),
        )
        for r in rendered:
            position, sample = pending[r.sample_id]
            while True:  # rows come in sample order: the samples before this one are done
                first = next(iter(pending))
                if pending[first][0] >= position:
                    break
                del pending[first]
                started.pop(first, None)  # its prompts are made (a long chat has many sessions)
            weights[position] += r.trained_tokens
            whose.add_runs(sample, r.runs)
            spill.rendered.add(r.sample_id, r.input_ids, r.labels)
        pending.clear()
        if not keys:
            raise TwinError(
                "the build produced no samples: nothing left after filtering. Check build.targets (whose "
                "turns are trained), `twinlm people` (is `me` mapped?), and the build.clean rules in "
                "twin.yaml"
            )
        evals = eval_positions(keys, weights, settings.eval_fraction, settings.split_seed)
        if settings.teacher.enabled:
            # Held-out questions test what the model learnt: keep those about documents it trains on.
            trained_docs = {key[0] for i, key in enumerate(keys) if i not in evals}
            heldout = [q for q in qa.heldout if q["chunk_id"].rsplit(":", 1)[0] in trained_docs]
            staged.file("heldout_questions.jsonl").write_text(
                "".join(orjson.dumps(q, option=orjson.OPT_SORT_KEYS).decode() + "\n" for q in heldout),
                encoding="utf-8",
            )
            counts["held-out questions"] += len(heldout)
        stage("writing the dataset folder")
        stats = spill.write(staged, evals, _some_training)
        result = BuildResult(
            folder=out,
            counts=counts,
            samples=stats.samples,
            tokens=stats.tokens,
            trained_tokens=stats.trained_tokens,
        )

        tokenizer.save_pretrained(staged.directory("tokenizer"))
        result.report = {
            "twinlm_dataset": 1,
            "model": settings.model,
            "template_style": style,
            "system_prompt_template": settings.system_prompt,
            "group_prompt_template": settings.group_prompt,
            "me": me_name,
            "samples": result.samples,
            "tokens": result.tokens,
            "trained_tokens": result.trained_tokens,
            "trained_share": _share(result.trained_tokens, result.tokens),
            "eval_share_of_trained_tokens": round(eval_share(result.trained_tokens), 4),
            "turns": counts.pop("turns", 0),
            "trained_turns": counts.pop("trained turns", 0),
            "length_histogram": stats.histogram,
            "counts": dict(sorted(counts.items())),
            "redacted": redacted_kinds(counts),
            "config": config.model_dump(mode="json"),
        }
        result.report["trained_by_speaker"] = whose.report()["by_speaker"]
        result.report["trained_by_source"] = whose.report()["by_source"]
        result.report["warnings"] = warnings(
            whose,
            chats_seen=chat_speakers is not None,
            me_in_chats=ME in (chat_speakers or ()),
            me_targeted=settings.targets in ("auto", "me")
            or (isinstance(settings.targets, list) and ME in settings.targets),
            targets=settings.targets if isinstance(settings.targets, str) else "list",
            me_name=me_name,
        )
        report = orjson.dumps(result.report, option=orjson.OPT_INDENT_2) + b"\n"
        staged.file("build.json").write_bytes(report)
        staged.commit()  # the dataset's files in place together, build.json last
    finally:
        # Stopped (Ctrl-C, an error) while the corpus reader waits at a yield: it ends now, while the corpus
        # is open, instead of when the garbage collector finds it (a traceback on a closed database).
        samples.close()
        spill.remove()
        staged.discard()  # what was staged and not put in place: nothing after the commit
    return result


def _some_training(stats: SplitStats) -> None:
    if stats.samples["train"] == 0:
        raise TwinError(
            "no training samples left after rendering: raise build.max_length or relax build.clean"
        )


def _empty_corpus(corpus: Corpus, sources: list[str]) -> str:
    """Why the build found no conversation at all: the corpus is empty, filtered out or all excluded."""
    have = [row[0] for row in corpus.db.execute("SELECT DISTINCT source FROM conversations ORDER BY 1")]
    if not have:
        return "the corpus is empty: run `twinlm ingest PATH...` with your exports first"
    if sources and not set(sources) & set(have):
        return (
            f"build.sources ({', '.join(sources)}) names no source in the corpus, which holds: "
            f"{', '.join(have)}"
        )
    return "every conversation in the corpus is excluded (or has no message left): see `twinlm conversations`"


def _samples_of(
    chat: Chat,
    settings: BuildConfig,
    me_name: str,
    counts: Counter[str],
    style: str,
    started: dict[str, int | None],
    redactor: Redactor,
    on_session: Callable[[], None] = lambda: None,
) -> Iterator[Sample]:
    if chat.kind == "document":
        if settings.documents.enabled:
            for line in chat.lines:
                # Redacted whole, before chunking: a number cut by a chunk border is still found, and
                # the teacher endpoint is sent these chunks.
                text = redactor(line.text, counts)
                yield from document_samples(chat.key, chat.title, text, settings.documents)
        return
    persona = persona_for(chat.kind, settings.targets)
    lines = _cleaned(chat, settings, counts)
    # Assistant-style conversations are one sample whatever the pauses: the context carries over.
    sessions = iter_by_gap(lines, settings.session_gap_minutes) if chat.kind == "chat" else [list(lines)]
    for index, session in enumerate(sessions):
        on_session()
        # Before the session rules and redaction: a session no target speaker talks in trains nobody
        # whatever they drop. Their counts (and redaction's) are thus those of the sessions that can
        # reach the dataset; the curate view does the same.
        if session and not persona.trains_someone_in(session):
            counts["sessions where no target speaker talks after the first turn"] += 1
            continue
        session = redactor.session(session, counts, ME)
        kept = clean_session(session, settings.clean, counts) if chat.kind == "chat" else session
        if not kept:
            continue
        roles = {m.author: m.role for m in kept}  # a speaker's role: that of their last message
        # Decided before turns are merged: a target speaker may talk in the opening turn only.
        if not _trains_anyone(kept, roles, persona):
            counts["sessions where no target speaker talks after the first turn"] += 1
            continue
        merged = merge_turns([(m.author, m.text) for m in kept])
        trains = [i > 0 and persona.trains(speaker, roles[speaker]) for i, (speaker, _) in enumerate(merged)]
        turns = [
            Turn(_display(speaker, me_name), text, trained)
            for (speaker, text), trained in zip(merged, trains, strict=True)
        ]
        counts["turns"] += len(turns)
        counts["trained turns"] += sum(t.trained for t in turns)
        first = next((m.timestamp_ms for m in kept if m.timestamp_ms is not None), None)
        if chat.kind == "chat":
            started[f"{chat.key}#{index}"] = first
        yield Sample(
            id=f"{chat.key}#{index}",
            conversation=chat.key,
            source=chat.source,
            kind="assistant" if chat.kind in ("assistant", "dataset") else "chat",
            turns=tuple(turns),
            system=_system(chat, first, turns, settings, style),
        )


def _trains_anyone(kept: list[Msg], roles: dict[str, str], persona: Persona) -> bool:
    """Whether a turn after the first of these messages' merged turns is trained, without merging them:
    those turns' speakers are the authors after the first speaker's opening run."""
    opener = kept[0].author
    after = next((i for i, m in enumerate(kept) if m.author != opener), len(kept))
    return any(persona.trains(speaker, roles[speaker]) for speaker in {m.author for m in kept[after:]})


def _cleaned(chat: Chat, settings: BuildConfig, counts: Counter[str]) -> Iterator[Msg]:
    """The chat's messages through the message rules, read as they are used."""
    assistant_style = chat.kind in ("assistant", "dataset")
    clean = settings.clean
    new = tuple.__new__  # a Msg per message: without the named tuple's Python-level __new__ (issue 18)
    for speaker, _, text, kind, role, timestamp_ms in chat.lines:
        # Chat rules (non-replies, enders, length caps) are for group chats; assistant answers are
        # long by nature and a short prompt like "ok" is still a prompt.
        text = clean_message(text, kind, clean, counts, assistant=assistant_style)
        if text is not None:
            yield new(Msg, (speaker, text, kind, timestamp_ms, role))


def _speaker_prompts(settings: BuildConfig, style: str, started: dict[str, int | None]) -> SystemFor:
    """Alternating templates play one trained speaker per rendering: each gets that speaker's prompt."""

    def system_for(sample: Sample, speaker: str) -> str | None:
        if sample.id not in started:  # not a chat between people: its own system prompt
            return sample.system
        return persona_prompt(
            settings,
            style,
            speaker=speaker,
            participants=[t.speaker for t in sample.turns],
            platform=sample.source,
            timestamp_ms=started[sample.id],
        )

    return system_for


def _system(
    chat: Chat, first_ms: int | None, turns: list[Turn], settings: BuildConfig, style: str
) -> str | None:
    if chat.kind in ("assistant", "dataset"):
        return chat.system_prompt  # ChatGPT custom instructions, a dataset's own system prompt
    # One trained speaker: theirs. Several: the group prompt, which is what a template with named
    # roles trains and what export formats show; alternating renderings get each speaker's own
    # (render_many's system_for).
    trained = {t.speaker for t in turns if t.trained}
    return persona_prompt(
        settings,
        style,
        speaker=next(iter(trained)) if len(trained) == 1 else None,
        participants=[t.speaker for t in turns],
        platform=chat.source,
        timestamp_ms=first_ms,
    )


def _is_completion(sample: Sample) -> bool:
    """A document chunk: plain text to continue, no speakers, no chat template."""
    return sample.kind == "document" and len(sample.turns) == 1 and sample.turns[0].speaker == ""


def _completion(
    sample: Sample, tokenizer: Any, max_length: int, counts: Counter[str]
) -> tuple[str, list[int], list[int]] | None:
    """Continued pre-training on a chunk: BOS (where the model uses one), the text, EOS, all trained."""
    ids = tokenizer(sample.turns[0].text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", True):
        ids = [tokenizer.bos_token_id, *ids]
    ids = [*ids, tokenizer.eos_token_id]
    if len(ids) > max_length:
        counts["document chunks over max_length (dropped; lower build.documents.chunk_chars)"] += 1
        return None
    counts["document chunks"] += 1
    return sample.id, ids, list(ids)


def _display(speaker: str, me_name: str) -> str:
    return me_name if speaker == ME else speaker


def _share(part: dict[str, int], whole: dict[str, int]) -> float:
    total = sum(whole.values())
    return round(sum(part.values()) / total, 4) if total else 0.0
