"""Assistant-style samples render as the template's own user/assistant chat (issue 10, point 0).

A ChatGPT export (or an imported dataset) trains a drop-in assistant: the rendered text must be
exactly what `tokenizer.apply_chat_template` writes for the same conversation given as plain
user / assistant / system messages, so that LM Studio, Ollama's stock templates or any
OpenAI-style client show the model what it was trained on. Where a template shows the system
prompt only before the last user message (Mistral v0.3), training puts it there, as Mistral's own
encoder (mistral_common, used by mistral-finetune) does; checked token for token against
`encode_instruct` with the real v3 tokenizer that ships inside mistral-common (offline).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tools_required import require

from twinlm.prepare.render import (
    FIXED_DATE,
    IGNORE_INDEX,
    Rendered,
    TemplateError,
    inspect_template,
    render,
    render_prompt,
)
from twinlm.prepare.sample import Sample, Turn

from tiny_tokenizers import template_text

EOT = {
    "chatml": "<|im_end|>",
    "qwen2.5": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "mistral-v0.3": "</s>",
    "mistral-v0.2": "</s>",
    "gemma": "<end_of_turn>",
}
# Where each template keeps the system prompt of a chat that ends with the assistant: its own
# system message, before the last user message (Mistral v0.3), or folded into the first user
# message (Gemma 2 refuses a system role).
SYSTEM_AT = {
    "chatml": "message",
    "qwen2.5": "message",
    "llama3": "message",
    "mistral-v0.2": "message",
    "mistral-v0.3": "last_user",
    "gemma": "first_user",
}
FAMILIES = sorted(EOT)

# A ChatGPT conversation as build writes it: the user resolves to `me`'s display name and the
# assistant is "ChatGPT"; the custom instructions are the system prompt. No runs of spaces (the
# converted Mistral tokenizer may split those differently from sentencepiece).
USER, BOT = "Alex Rivera", "ChatGPT"
EXCHANGE = [
    (USER, "How do I boil an egg?"),
    (BOT, "Put it in boiling water for 9 minutes."),
    (USER, "Thanks! And a soft one?"),
    (BOT, "About 6 minutes, then cool it in cold water."),
]
SYSTEM = "Answer briefly. I live in Lyon."


def chatgpt(
    system: str | None, exchange: list[tuple[str, str]] = EXCHANGE, kind: str = "assistant"
) -> Sample:
    return Sample(
        id="chatgpt:c1#0",
        conversation="chatgpt:c1",
        source="chatgpt",
        kind=kind,  # type: ignore[arg-type]
        turns=tuple(Turn(who, text, who == BOT and i > 0) for i, (who, text) in enumerate(exchange)),
        system=system,
    )


def plain_messages(
    exchange: list[tuple[str, str]], system: str | None, where: str, *, last_user: int | None = None
) -> list[dict[str, str]]:
    """The conversation as plain user/assistant messages, the system prompt where `where` says."""
    msgs = [{"role": "user" if who == USER else "assistant", "content": text} for who, text in exchange]
    if system is None:
        return msgs
    if where == "message":
        return [{"role": "system", "content": system}, *msgs]
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    at = users[0] if where == "first_user" else (users[-1] if last_user is None else last_user)
    msgs[at] = {"role": "user", "content": f"{system}\n\n{msgs[at]['content']}"}
    return msgs


def apply(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, date_string=FIXED_DATE, **kwargs)


def expected_labels(r: Rendered, tokenizer: Any, eot: str, answers: list[str]) -> list[int]:
    """Labels found without render's code: each answer's tokens (by offsets) and the token after it."""
    enc = tokenizer(r.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    assert ids == r.input_ids
    labels = [IGNORE_INDEX] * len(ids)
    pos = 0
    for text in answers:
        a = r.text.index(text, pos)
        pos = a + len(text)
        inside = [i for i, (s, e) in enumerate(offsets) if s < pos and e > a]
        first, last = inside[0], inside[-1] + 1
        assert tokenizer.convert_ids_to_tokens(ids[last]) == eot  # the end of turn, right after
        labels[first : last + 1] = ids[first : last + 1]
    return labels


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "system"])
@pytest.mark.parametrize("family", FAMILIES)
def test_chatgpt_sample_renders_as_apply_chat_template_of_plain_messages(
    load_tokenizer: Callable[[str], Any], family: str, system: str | None
) -> None:
    tokenizer = load_tokenizer(family)
    (r,) = render(chatgpt(system), tokenizer, 1024)
    assert r.text == apply(tokenizer, plain_messages(EXCHANGE, system, SYSTEM_AT[family]))
    assert USER not in r.text and BOT not in r.text
    answers = [text for who, text in EXCHANGE if who == BOT]
    assert r.labels == expected_labels(r, tokenizer, EOT[family], answers)
    assert inspect_template(tokenizer).system_at == SYSTEM_AT[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_imported_dataset_samples_render_the_same_way(
    load_tokenizer: Callable[[str], Any], family: str
) -> None:
    tokenizer = load_tokenizer(family)
    exchange = [("user", t) if who == USER else ("assistant", t) for who, t in EXCHANGE]
    s = replace(
        chatgpt(SYSTEM),
        kind="dataset",
        turns=tuple(Turn(who, text, who == "assistant") for who, text in exchange),
    )
    (r,) = render(s, tokenizer, 1024)
    (gpt,) = render(chatgpt(SYSTEM), tokenizer, 1024)
    assert r.text == gpt.text and r.labels == gpt.labels


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "system"])
@pytest.mark.parametrize("family", FAMILIES)
def test_chat_time_prompt_of_an_assistant_persona_is_the_templates_generation_prompt(
    load_tokenizer: Callable[[str], Any], family: str, system: str | None
) -> None:
    tokenizer = load_tokenizer(family)
    history = replace(
        chatgpt(system, EXCHANGE[:3]),
        turns=tuple(replace(t, trained=False) for t in chatgpt(None, EXCHANGE[:3]).turns),
    )
    ids = render_prompt(history, tokenizer, BOT)
    # At inference every template (and Ollama's) puts a system prompt before the LAST user message
    # where it shows it only there: the same messages with the system prompt where inference has it.
    where = SYSTEM_AT[family]
    text = apply(tokenizer, plain_messages(EXCHANGE[:3], system, where), add_generation_prompt=True)
    if family == "mistral-v0.3" and system is not None:  # the template itself places it
        assert text == apply(
            tokenizer,
            [{"role": "system", "content": system}, *plain_messages(EXCHANGE[:3], None, where)],
            add_generation_prompt=True,
        )
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    # And it is exactly what training saw before the assistant's next turn.
    (r,) = render(chatgpt(system), tokenizer, 1024)
    assert r.input_ids[: len(ids)] == ids and r.labels[len(ids)] != IGNORE_INDEX


# --- Mistral v0.3: the system prompt where inference shows it ----------------------------------------

PEOPLE = Sample(
    id="discord:c1#0",
    conversation="discord:c1",
    source="discord",
    kind="chat",
    turns=(
        Turn("Alice", "anyone up?", False),
        Turn("Max", "yep", True),
        Turn("Bob", "pizza?", False),
        Turn("Max", "sure", True),
        Turn("Alice", "see you", False),
    ),
    system="You are Max.",
)


def test_mistral_v3_places_the_system_prompt_before_the_last_user_message_in_chats_between_people(
    load_tokenizer: Callable[[str], Any],
) -> None:
    tokenizer = load_tokenizer("mistral-v0.3")
    (r,) = render(replace(PEOPLE, turns=PEOPLE.turns[:4]), tokenizer, 1024)
    assert r.text == (
        "<s>[INST] Alice: anyone up?[/INST] Max: yep</s>"
        "[INST] You are Max.\n\nBob: pizza?[/INST] Max: sure</s>"
    )
    # A trailing context turn carries no label: the prompt stays before the user message that
    # leads to the last trained turn, where chat time shows it when the model writes that turn.
    (trailing,) = render(PEOPLE, tokenizer, 1024)
    assert trailing.text == r.text + "[INST] Alice: see you[/INST]"
    assert trailing.labels[: len(r.labels)] == r.labels


def test_an_assistant_turn_before_any_user_turn_is_left_out_on_alternating_templates(
    load_tokenizer: Callable[[str], Any],
) -> None:
    counts: Counter[str] = Counter()
    s = chatgpt(None, [(BOT, "Hi! How can I help?"), *EXCHANGE])
    (r,) = render(s, load_tokenizer("mistral-v0.3"), 1024, counts)
    assert r.text == apply(load_tokenizer("mistral-v0.3"), plain_messages(EXCHANGE, None, "message"))
    assert counts["assistant turns before the first user turn left out"] == 1
    # A template with named roles can show it: it stays, as context.
    (named,) = render(s, load_tokenizer("chatml"), 1024)
    assert named.text.startswith("<|im_start|>assistant\nHi! How can I help?<|im_end|>\n<|im_start|>user\n")


@pytest.mark.parametrize("family", ["mistral-v0.3", "gemma"])
def test_chat_time_prompt_with_only_assistant_turns_is_one_template_error(
    load_tokenizer: Callable[[str], Any], family: str
) -> None:
    """Only the assistant has spoken: the opening assistant turn is left out on alternating templates,
    so nothing is left to render (before: an IndexError traceback from render_prompt)."""
    s = chatgpt(None, [(BOT, "Hi! How can I help?")])
    with pytest.raises(TemplateError, match="needs a user message before the assistant answers"):
        render_prompt(s, load_tokenizer(family), BOT)
    # A named template shows it, as context.
    assert render_prompt(s, load_tokenizer("chatml"), BOT)


def test_long_assistant_chats_split_with_the_system_prompt_in_every_window(
    load_tokenizer: Callable[[str], Any],
) -> None:
    tokenizer = load_tokenizer("mistral-v0.3")
    exchange = [(USER if i % 2 == 0 else BOT, f"message {i} " + "with some words " * 6) for i in range(16)]
    counts: Counter[str] = Counter()
    pieces = render(chatgpt(SYSTEM, exchange), tokenizer, 120, counts)
    assert len(pieces) > 2
    for piece in pieces:
        assert len(piece.input_ids) <= 120
        # Once, in the user message right before the window's last trained answer.
        assert piece.text.count(SYSTEM) == 1
        head, _, tail = piece.text.rpartition(f"[INST] {SYSTEM}\n\n")
        assert "[INST]" not in tail and head
    trained = [
        t for p in pieces for t in tokenizer.decode([x for x in p.labels if x != IGNORE_INDEX]).split("</s>")
    ]
    assert (
        sum(1 for t in trained if t.strip()) + counts["trained turns lost: no room for the turn before them"]
        == 8  # every answer once
    )


# --- Mistral v0.3 against mistral_common's encoder, with the real v3 tokenizer -------------------------


@pytest.fixture(scope="module")
def mistral_v3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """(the v3 tokenizer that ships in mistral-common, converted to transformers; MistralTokenizer.v3())."""
    require("mistral_common")
    import mistral_common
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from transformers import LlamaTokenizer

    folder = tmp_path_factory.mktemp("mistral-v3")
    model = Path(mistral_common.__file__).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"
    shutil.copyfile(model, folder / "tokenizer.model")
    hf = LlamaTokenizer.from_pretrained(folder)  # converts the SentencePiece model, offline
    hf.chat_template = template_text("mistral-v0.3.jinja")
    return hf, MistralTokenizer.v3()


def encode_instruct(
    mistral: Any, msgs: list[tuple[str, str]], system: str | None
) -> tuple[list[int], list[int]]:
    """mistral_common's training encoding, and the labels mistral-finetune puts on it (assistant turns)."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import InstructRequest

    messages = [UserMessage(content=c) if r == "user" else AssistantMessage(content=c) for r, c in msgs]
    tokenized = mistral.instruct_tokenizer.encode_instruct(
        InstructRequest(messages=messages, system_prompt=system)
    )
    # mistral-finetune's mask: each message encoded alone, the assistant's tokens (and EOS) trained.
    inner = mistral.instruct_tokenizer
    last_user = max(i for i, m in enumerate(messages) if isinstance(m, UserMessage))
    labels = [IGNORE_INDEX]  # BOS
    for i, m in enumerate(messages):
        if isinstance(m, UserMessage):
            part = inner.encode_user_message(m, None, i == last_user, i == 0, system_prompt=system)[0]
            labels += [IGNORE_INDEX] * len(part)
        else:
            labels += inner.encode_assistant_message(m, i < last_user)
    assert len(labels) == len(tokenized.tokens)
    return tokenized.tokens, labels


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "system"])
def test_mistral_v3_ids_and_labels_equal_mistral_commons_encode_instruct(
    mistral_v3: tuple[Any, Any], system: str | None
) -> None:
    hf, mistral = mistral_v3
    (r,) = render(chatgpt(system), hf, 1024)
    msgs = [("user" if who == USER else "assistant", text) for who, text in EXCHANGE]
    ids, labels = encode_instruct(mistral, msgs, system)
    assert r.input_ids == ids
    assert r.labels == labels


