"""The twin at chat time: prompts are render_prompt of the same conversation (the persona prompt filled
for the chat's people), history that does not fit drops the oldest turns and keeps the system prompt,
OpenAI-style messages map to the same turns, and open_twin picks the newest export or run."""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from serve_fakes import FRIEND, ME, FakeBackend, make_fake_twin
from tools_required import require

from twinlm.errors import TwinError
from twinlm.prepare.render import render_prompt
from twinlm.prepare.sample import Sample, Turn
from twinlm.serve.backends import Sampling
from twinlm.serve.twin import Twin, open_twin

CHAT = [(FRIEND, "hey!! are we still on for climbing tomorrow?"), (ME, "yes 7pm"), (FRIEND, "cool, see you")]


def expected(
    twin: Twin, persona: str, turns: list[tuple[str, str]], system: str | None, **kw: Any
) -> list[int]:
    sample = Sample("x", "x", "x", "chat", tuple(Turn(w, t, False) for w, t in turns), system)
    return render_prompt(sample, twin.backend.tokenizer, persona, **kw)


def test_prompt_is_render_prompt_with_the_persona_prompt_filled(fake_twin: Twin) -> None:
    ids = fake_twin.prompt(ME, CHAT, max_new_tokens=32)
    system = fake_twin.system_prompt(ME, [FRIEND])
    assert (
        system is not None and FRIEND in system and ME in system
    )  # "You are Alex Rivera, chatting with Sam"
    assert ids == expected(fake_twin, ME, CHAT, system)
    text = fake_twin.backend.tokenizer.decode(ids)
    assert text.endswith(f"<|im_start|>{ME}\n") and system in text
    # An explicit system prompt replaces the persona's.
    assert fake_twin.prompt(ME, CHAT, system="Be brief.", max_new_tokens=32) == expected(
        fake_twin, ME, CHAT, "Be brief."
    )


def test_persona_names_are_matched_case_insensitively(fake_twin: Twin) -> None:
    assert fake_twin.persona("sam") == FRIEND
    assert fake_twin.persona(None) == ME
    with pytest.raises(TwinError, match="no persona 'Bob'; the personas are Alex Rivera, Sam"):
        fake_twin.persona("Bob")


def test_history_over_the_context_drops_the_oldest_turns_and_keeps_the_system_prompt(
    tiny_tokenizer: Any,
) -> None:
    twin = make_fake_twin(FakeBackend(tiny_tokenizer, context_length=160))
    turns = [
        (FRIEND if i % 2 else ME, f"message number {i} about the climbing trip and dinner") for i in range(20)
    ]
    ids = twin.prompt(FRIEND, turns, max_new_tokens=40)
    assert len(ids) <= 160 - 40
    text = tiny_tokenizer.decode(ids)
    system = twin.system_prompt(FRIEND, [ME])
    assert (
        system is not None and text.count(system) == 1 and text.index(system) < text.index("message number")
    )
    assert "message number 19 " in text and "message number 0 " not in text
    kept = next(k for k in range(len(turns)) if f"message number {k} " in text)
    assert kept > 0
    assert ids == expected(twin, FRIEND, turns[kept:], system)  # the same as rendering only the kept turns
    assert len(expected(twin, FRIEND, turns[kept - 1 :], system)) > 160 - 40  # one more would not fit


