"""The parity check: does llama.cpp, given the GGUF, see and predict what the trained model does?

`check_parity(model_dir, gguf_path)` loads the merged Hugging Face folder (transformers, float32) and the
GGUF (llama-cpp-python) and compares, on conversations rendered by twinlm's own rendering function
(twinlm.prepare.render, with the export's tokenizer: the one template training used, never a second one)
and on a list of strings that break tokenizers:

- tokenization: the rendered chats' token ids (what training saw) against llama.cpp's tokenization of the
  same text with special tokens parsed, as llama-server does after applying the template; every hard
  string with and without special-token parsing (BOS/EOS as each side's flags add them);
- next-token logits at every position: for f32 and f16 the top-1 token must be the same everywhere (a
  numerical tie, within TIES of the best logit, is counted apart); for bf16, q8_0 and the k-quants the
  top-1 agreement and the mean KL divergence are reported and held to the limits in LIMITS;
- the end of a turn: the token the template closes an assistant turn with (found from the rendering's
  labels, no per-family table) is one llama.cpp ends generation at, and a greedy generation from a
  rendered prompt that reaches it stops there.

Every difference becomes a line in `ParityReport.problems` that says what differs and where; an export
with any is marked failed (twinlm.export.pipeline).
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from twinlm.errors import TwinError
from twinlm.prepare.render import IGNORE_INDEX, WORD_JOINER, Rendered, render, render_prompt
from twinlm.prepare.sample import Sample, Turn

# Types whose logits must give the same top-1 token at every position; the others are held to LIMITS.
EXACT_TYPES = frozenset({"f32", "f16"})
# type: (least top-1 agreement, largest mean KL divergence in nats). Floors that a broken file (a wrong
# tensor, a wrong layout: agreement near chance) cannot reach, measured on random tiny models whose
# near-flat next-token distributions flip their top-1 under small errors (q8_0 91-100%, q4_k_m 37-100%;
# KL q8_0 <= 0.002, q4_k_m <= 0.15); a trained model's peaked distributions agree far more. The figures
# themselves are reported for the user to judge the quantization.
LIMITS: dict[str, tuple[float, float]] = {
    "bf16": (0.90, 0.01),
    "q8_0": (0.80, 0.02),
    "q6_k": (0.50, 0.10),
    "q5_k_m": (0.40, 0.20),
    "q4_k_m": (0.25, 0.30),
}
# Two HF logits closer than this are a tie: either top-1 is right. The arithmetic's own error: llama.cpp
# computes f16 weights with f16 activations (max logit differences ~1e-2 measured), f32 in f32 (~2e-4).
TIES = {"f32": 2e-3, "f16": 2e-2}
TIE = 2e-2  # other types: agreement is a rate, ties are reported only
FORCED_AT = 4  # the greedy generation is made to reach the end-of-turn token after this many tokens
MAX_PROBLEMS = 8  # per kind of check: the first ones say enough

# llama.cpp's general.file_type numbers (gguf.LlamaFileType) for the types twinlm writes.
FILE_TYPES = {0: "f32", 1: "f16", 7: "q8_0", 32: "bf16", 15: "q4_k_m", 17: "q5_k_m", 18: "q6_k"}

HARD_STRINGS: tuple[str, ...] = (
    "Hello world",
    "hello",
    " hello",
    "  two leading spaces",
    "trailing spaces   ",
    "runs     of      spaces",
    "\t\ttabs\tand\tspaces \t",
    "a\nb\n\nc\n\n\n",
    "\r\nwindows line ends\r\n",
    "naïve café über straße Ærø",
    "日本語のテキストと漢字",
    "Привет, как дела? Всё хорошо.",
    "مرحبا كيف حالك",
    "नमस्ते दुनिया",
    "e\u0301 combining accent, \u00a0no-break space, zero\u200bwidth",
    "😂👍❤️🙂🔥🎉",
    "family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 skin 👍🏽",
    "def f(x):\n    return x ** 2  # square\n",
    "if (a && b) { return c[i]; } // done",
    "SELECT * FROM t WHERE id = 'x';",
    "https://example.com/path?q=1&r=two#frag",
    "1234567890 3.14159 -0.5e-7 1,000,000",
    "HELLO hello HeLLo hELLO",
    "lol ok sure!!! ??? ...",
    "<|im_end|>",
    "<|im_start|>user\nhi<|im_end|>",
    "<s> </s> <unk> <pad>",
    "[INST] not a real instruction [/INST]",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>",
    "<|eot_id|> <|endoftext|>",
    "<start_of_turn>user\n<end_of_turn>",
    "<|im_end",
    "im_end|>",
    "<<|im_end|>>",
)


def default_conversations(system: str | None = None, speaker: str | None = None) -> list[Sample]:
    """An assistant chat (user/assistant roles) and a chat between people (named turns, `speaker` the one
    trained), both ending with a trained turn: enough to show the template, the roles, the system prompt
    (the persona's, where given) and the end of a turn."""
    me = speaker or "Alex Rivera"
    prompt = f"You are {me}. Reply the way {me} does: short, friendly." if system is None else system
    assistant = Sample(
        id="parity-assistant",
        conversation="parity:assistant",
        source="parity",
        kind="assistant",
        system=prompt,
        turns=(
            Turn("user", "What's a good name for a cat? 🐱", False),
            Turn("assistant", "Maybe Miso, or Pixel if it's a\nplayful one.", True),
            Turn("user", "def f(x):\n    return x  # why   spaces?", False),
            Turn("assistant", "Python keeps the indentation; the spaces are fine. Ça va?", True),
        ),
    )
    chat = Sample(
        id="parity-chat",
        conversation="parity:chat",
        source="parity",
        kind="chat",
        system=prompt,
        turns=(
            Turn("Sam", "hey!! are we still on for climbing tomorrow?", False),
            Turn(me, "yes 👍 7pm at the gym", True),
            Turn("Sam", "cool, I'll bring the rope\nand snacks", False),
            Turn(me, "perfect, see you there", True),
        ),
    )
    return [assistant, chat]


@dataclass
class ParityReport:
    """What the check compared, the figures, and what differs (empty `problems`: the export is faithful)."""

    gguf: str
    qtype: str
    strings: int = 0  # texts whose tokenization was compared (rendered chats and hard strings, both modes)
    strings_identical: int = 0
    strings_noted: int = 0  # differing only in ways llama.cpp cannot avoid, said in notes
    positions: int = 0  # next-token positions whose logits were compared
    top1_agreement: float = 0.0  # share of positions with the same top-1 token (ties not counted as same)
    top1_ties: int = 0  # positions whose top-1 tokens differ but were a tie in the HF model
    mean_kl: float = 0.0  # mean KL(HF || llama.cpp) of the next-token distributions, nats
    max_logit_diff: float = 0.0
    # Differences llama.cpp cannot avoid, said but not failed: text the HF tokenizer normalizes (NFC) first.
    notes: list[str] = field(default_factory=list)
    end_of_turn: str | None = None  # the token that closes an assistant turn
    stops_at_end_of_turn: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}

    def figures(self) -> str:
        """One line of figures for a summary."""
        return (
            f"tokenization {self.strings_identical}/{self.strings} identical"
            + (f" ({self.strings_noted} more in notes); " if self.strings_noted else "; ")
            + f"top-1 {self.top1_agreement:.1%} of {self.positions} positions (ties {self.top1_ties}); "
            f"mean KL {self.mean_kl:.2e}; max logit diff {self.max_logit_diff:.2e}; "
            f"stops at {self.end_of_turn or '?'}: {'yes' if self.stops_at_end_of_turn else 'no'}"
        )