def test_mistral_v3_chats_between_people_equal_encode_instruct(mistral_v3: tuple[Any, Any]) -> None:
    hf, mistral = mistral_v3
    s = replace(PEOPLE, turns=PEOPLE.turns[:4])
    (r,) = render(s, hf, 1024)
    msgs = [
        ("user", "Alice: anyone up?"),
        ("assistant", "Max: yep"),
        ("user", "Bob: pizza?"),
        ("assistant", "Max: sure"),
    ]
    ids, labels = encode_instruct(mistral, msgs, "You are Max.")
    assert r.input_ids == ids
    # The "Max: " prefix is context that chat time prefills: only the text after it is trained.
    trained = [i for i, x in enumerate(labels) if x != IGNORE_INDEX]
    assert [i for i, x in enumerate(r.labels) if x != IGNORE_INDEX] == [
        i for i in trained if hf.decode(ids[i]) not in ("Max", ":")
    ]


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "system"])
def test_mistral_v3_chat_time_prompt_equals_mistral_commons_request_encoding(
    mistral_v3: tuple[Any, Any], system: str | None
) -> None:
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    hf, mistral = mistral_v3
    history = chatgpt(system, EXCHANGE[:3])
    history = replace(history, turns=tuple(replace(t, trained=False) for t in history.turns))
    messages: list[Any] = [SystemMessage(content=system)] if system else []
    messages += [
        UserMessage(content=t) if who == USER else AssistantMessage(content=t) for who, t in EXCHANGE[:3]
    ]
    expected = mistral.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens
    assert render_prompt(history, hf, BOT) == expected


