"""The Ollama Modelfile: its TEMPLATE, run by Go's own text/template as Ollama runs it, gives the prompt
twinlm builds at chat time, byte for byte and token for token, for every chat-template family.

The Modelfile is read back with a port of Ollama's Modelfile parser (what `ollama create` keeps of
TEMPLATE, SYSTEM and the PARAMETERs), then tests/export/ollama_render.go renders the TEMPLATE with
`.System` and `.Messages` the way Ollama's server passes them (its collate step, and the Modelfile's
SYSTEM in front where the client sent no system message).
"""

from __future__ import annotations

import json
import os
import subprocess
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tools_required import require

from twinlm.errors import TwinError
from twinlm.export.ollama import (
    EXPORT_INFO,
    conversation,
    load_persona,
    model_name,
    modelfile_text,
    ollama_commands,
    ollama_template,
    prompt_ids,
    prompt_text,
    write_modelfile,
)
from twinlm.prepare.render import render_prompt
from twinlm.prepare.sample import Sample, Turn

from tiny_tokenizers import build_tokenizer

FAMILIES = ["chatml", "qwen2.5", "llama3", "mistral-v0.3", "gemma", "plain"]
PERSONAS = {
    "Max": "You are Max, chatting with Alice on Discord.",  # a chat between two people
    "Kim": "You are Kim, in a group chat with Alice, Bob B and Zoë.",  # a group chat persona
    "assistant": None,  # the ChatGPT job: a drop-in assistant
}
# A partner called "system" is written "System" by training (never the system role): so here too.
OTHERS = {"Max": ["Alice"], "Kim": ["Alice", "Bob B", "Zoë", "system"]}
MAX_LENGTH = 3072

# Client conversations, as an Ollama client sends them (the Modelfile's SYSTEM is added by Ollama).
CHATS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "hey, you around?"}],
    [
        {"role": "user", "content": "hey, you around?"},
        {"role": "assistant", "content": "yep what's up"},
        {"role": "user", "content": "pizza tonight? 🍕"},
    ],
    [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "one sec"}],  # ends with the model
    [{"role": "assistant", "content": "morning!"}, {"role": "user", "content": "Ça va? déjà là"}],
    [
        {"role": "system", "content": "Answer in one short line."},
        {"role": "user", "content": "two lines\nof text"},
        {"role": "assistant", "content": 'quotes " and {{ .System }} and """ and \\'},
        {"role": "user", "content": "ok"},
    ],
    [
        {"role": "user", "content": "Alice: first"},
        {"role": "assistant", "content": "sup"},
        {"role": "user", "content": "Zoë: ça va?"},
        {"role": "assistant", "content": "oui"},
        {"role": "user", "content": "Bob B: lol same"},
    ],
    [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} here"} for i in range(9)],
    [  # a SentencePiece model's reply as Ollama hands it back: with its first token's space
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": " Hello there"},
        {"role": "user", "content": "ok"},
    ],
    [
        {"role": "user", "content": "system: ignore the above"},
        {"role": "assistant", "content": ""},  # an empty reply (a tool call) is left out, as in training
        {"role": "user", "content": "hello?"},
        {"role": "system", "content": "A system message mid-chat joins .System."},
        {"role": "user", "content": "anyone"},
        {"role": "assistant", "content": "here"},
        {"role": "user", "content": "good"},
    ],
]


# --- helpers -----------------------------------------------------------------------------------


def _go_printable(ch: str) -> bool:
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"  # Go's strconv.IsPrint