Progress = Callable[[int, int], None]  # (checks done, checks in all)


def check_parity(
    model_dir: Path,
    gguf_path: Path,
    *,
    conversations: Sequence[Sample] | None = None,
    hard_strings: Sequence[str] | None = None,
    qtype: str | None = None,
    max_length: int = 512,
    progress: Progress | None = None,
) -> ParityReport:
    """Compare the GGUF under llama.cpp with the Hugging Face model in `model_dir` (see the module doc).

    `hard_strings`: by default HARD_STRINGS and twinlm.export.gguf_vocab's list (with the tokenizer's
    special tokens inside words). `qtype` (f32, f16, q8_0, ...) sets which limits apply; by default it
    is read from the GGUF.
    Raises TwinError only where the check cannot run (llama-cpp-python missing, an unreadable model
    folder); everything the GGUF gets wrong is a problem in the report.
    """
    llama_cpp = _llama_cpp()
    tokenizer, model = _load_hf(model_dir)
    report = ParityReport(gguf=str(gguf_path), qtype=qtype or "?")
    samples = list(conversations) if conversations is not None else default_conversations()
    rendered = [r for s in samples for r in render(s, tokenizer, max_length)]
    n_ctx = max([len(r.input_ids) for r in rendered] + [64]) + FORCED_AT + 16
    with _llama_cpp_quiet():
        try:
            llama = llama_cpp.Llama(
                model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False
            )
        except (ValueError, RuntimeError) as e:
            report.problems.append(f"llama.cpp cannot load {gguf_path.name}: {e}")
            return report
        try:
            if qtype is None:
                report.qtype = FILE_TYPES.get(int(llama.metadata.get("general.file_type", -1)), "?")
            _tokenization(report, tokenizer, llama, rendered, hard_strings)
            if progress:
                progress(1, 3)
            _logits(report, model, llama, rendered)
            if progress:
                progress(2, 3)
            _end_of_turn(report, llama_cpp, tokenizer, llama, samples, max_length)
            if progress:
                progress(3, 3)
        finally:
            llama.close()
    return report