def test_several_speakers_on_the_user_side_keep_their_names(load_tokenizer: Callable[[str], Any]) -> None:
    # A role-play dataset: the trained character is the assistant, the others need their names.
    s = Sample(
        id="d1",
        conversation="jsonl:d1",
        source="jsonl",
        kind="assistant",
        turns=(
            Turn("Narrator", "The door opens.", False),
            Turn("Guard", "Halt!", False),
            Turn("Hero", "I come in peace.", True),
            Turn("Guard", "Pass.", False),
            Turn("Hero", "Thanks.", True),
        ),
    )
    tokenizer = load_tokenizer("chatml")
    (r,) = render(s, tokenizer, 1024)
    assert r.text == apply(
        tokenizer,
        [
            {"role": "user", "content": "Narrator: The door opens."},
            {"role": "user", "content": "Guard: Halt!"},
            {"role": "assistant", "content": "I come in peace."},
            {"role": "user", "content": "Guard: Pass."},
            {"role": "assistant", "content": "Thanks."},
        ],
    )
    (alt,) = render(s, load_tokenizer("mistral-v0.3"), 1024)
    assert alt.text == (
        "<s>[INST] Narrator: The door opens.\nGuard: Halt![/INST] I come in peace.</s>"
        "[INST] Guard: Pass.[/INST] Thanks.</s>"
    )