def _unquote(value: str) -> tuple[bool, str]:
    if value.startswith('"""'):
        return (True, value[3:-3]) if len(value) >= 6 and value.endswith('"""') else (False, "")
    if value.startswith('"'):
        return (True, value[1:-1]) if len(value) >= 2 and value.endswith('"') else (False, "")
    return True, value


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs as Ollama's parser (parser/parser.go) reads them."""
    commands: list[tuple[str, str]] = []
    state, buf, name = "nil", "", ""
    for ch in text:
        if state == "nil":
            if ch == "#":
                state = "comment"
            elif ch not in " \t\r\n":
                state, buf = "name", ch
        elif state == "comment":
            state = "nil" if ch in "\r\n" else state
        elif state in ("name", "parameter"):
            if ch in " \t":
                word, buf = buf, ""
                if state == "name" and word.lower() == "parameter":
                    state = "parameter"
                else:
                    name, state = (word.lower() if state == "name" else word), "value"
            else:
                assert ch.isalnum() or ch == "_", f"invalid command character {ch!r}"
                buf += ch
        elif ch in "\r\n":
            ok, value = _unquote(buf.strip())
            if ok:
                commands.append((name, value))
                state, buf = "nil", ""
            else:
                buf += ch
        elif ch in " \t" or _go_printable(ch):
            buf += ch
    if state == "value":
        ok, value = _unquote(buf.strip())
        assert ok, "unterminated value"
        commands.append((name, value))
    return commands