@contextmanager
def _llama_cpp_quiet() -> Iterator[None]:
    """llama.cpp's own log lines (its double-BOS warnings on the hard strings, the loader) off while the
    check runs: the report says what matters. Some go through llama-cpp-python's logger, some straight
    to the process's stderr (its file descriptor is pointed at /dev/null meanwhile, as llama-cpp-python
    itself does while loading)."""
    from llama_cpp._utils import suppress_stdout_stderr

    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 10)
    try:
        with suppress_stdout_stderr(disable=False):
            yield
    finally:
        logger.setLevel(level)


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise TwinError(
            "the parity check needs llama-cpp-python (a twinlm dependency): pip install llama-cpp-python, "
            "or leave the check out with --no-check"
        ) from None
    return llama_cpp


def _load_hf(model_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per load of a tiny shard says nothing
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise TwinError(f"{model_dir}: cannot load the merged model to compare with ({e})") from None
    model.eval()
    return tokenizer, model


# --- tokenization -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Case:
    label: str
    text: str
    special: bool  # special-token text parsed as special tokens (llama.cpp's parse_special)
    hf: list[int]
    ours: list[int]
    bare: str | None = None  # a hard string on its own (no template around it): the string


def _tokenization(
    report: ParityReport,
    tokenizer: Any,
    llama: Any,
    rendered: list[Rendered],
    hard_strings: Sequence[str] | None,
) -> None:
    """Rendered chats: the ids training saw against llama.cpp's tokens of the same text (specials parsed).
    Hard strings: as both turns of a rendered chat (how they reach the model), and on their own, specials
    parsed (with each side's BOS/EOS) and specials as text."""
    cases: list[_Case] = []
    for r in rendered:
        ours = llama.tokenize(r.text.encode(), add_bos=False, special=True)
        cases.append(_Case(f"rendered chat {r.sample_id}#{r.window}", r.text, True, list(r.input_ids), ours))
    specials = [t for t in tokenizer.all_special_tokens if t]
    # A special token's text as a user may type it, and as rendering neutralises it (a word joiner in it).
    if hard_strings is None:  # this module's list and the GGUF vocabulary's own (specials inside words too)
        from twinlm.export.gguf_vocab import hard_strings as vocab_strings

        hard_strings = [*HARD_STRINGS, *vocab_strings(specials)]
    typed = [t[0] + WORD_JOINER + t[1:] for t in specials]
    strings = [s for s in dict.fromkeys([*hard_strings, *specials, *typed]) if s]
    in_chat: dict[str, bool] = {}
    for s in strings:
        chat = Sample(
            id="hard",
            conversation="parity:hard",
            source="parity",
            kind="assistant",
            turns=(Turn("user", s, False), Turn("assistant", s, True)),
        )
        same = True
        for r in render(chat, tokenizer, 1 << 16):
            ours = llama.tokenize(r.text.encode(), add_bos=False, special=True)
            cases.append(_Case(f"{s!r} (in a chat)", r.text, True, list(r.input_ids), ours))
            same = same and list(r.input_ids) == list(ours)
        in_chat[s] = same
        hf = tokenizer(s, add_special_tokens=True).input_ids
        cases.append(
            _Case(f"{s!r} (special tokens parsed)", s, True, hf, llama.tokenize(s.encode(), True, True), s)
        )
        hf = _plain_ids(tokenizer, s)
        cases.append(
            _Case(f"{s!r} (as plain text)", s, False, hf, llama.tokenize(s.encode(), False, False), s)
        )
    differ, normalized, bare = [], [], []
    for case in cases:
        report.strings += 1
        if case.hf == list(case.ours):
            report.strings_identical += 1
        elif _only_normalization(case.text, case.hf, llama, special=case.special):
            normalized.append(case.bare or case.label)
            report.strings_noted += 1
        elif case.bare is not None and in_chat.get(case.bare):
            bare.append(case.bare)
            report.strings_noted += 1
        else:
            differ.append(_first_difference(case.label, case.hf, list(case.ours), tokenizer, llama))
    if normalized:
        shown = ", ".join(repr(t) for t in list(dict.fromkeys(normalized))[:3])
        report.notes.append(
            "llama.cpp does not apply the tokenizer's Unicode normalization (NFC): text in decomposed form "
            f"tokenizes differently there ({shown}); the same text composed tokenizes identically"
        )
    if bare:
        report.notes.append(
            f"{len(set(bare))} texts tokenize differently in llama.cpp on their own, with no chat template "
            f"around them (e.g. {bare[0]!r}, a raw completion prompt); inside chats they are identical"
        )
    for line in differ[:MAX_PROBLEMS]:
        report.problems.append(line)
    if len(differ) > MAX_PROBLEMS:
        report.problems.append(f"tokenization differs on {len(differ) - MAX_PROBLEMS} more strings")


def _only_normalization(text: str, hf: list[int], llama: Any, *, special: bool) -> bool:
    """Whether llama.cpp tokenizes the NFC form of `text` as the HF tokenizer (which normalizes) does."""
    composed = unicodedata.normalize("NFC", text)
    return composed != text and list(llama.tokenize(composed.encode(), special, special)) == list(hf)


def _plain_ids(tokenizer: Any, text: str) -> list[int]:
    """HF token ids of `text` with special-token text as plain text and nothing added. Through the fast
    tokenizer's backend, whose flag is restored: transformers' `split_special_tokens=True` leaves it set,
    and every later call (the rendering's too) would then split the template's own special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids)
    before = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        return list(backend.encode(text, add_special_tokens=False).ids)
    finally:
        backend.encode_special_tokens = before


def _first_difference(label: str, hf: list[int], ours: list[int], tokenizer: Any, llama: Any) -> str:
    i = next((k for k, (a, b) in enumerate(zip(hf, ours, strict=False)) if a != b), min(len(hf), len(ours)))
    mine = _piece(llama, ours[i]) if i < len(ours) else "(end)"
    theirs = tokenizer.convert_ids_to_tokens(hf[i]) if i < len(hf) else "(end)"
    return (
        f"tokenization differs on {label}: token {i} is {theirs!r} ({hf[i] if i < len(hf) else '-'}) in "
        f"the HF tokenizer, {mine!r} ({ours[i] if i < len(ours) else '-'}) in llama.cpp "
        f"({len(hf)} vs {len(ours)} tokens)"
    )


def _piece(llama: Any, token: int) -> str:
    return llama.detokenize([token], special=True).decode("utf-8", errors="replace")


# --- logits -----------------------------------------------------------------------------------


def _logits(report: ParityReport, model: Any, llama: Any, rendered: list[Rendered]) -> None:
    import torch

    hf_vocab, gguf_vocab = int(model.config.vocab_size), int(llama.n_vocab())
    if hf_vocab != gguf_vocab:
        report.problems.append(
            f"vocabulary size differs: {hf_vocab} in the HF model, {gguf_vocab} in the GGUF"
        )
    width = min(hf_vocab, gguf_vocab)
    same = ties = positions = 0
    kl_sum, max_diff = 0.0, 0.0
    where: list[str] = []
    for r in rendered:
        ids = list(r.input_ids)
        with torch.no_grad():
            hf = model(torch.tensor([ids])).logits[0, :, :width].double().numpy()
        llama.reset()
        llama.eval(ids)
        ours = np.asarray(llama.scores[: len(ids), :width], dtype=np.float64)
        top_hf, top_ours = hf.argmax(-1), ours.argmax(-1)
        rows = np.arange(len(ids))
        tie = (top_hf != top_ours) & (hf[rows, top_hf] - hf[rows, top_ours] <= TIES.get(report.qtype, TIE))
        same += int((top_hf == top_ours).sum())
        ties += int(tie.sum())
        positions += len(ids)
        kl_sum += float(_kl(hf, ours).sum())
        max_diff = max(max_diff, float(np.abs(hf - ours).max()))
        wrong = np.flatnonzero((top_hf != top_ours) & ~tie)
        if len(wrong):
            where.append(
                f"{r.sample_id}#{r.window} at {len(wrong)} of {len(ids)} positions (first {wrong[0]})"
            )
    report.positions = positions
    report.top1_agreement = same / positions if positions else 0.0
    report.top1_ties = ties
    report.mean_kl = kl_sum / positions if positions else 0.0
    report.max_logit_diff = max_diff
    figures = f"top-1 agreement {report.top1_agreement:.1%}, mean KL {report.mean_kl:.3g}"
    if report.qtype in EXACT_TYPES or report.qtype not in LIMITS:
        if where:
            shown = "; ".join(where[:3])
            report.problems.append(
                f"next-token predictions differ from the HF model ({report.qtype} must match at every "
                f"position; {figures}, max logit diff {max_diff:.3g}): {shown}"
            )
    else:
        least, most = LIMITS[report.qtype]
        if report.top1_agreement + ties / max(positions, 1) < least or report.mean_kl > most:
            report.problems.append(
                f"next-token predictions drift from the HF model beyond what {report.qtype} allows "
                f"({figures}; allowed: at least {least:.0%}, at most {most:g})"
            )


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, from logits (float64, stable)."""
    log_p = p_logits - _logsumexp(p_logits)
    log_q = q_logits - _logsumexp(q_logits)
    return np.maximum((np.exp(log_p) * (log_p - log_q)).sum(-1), 0.0)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(-1, keepdims=True))