def test_a_long_history_gives_render_prompts_own_result(tiny_tokenizer: Any) -> None:
    """Turns too old to fit are left out in one pass before rendering (twin._fitting): the prompt is
    still exactly render_prompt's over the whole history, which drops them one rendering at a time."""
    twin = make_fake_twin(FakeBackend(tiny_tokenizer, context_length=300))
    rng = random.Random(3)
    words = ["ok", "sure", "dinner", "  spaced  ", "🙂", "tomorrow at 7?", "<|im_end|>", "a\nb", ""]
    turns = [
        (rng.choice([ME, FRIEND, "Jo"]), " ".join(rng.choices(words, k=rng.randint(1, 12))))
        for _ in range(120)
    ]
    system = twin.system_prompt(FRIEND, [w for w, _ in turns])
    for room in (100, 160, 299):
        ids = twin.prompt(FRIEND, turns, max_new_tokens=300 - room)
        assert ids == expected(twin, FRIEND, turns, system, max_length=room)
    # The newest turn alone too long: one line (not a rendering per dropped turn first).
    with pytest.raises(TwinError, match="the last message alone"):
        twin.prompt(FRIEND, [*turns, (ME, "word " * 400)], max_new_tokens=200)


def test_prompt_with_no_room_is_one_line(tiny_tokenizer: Any) -> None:
    twin = make_fake_twin(FakeBackend(tiny_tokenizer, context_length=64))
    with pytest.raises(TwinError, match="no room"):
        twin.prompt(ME, CHAT, max_new_tokens=64)
    with pytest.raises(TwinError, match="the system prompt and the last message alone"):
        twin.prompt(ME, [(FRIEND, "word " * 200)], max_new_tokens=8)


def test_messages_map_to_the_same_turns(fake_twin: Twin) -> None:
    messages = [
        {"role": "user", "content": CHAT[0][1]},
        {
            "role": "assistant",
            "content": " " + CHAT[1][1],
        },  # a reply's leading space, as clients send it back
        {"role": "user", "content": CHAT[2][1]},
    ]
    # Talking to me (the owner), a plain user message is the persona's partner: nobody recorded -> "someone".
    partner = fake_twin.partner(ME)
    assert partner == "someone"
    want = [(partner, CHAT[0][1]), (ME, CHAT[1][1]), (partner, CHAT[2][1])]
    assert fake_twin.prompt_from_messages(ME, messages, max_new_tokens=16) == fake_twin.prompt(
        ME, want, max_new_tokens=16
    )
    # `name` says who speaks; system messages replace the persona prompt.
    named = [{"role": "system", "content": "Be brief."}] + [
        {**m, "name": FRIEND} if m["role"] == "user" else m for m in messages
    ]
    assert fake_twin.prompt_from_messages(ME, named, max_new_tokens=16) == fake_twin.prompt(
        ME, CHAT, system="Be brief.", max_new_tokens=16
    )
    # Talking to Sam, a plain user message is me.
    assert fake_twin.partner(FRIEND) == ME


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "tool", "content": "x"}], r"messages\[0\]\.role 'tool'"),
        ([{"role": "user", "content": ["a"]}], r"messages\[0\]\.content: expected a string"),
        ([{"role": "user", "content": "hi", "name": ""}], r"messages\[0\]\.name"),
        (["hi"], r"messages\[0\]: expected an object"),
    ],
)
def test_bad_messages_are_one_line(fake_twin: Twin, messages: list[Any], match: str) -> None:
    with pytest.raises(TwinError, match=match):
        fake_twin.prompt_from_messages(ME, messages, max_new_tokens=16)


def test_the_assistant_persona_renders_the_templates_own_chat(tiny_tokenizer: Any) -> None:
    twin = make_fake_twin(FakeBackend(tiny_tokenizer))
    twin.personas = {"assistant": None}
    ids = twin.prompt("assistant", [("Alex Rivera", "What is a good cat name?")], max_new_tokens=16)
    sample = Sample("x", "x", "x", "assistant", (Turn("user", "What is a good cat name?", False),))
    assert ids == render_prompt(sample, tiny_tokenizer, "assistant")
    assert (
        twin.prompt_from_messages(
            "assistant",
            [{"role": "user", "content": "What is a good cat name?", "name": "x"}],
            max_new_tokens=16,
        )
        == ids
    )