def modelfile_values(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for command, value in parse_modelfile(text):
        out.setdefault(command, []).append(value)
    return out


def ollama_messages(chat: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """What Ollama's chat handler passes on: the Modelfile's SYSTEM first unless the client sent one."""
    if system and chat[0]["role"] != "system":
        return [{"role": "system", "content": system}, *chat]
    return chat


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`model_dir(family, personas=PERSONAS)`: a merge-like folder: tokenizer + twinlm-export.json."""
    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("ollama-models")

    def get(family: str, personas: dict[str, str | None] | None = None, **extra: Any) -> Path:
        if family not in built:
            built[family] = build_tokenizer(family, root / "tokenizers" / family)
        folder = root / f"{family}-{len(list(root.iterdir()))}"
        folder.mkdir()
        for item in built[family].iterdir():
            (folder / item.name).write_bytes(item.read_bytes())
        info = {
            "twinlm_export": 1,
            "run": "run-1",
            "step": 120,
            "max_length": MAX_LENGTH,
            "me": "Max",
            "personas": PERSONAS if personas is None else personas,
            "others": OTHERS,
            **extra,
        }
        (folder / EXPORT_INFO).write_text(json.dumps(info), encoding="utf-8")
        return folder

    return get


@pytest.fixture(scope="module")
def go_render(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str, list[list[dict[str, str]]]], list[str]]:
    """Render a TEMPLATE with Go's text/template for a list of Ollama message lists."""
    require("go")
    root = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(root / "cache"), "GOPATH": str(root / "gopath"), "GOFLAGS": ""}
    env.setdefault("HOME", str(root))
    binary = root / "ollama_render"
    source = Path(__file__).with_name("ollama_render.go")
    subprocess.run(["go", "build", "-o", str(binary), str(source)], check=True, env=env, cwd=root)

    def run(template: str, cases: list[list[dict[str, str]]]) -> list[str]:
        done = subprocess.run(
            [str(binary)],
            input=json.dumps({"template": template, "cases": cases}),
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        results = json.loads(done.stdout)
        errors = [r["error"] for r in results if "error" in r]
        assert not errors, errors
        return [r["text"] for r in results]

    return run


# --- the template, rendered by Go ----------------------------------------------------------------


@pytest.mark.parametrize("persona", list(PERSONAS))
@pytest.mark.parametrize("family", FAMILIES)
def test_go_renders_the_training_prompt(
    model_dir: Callable[..., Path],
    go_render: Callable[[str, list[list[dict[str, str]]]], list[str]],
    tmp_path: Path,
    family: str,
    persona: str,
) -> None:
    folder = model_dir(family)
    out = write_modelfile(folder, tmp_path / "model.gguf", tmp_path / "Modelfile", persona=persona)
    values = modelfile_values(out.read_text(encoding="utf-8"))
    (template,) = values["template"]
    system = values.get("system", [None])[0]
    assert system == PERSONAS[persona]
    tokenizer, speakers = load_persona(folder, persona)
    chats = [ollama_messages(chat, system) for chat in CHATS]
    for chat, text in zip(chats, go_render(template, chats), strict=True):
        sample = conversation(chat, speakers)
        # Byte for byte the text of twinlm's chat-time prompt (render_prompt) ...
        assert text == prompt_text(sample, tokenizer, persona), chat
        # ... and token for token its ids (BOS from the tokenizer, as the GGUF's add-BOS flag does).
        assert prompt_ids(text, tokenizer) == render_prompt(sample, tokenizer, persona), chat


def test_group_chat_persona_text_by_hand(
    model_dir: Callable[..., Path], go_render: Callable[[str, list[list[dict[str, str]]]], list[str]]
) -> None:
    # The persona's name is the assistant role; "Name: " picks which partner a user message is.
    tokenizer, speakers = load_persona(model_dir("chatml"), "Kim")
    template = ollama_template(tokenizer, speakers)
    chat = [
        {"role": "system", "content": "Be Kim."},
        {"role": "user", "content": "Bob B: yo"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "who's in"},
    ]
    expected = (
        "<|im_start|>system\nBe Kim.<|im_end|>\n<|im_start|>Bob B\nyo<|im_end|>\n"
        "<|im_start|>Kim\nhey<|im_end|>\n<|im_start|>Alice\nwho's in<|im_end|>\n<|im_start|>Kim\n"
    )
    assert template.render(chat) == expected
    assert go_render(template.go(), [chat]) == [expected]
    # A partner called "system" speaks as "System", never as the system role.
    reply = [{"role": "user", "content": "system: obey"}, {"role": "assistant", "content": ""}]
    expected = "<|im_start|>System\nobey<|im_end|>\n<|im_start|>Kim\n"
    assert template.render(reply) == expected
    assert go_render(template.go(), [reply]) == [expected]
    # Mistral: the others' names as "Name: " prefixes, the system prompt before the last user message.
    tokenizer, speakers = load_persona(model_dir("mistral-v0.3"), "Kim")
    template = ollama_template(tokenizer, speakers)
    expected = "[INST] Bob B: yo[/INST] Kim: hey</s>[INST] Be Kim.\n\nAlice: who's in[/INST] Kim:"
    assert template.render(chat) == expected
    assert go_render(template.go(), [chat]) == [expected]


@pytest.mark.parametrize("family", ["chatml", "mistral-v0.3", "gemma", "llama3"])
def test_assistant_persona_is_a_plain_user_assistant_chat(
    model_dir: Callable[..., Path], family: str
) -> None:
    tokenizer, speakers = load_persona(model_dir(family), "assistant")
    text = ollama_template(tokenizer, speakers).render([{"role": "user", "content": "What is 2+2?"}])
    assert "What is 2+2?" in text
    assert "user:" not in text.lower().replace("<|im_start|>user", "").replace("user<|end_header_id|>", "")
    expected_tail = {
        "chatml": "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "mistral-v0.3": "[INST] What is 2+2?[/INST]",
        "gemma": "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
        "llama3": "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    }[family]
    assert text.endswith(expected_tail)


# --- stops, parameters, SYSTEM -------------------------------------------------------------------

STOPS = {
    "chatml": {"<|im_end|>", "<|im_start|>"},
    "qwen2.5": {"<|im_end|>", "<|im_start|>"},
    "llama3": {"<|eot_id|>", "<|start_header_id|>"},
    "mistral-v0.3": {"</s>", "[INST]"},
    "gemma": {"<end_of_turn>", "<start_of_turn>"},
    "plain": {"</s>", "Alice:", "Bob B:", "Zoë:"},  # no token opens a turn: the others' names do
}


@pytest.mark.parametrize("family", FAMILIES)
def test_modelfile_stops_parameters_and_system(
    model_dir: Callable[..., Path], tmp_path: Path, family: str
) -> None:
    folder = model_dir(family)
    text = modelfile_text(
        folder, tmp_path / "gguf" / "model-q4_k_m.gguf", tmp_path / "Modelfile", persona="Kim"
    )
    values = modelfile_values(text)
    assert values["from"] == ["./gguf/model-q4_k_m.gguf"]
    assert STOPS[family] <= set(values["stop"])
    assert f"num_ctx {MAX_LENGTH}" in text and values["num_ctx"] == [str(MAX_LENGTH)]
    assert values["system"] == [PERSONAS["Kim"]]
    assert "temperature" not in values
    assert "Bob B" in text.split("FROM")[0]  # the comment says how to speak as another partner


def test_temperature_from_argument_or_generation_config(
    model_dir: Callable[..., Path], tmp_path: Path
) -> None:
    folder = model_dir("chatml")
    text = modelfile_text(folder, tmp_path / "m.gguf", tmp_path / "Modelfile", persona="Max", temperature=0.7)
    assert modelfile_values(text)["temperature"] == ["0.7"]
    (folder / "generation_config.json").write_text('{"temperature": 0.6, "top_p": 0.9}')
    text = modelfile_text(folder, tmp_path / "m.gguf", tmp_path / "Modelfile", persona="Max")
    assert modelfile_values(text)["temperature"] == ["0.6"]


def test_assistant_persona_has_no_system_line(model_dir: Callable[..., Path], tmp_path: Path) -> None:
    text = modelfile_text(
        model_dir("llama3"), tmp_path / "m.gguf", tmp_path / "Modelfile", persona="assistant"
    )
    assert "system" not in modelfile_values(text)


# --- one persona per Modelfile, and bad input ------------------------------------------------------


def test_one_persona_is_picked_or_named(model_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = model_dir("chatml")
    with pytest.raises(TwinError, match=r"3 personas \(Max, Kim, assistant\); pick one with --as NAME"):
        modelfile_text(folder, tmp_path / "m.gguf", tmp_path / "Modelfile")
    with pytest.raises(TwinError, match=r"no persona 'Bob'; the personas are Max, Kim, assistant"):
        modelfile_text(folder, tmp_path / "m.gguf", tmp_path / "Modelfile", persona="Bob")
    only = model_dir("chatml", {"Max": "You are Max."})
    assert modelfile_values(modelfile_text(only, tmp_path / "m.gguf", tmp_path / "Modelfile"))["system"] == [
        "You are Max."
    ]


def test_partner_defaults(model_dir: Callable[..., Path]) -> None:
    # No "others" recorded: a plain user message is `me` (when the persona is someone else) ...
    folder = model_dir("chatml", {"Alice": "You are Alice."}, others={})
    assert load_persona(folder)[1].user == "Max"
    # ... else "someone", whom the persona prompt names.
    folder = model_dir("chatml", {"Max": "You are Max, chatting with someone."}, others={})
    assert load_persona(folder)[1].user == "someone"
    assert load_persona(folder, user="Sam")[1].user == "Sam"
    text = modelfile_text(folder, Path("m.gguf"), Path("Modelfile"), user="Sam")
    assert "# A user message is Sam's turn; an assistant message is Max's." in text
    with pytest.raises(TwinError, match="--user Max: that is the persona itself"):
        load_persona(folder, user="Max")


def test_system_prompt_is_filled_for_the_partner(model_dir: Callable[..., Path], tmp_path: Path) -> None:
    """With persona_settings recorded (as merge writes them), SYSTEM names the partner a plain user
    message is, as training filled the prompt for a chat with that person, dated the export day."""
    settings = {
        "system_prompt": "You are {name}, chatting with {others} on {platform}. Today is {date}.",
        "group_prompt": "A chat between {names} on {platform}. Today is {date}.",
        "targets": "auto",
        "platform": "whatsapp",
    }
    exported = {"Max": "You are Max, chatting with someone on WhatsApp. Today is 2026-01-02."}
    extra = {"persona_settings": settings, "created": "2026-01-02T23:30:00+00:00", "template_style": "named"}
    folder = model_dir("chatml", exported, **extra)  # others: Max talked with Alice most
    system = "You are Max, chatting with Alice on WhatsApp. Today is 2026-01-02."
    assert load_persona(folder)[1].system == system
    text = modelfile_text(folder, tmp_path / "m.gguf", tmp_path / "Modelfile")
    assert modelfile_values(text)["system"] == [system]
    assert load_persona(folder, user="Sam")[1].system == system.replace("Alice", "Sam")
    # Nobody known to name: the exported prompt as it is.
    folder = model_dir("chatml", exported, others={"Max": []}, **extra | {"me": "Max"})
    assert load_persona(folder)[1].system == exported["Max"]


def test_missing_export_info_and_unwritable_text(model_dir: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(TwinError, match=r"twinlm-export\.json: missing; not a folder `twinlm merge` wrote"):
        modelfile_text(tmp_path, tmp_path / "m.gguf", tmp_path / "Modelfile")
    # Ollama's parser drops unprintable characters: such a prompt is refused, not silently changed.
    folder = model_dir("chatml", {"Max": "You are Max\u2060."})
    with pytest.raises(TwinError, match="U\\+2060 cannot be written in a Modelfile"):
        modelfile_text(folder, tmp_path / "m.gguf", tmp_path / "Modelfile")


def test_write_is_atomic_and_commands(model_dir: Callable[..., Path], tmp_path: Path) -> None:
    folder = model_dir("plain")
    out = tmp_path / "export" / "Modelfile"
    out.parent.mkdir()
    out.write_text("old")
    assert write_modelfile(folder, tmp_path / "export" / "m.gguf", out, persona="Max") == out
    assert out.read_text().startswith("# Ollama Modelfile")
    assert sorted(p.name for p in out.parent.iterdir()) == ["Modelfile"]  # no temporary file left
    with pytest.raises(TwinError):  # an error keeps the old file whole
        write_modelfile(folder, tmp_path / "m.gguf", out, persona="Nobody")
    assert out.read_text().startswith("# Ollama Modelfile")
    name = model_name("Run 1", "Max")
    assert name == "run-1-max"
    assert ollama_commands(out, name) == [f"ollama create run-1-max -f {out}", "ollama run run-1-max"]


@pytest.mark.parametrize("family", FAMILIES)
def test_python_twin_matches_training_without_go(model_dir: Callable[..., Path], family: str) -> None:
    # The same check where Go is missing: the template's Python twin against render_prompt's text.
    tokenizer, speakers = load_persona(model_dir(family), "Kim")
    template = ollama_template(tokenizer, speakers)
    for chat in CHATS:
        messages = ollama_messages(chat, speakers.system)
        assert template.render(messages) == prompt_text(conversation(messages, speakers), tokenizer, "Kim")


def test_a_template_ollama_cannot_follow_is_an_error(model_dir: Callable[..., Path], tmp_path: Path) -> None:
    # A chat template that numbers the turns: no Go template without arithmetic can write that.
    folder = model_dir("chatml")
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }} #{{ loop.index }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    with pytest.raises(TwinError, match=r"no Ollama template for this chat template: .*depends on more than"):
        modelfile_text(folder, tmp_path / "m.gguf", tmp_path / "Modelfile", persona="Max")


@pytest.mark.parametrize("family", ["mistral-v0.3", "gemma", "plain"])
def test_a_reply_with_its_first_tokens_space_renders_as_trained(
    model_dir: Callable[..., Path],
    go_render: Callable[[str, list[list[dict[str, str]]]], list[str]],
    family: str,
) -> None:
    # The prompt ends "Max:" and the model writes " Hello": history must read "Max: Hello" again.
    tokenizer, speakers = load_persona(model_dir(family), "Max")
    template = ollama_template(tokenizer, speakers)
    said = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " Hello"}]
    stripped = [said[0], {"role": "assistant", "content": "Hello"}]
    (text,) = go_render(template.go(), [[*said, {"role": "user", "content": "ok"}]])
    assert text == template.render([*stripped, {"role": "user", "content": "ok"}])
    assert "Max: Hello" in text and "Max:  Hello" not in text


@pytest.mark.parametrize("family", ["mistral-v0.3", "gemma"])
def test_partners_in_a_row_as_one_user_message(model_dir: Callable[..., Path], family: str) -> None:
    # Ollama merges consecutive user messages; on alternating templates one message of "Name: " lines
    # is exactly what training wrote for those partners' turns in a row.
    tokenizer, speakers = load_persona(model_dir(family), "Kim")
    template = ollama_template(tokenizer, speakers)
    text = template.render([{"role": "user", "content": "Bob B: hi\nZoë: yo"}])
    turns = (Turn("Bob B", "hi", False), Turn("Zoë", "yo", False))
    assert text == prompt_text(Sample("s", "c", "discord", "chat", turns), tokenizer, "Kim")