# --- the end of a turn ------------------------------------------------------------------------


def _end_of_turn(
    report: ParityReport,
    llama_cpp: Any,
    tokenizer: Any,
    llama: Any,
    samples: list[Sample],
    max_length: int,
) -> None:
    """The token closing an assistant turn must end llama.cpp's generation, and does in a generation."""
    sample = next((s for s in samples if s.turns and s.turns[-1].trained), None)
    if sample is None:
        report.problems.append("no conversation ends with a trained turn: the end of a turn was not checked")
        return
    last = render(sample, tokenizer, max_length)[-1]
    trained = [label for label in last.labels if label != IGNORE_INDEX]
    eot = trained[-1]
    report.end_of_turn = tokenizer.convert_ids_to_tokens(eot)
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    if not llama_cpp.llama_vocab_is_eog(vocab, eot):
        ends = [t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        report.stops_at_end_of_turn = False
        report.problems.append(
            f"llama.cpp does not end generation at the end-of-turn token {report.end_of_turn!r} (id {eot}): "
            f"it ends at {[_piece(llama, t) for t in ends[:5]]} (ids {ends[:5]}); the GGUF's eos/eot ids are "
            "wrong"
        )
        return
    prompt = render_prompt(replace(sample, turns=sample.turns[:-1]), tokenizer, sample.turns[-1].speaker)
    calls = 0

    def force(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls > FORCED_AT:  # let the model write a few tokens of its own first, greedily
            scores[:] = -np.inf
            scores[eot] = 0.0
        return scores

    llama.reset()
    result = llama.create_completion(
        prompt, max_tokens=FORCED_AT + 8, temperature=0.0, logits_processor=[force]
    )
    choice = result["choices"][0]
    stopped = choice["finish_reason"] == "stop" and calls <= FORCED_AT + 1
    report.stops_at_end_of_turn = stopped
    if not stopped:
        report.problems.append(
            f"greedy generation went on past the end-of-turn token {report.end_of_turn!r} "
            f"({calls} tokens, finish reason {choice['finish_reason']!r})"
        )