# --- property test: any ChatGPT-shaped conversation is apply_chat_template of its plain messages ---

_PIECES = st.sampled_from(["hi", "ok", "ça va", "😀", "\n", "lol", "42", "Sure.", "a-b", "x"])
_TEXTS = st.lists(_PIECES, min_size=0, max_size=5).map(" ".join)


def _plain(family: str, turns: list[tuple[str, str]], system: str | None) -> list[dict[str, Any]]:
    """The expected plain messages, written independently of render: empty turns dropped, consecutive
    roles merged on alternating templates, no assistant first there, the system prompt placed; and
    whether each is trained (an assistant message that is not the first message)."""
    alternating = family not in ("chatml", "llama3")
    msgs: list[dict[str, Any]] = []
    for who, text in turns:
        if not text.strip():
            continue
        role = "user" if who == USER else "assistant"
        if alternating and not msgs and role == "assistant":
            continue
        if alternating and msgs and msgs[-1]["role"] == role:
            msgs[-1]["content"] += "\n" + text
        else:
            msgs.append({"role": role, "content": text, "trained": role == "assistant" and bool(msgs)})
    if system and system.strip() and msgs:
        users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
        last = max((i for i, m in enumerate(msgs) if m["trained"]), default=len(msgs))
        where = SYSTEM_AT[family]
        if where == "message":
            msgs.insert(0, {"role": "system", "content": system, "trained": False})
        else:
            before = [i for i in users if i < last]
            at = users[0] if where == "first_user" else (before[-1] if before else users[-1])
            msgs[at]["content"] = f"{system}\n\n{msgs[at]['content']}"
    return msgs