def test_reply_streams_the_backends_text(fake_twin: Twin) -> None:
    g = fake_twin.reply(FRIEND, CHAT[:2], sampling=Sampling(max_tokens=50))
    assert "".join(g) == "sure, sunday evening works for me" and g.finish_reason == "stop"
    backend = fake_twin.backend
    assert isinstance(backend, FakeBackend)
    assert backend.prompts == [fake_twin.prompt(FRIEND, CHAT[:2], max_new_tokens=50)]


# --- open_twin on a real workspace ---------------------------------------------------------------------


def test_open_twin_picks_the_newest_export_and_says_so(served_workspace: Path) -> None:
    require("llama_cpp")
    twin = open_twin(served_workspace, context_length=256)
    try:
        assert twin.backend.name == "llama.cpp"
        assert twin.description.startswith("export/r/r-f32.gguf via llama.cpp")
        assert set(twin.personas) == {ME, FRIEND} and twin.me == ME
    finally:
        twin.close()


def test_open_twin_with_transformers_and_with_a_run(served_workspace: Path) -> None:
    merged = open_twin(served_workspace, backend="transformers", context_length=256)
    assert merged.backend.name == "transformers" and merged.description.startswith("export/r/merged via")
    run = open_twin(served_workspace, served_workspace / "runs" / "r", context_length=256)
    assert run.description.startswith("run r (base model + adapter")
    assert run.personas == merged.personas and run.me == ME
    # The run's own tokenizer: the same prompt as the export's; and it answers.
    ids = merged.prompt(FRIEND, CHAT[:2], max_new_tokens=8)
    assert ids == run.prompt(FRIEND, CHAT[:2], max_new_tokens=8)
    reply = run.backend.generate(ids, Sampling(max_tokens=8, seed=1))
    assert list(reply) and reply.completion_tokens >= 1


def test_open_twin_says_when_a_newer_run_is_not_exported(served_workspace: Path, tmp_path: Path) -> None:
    """Talking to the newest export while a run trained since is not exported: the user would believe the
    new model answers. What is used says so, and how to talk to the new run."""
    import os
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(served_workspace, ws)
    shutil.copytree(ws / "runs" / "r", ws / "runs" / "r2")
    later = (ws / "export" / "r" / "merged" / "twinlm-export.json").stat().st_mtime + 60
    os.utime(ws / "runs" / "r2" / "config.json", (later, later))
    twin = open_twin(ws, backend="transformers", context_length=256)
    said = "export/r/merged (run r2 is newer and not exported: `twinlm export -w "
    assert twin.description.startswith(said)
    assert "or name it (`r2`) to talk to it now)" in twin.description
    shutil.copytree(ws / "export" / "r", ws / "export" / "r2")  # exported too: nothing to say
    assert "newer" not in open_twin(ws, backend="transformers", context_length=256).description


def test_open_twin_without_anything_is_one_line(tmp_path: Path, served_workspace: Path) -> None:
    with pytest.raises(TwinError, match="nothing to talk to yet"):
        open_twin(tmp_path)
    with pytest.raises(TwinError, match="not a run, an export folder"):
        open_twin(served_workspace, "nope")
    with pytest.raises(TwinError, match="runs with transformers"):
        open_twin(served_workspace, served_workspace / "runs" / "r", backend="llama.cpp")
    lonely = tmp_path / "lonely.gguf"
    shutil.copy(served_workspace / "export/r/r-f32.gguf", lonely)
    with pytest.raises(TwinError, match="no merged folder beside it"):
        open_twin(served_workspace, lonely)


def test_other_partners_recorded_by_the_export_are_used(fake_twin: Twin) -> None:
    twin = replace(fake_twin, others={ME: ["Priya", FRIEND]})
    assert twin.partner(ME) == "Priya"
    ids = twin.prompt_from_messages(ME, [{"role": "user", "content": f"{FRIEND}: hi"}], max_new_tokens=8)
    assert ids == twin.prompt(ME, [(FRIEND, "hi")], max_new_tokens=8)