@pytest.mark.parametrize("family", FAMILIES)
@settings(
    max_examples=int(os.environ.get("TWINLM_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    texts=st.lists(_TEXTS, min_size=2, max_size=7),
    user_first=st.booleans(),
    system=st.one_of(st.none(), _TEXTS),
)
def test_random_assistant_chats_render_as_their_plain_messages(
    load_tokenizer: Callable[[str], Any], family: str, texts: list[str], user_first: bool, system: str | None
) -> None:
    tokenizer = _cached(load_tokenizer, family)
    speakers = [USER, BOT] if user_first else [BOT, USER]
    exchange = [(speakers[i % 2], text) for i, text in enumerate(texts)]
    out = render(chatgpt(system, exchange), tokenizer, 4096)
    msgs = _plain(family, exchange, system)
    trained = sum(m["trained"] for m in msgs)
    assert len(out) == (trained > 0)  # nothing trained: nothing rendered
    if not out:
        return
    (r,) = out
    assert r.text == apply(tokenizer, [{"role": m["role"], "content": m["content"]} for m in msgs])
    eot_id = tokenizer.convert_tokens_to_ids(EOT[family])
    special = inspect_template(tokenizer).special_ids
    labelled = [i for i, x in enumerate(r.labels) if x != IGNORE_INDEX]
    # Labels: assistant text and one end-of-turn token per trained message, never a header.
    assert not special.intersection(r.input_ids[i] for i in labelled if r.input_ids[i] != eot_id)
    assert sum(1 for i in labelled if r.input_ids[i] == eot_id) == trained


_TOKENIZERS: dict[str, Any] = {}


def _cached(load_tokenizer: Callable[[str], Any], family: str) -> Any:
    if family not in _TOKENIZERS:
        _TOKENIZERS[family] = load_tokenizer(family)
    return _TOKENIZERS[family]
