"""`twinlm chat` without a terminal: the session's history and prompts, its slash commands, multi-line
input, stopping a reply from another thread, and `--once` (with a fake model, then the real tiny one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from serve_fakes import FAKE_REPLY, FRIEND, ME, FakeBackend, make_fake_twin
from typer.testing import CliRunner

from twinlm.config import TwinConfig
from twinlm.errors import TwinError
from twinlm.serve.backends import Generation, Sampling
from twinlm.serve.chat import ChatSession, LineEditor, ThreadedReply
from twinlm.serve.twin import Twin
from twinlm.workspace import init_workspace

TWINLM = Path(sys.executable).parent / "twinlm"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def session(twin: Twin, **kw: Any) -> ChatSession:
    return ChatSession.start(twin, Sampling(max_tokens=64), **kw)


def test_defaults_and_names(fake_twin: Twin) -> None:
    s = session(fake_twin)
    assert (s.persona, s.me) == (ME, "someone")  # the twin is you; nobody recorded as your partner
    s = session(fake_twin, persona="sam")
    assert (s.persona, s.me) == (FRIEND, ME)  # talking to Sam: you are you
    with pytest.raises(TwinError, match="that is who the model speaks as"):
        session(fake_twin, persona=FRIEND, me=FRIEND)


def test_history_goes_into_each_prompt(fake_twin: Twin) -> None:
    s = session(fake_twin, persona=FRIEND)
    for text in ("hey", "dinner at 7?"):
        reply = s.ask(text)
        assert "".join(reply) == FAKE_REPLY
        s.keep(reply)
    assert s.turns == [(ME, "hey"), (FRIEND, FAKE_REPLY), (ME, "dinner at 7?"), (FRIEND, FAKE_REPLY)]
    backend = fake_twin.backend
    assert isinstance(backend, FakeBackend)
    assert backend.prompts[-1] == fake_twin.prompt(FRIEND, s.turns[:3], max_new_tokens=64)


def test_slash_commands(fake_twin: Twin, tmp_path: Path) -> None:
    s = session(fake_twin, persona=FRIEND)
    reply = s.ask("hey")
    assert "".join(reply) == FAKE_REPLY
    s.keep(reply)
    help_text = s.command("/help")
    assert help_text is not None and "Alex Rivera, Sam" in help_text and "/save FILE" in help_text
    # /as the person you are: you take the model's old place.
    assert s.command("/as alex rivera") == "The model now speaks as Alex Rivera. You are now Sam."
    assert (s.persona, s.me) == (ME, FRIEND)
    assert s.command("/me Jo") == "You are now Jo." and s.me == "Jo"
    with pytest.raises(TwinError, match="that is who the model speaks as"):
        s.command("/me Alex Rivera")
    with pytest.raises(TwinError, match="no persona 'Bob'"):
        s.command("/as Bob")
    shown = s.command("/system")
    assert shown is not None and "Alex Rivera" in shown and "Jo" in shown  # filled for this chat's people
    assert s.command("/system Be brief.") == "System prompt set."
    assert s.command("/system") == "System prompt: Be brief."
    s.command("/system default")
    assert s.system is None
    assert s.command("/save " + str(tmp_path / "chat.json")) == f"Saved 2 turns to {tmp_path / 'chat.json'}."
    saved = orjson.loads((tmp_path / "chat.json").read_bytes())
    assert saved["turns"] == [{"speaker": ME, "text": "hey"}, {"speaker": FRIEND, "text": FAKE_REPLY}]
    assert (saved["persona"], saved["me"]) == (ME, "Jo")
    s.command(f"/save {tmp_path / 'chat.txt'}")
    assert (tmp_path / "chat.txt").read_text() == f"{ME}: hey\n\n{FRIEND}: {FAKE_REPLY}\n\n"
    with pytest.raises(TwinError, match="cannot write"):
        s.command(f"/save {tmp_path / 'chat.txt' / 'x.txt'}")  # under a file
    assert s.command("/reset") == "Conversation cleared." and s.turns == []
    with pytest.raises(TwinError, match="unknown command"):
        s.command("/nope")
    assert s.command("/exit") is None


def test_multi_line_input() -> None:
    editor = LineEditor()
    assert editor.feed("first line\\") is None and editor.pending
    assert editor.feed("second") == "first line\nsecond" and not editor.pending
    assert editor.feed('"""') is None
    assert editor.feed("pasted\\") is None and editor.feed("") is None
    assert editor.feed("  /as not a command") is None
    assert editor.feed('"""') == "pasted\\\n\n  /as not a command"
    editor.feed("half\\")
    editor.clear()
    assert editor.feed("fresh") == "fresh"


def test_a_reply_in_a_thread_stops_when_told(tiny_tokenizer: Any) -> None:
    long_reply = " ".join(f"w{i}" for i in range(200))
    twin = make_fake_twin(FakeBackend(tiny_tokenizer, long_reply, delay=0.01))
    s = session(twin, persona=FRIEND)
    reply = ThreadedReply(lambda cancel: s.ask("talk to me", cancel))
    first = reply.next()
    assert first
    reply.stop()
    rest = list(reply)
    assert reply.generation is not None and reply.generation.finish_reason == "cancelled"
    assert first + "".join(rest) == reply.generation.text and "w199" not in reply.generation.text
    s.keep(reply.generation)
    assert s.turns[-1] == (FRIEND, reply.generation.text)  # what was shown stays in the chat


def test_an_interrupt_flag_stops_the_reply_at_the_next_piece(tiny_tokenizer: Any) -> None:
    long_reply = " ".join(f"w{i}" for i in range(200))
    s = session(make_fake_twin(FakeBackend(tiny_tokenizer, long_reply, delay=0.01)), persona=FRIEND)
    reply = ThreadedReply(lambda cancel: s.ask("talk to me", cancel))
    assert reply.next()
    reply.interrupt()  # what a signal handler calls: a plain flag, no lock
    list(reply)
    assert reply.cancel.is_set() and reply.interrupted
    assert reply.generation is not None and reply.generation.finish_reason == "cancelled"


class PausingBackend(FakeBackend):
    """Streams `before` tokens, then waits for `resume` before each of the rest: Ctrl-C can be pressed
    as often as a test likes while the reply is certainly still streaming."""

    def __init__(self, tokenizer: Any, reply: str, before: int) -> None:
        super().__init__(tokenizer, reply)
        self.before = before
        self.paused = threading.Event()
        self.resume = threading.Event()

    def generate(
        self, prompt_ids: list[int], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Generation:
        ids = list(self.tokenizer(self.reply, add_special_tokens=False)["input_ids"])

        def tokens() -> Iterator[int]:
            for i, token in enumerate(ids):
                if i == self.before:
                    self.paused.set()
                    self.resume.wait(timeout=30)
                yield token
            yield min(self.end_ids)

        return Generation(tokens(), self.tokenizer, self.end_ids, sampling, len(prompt_ids), cancel)


def test_ctrl_c_pressed_again_and_again_during_a_reply_stops_it(
    tiny_tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A KeyboardInterrupt raised in the reply queue's get can leave its lock taken: the chat hung in CI.
    While a reply streams, Ctrl-C (pressed any number of times) must only set a flag that stops it."""
    from twinlm.cli.chat import _answer

    backend = PausingBackend(tiny_tokenizer, " ".join(f"w{i}" for i in range(400)), before=5)
    s = session(make_fake_twin(backend), persona=FRIEND)
    handlers_while_pressed: list[Any] = []

    def press_ctrl_c() -> None:
        assert backend.paused.wait(timeout=30)
        for _ in range(20):
            handlers_while_pressed.append(signal.getsignal(signal.SIGINT))
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(0.002)
        backend.resume.set()

    outside = signal.getsignal(signal.SIGINT)
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        stopped = _answer(s, "talk to me")
    finally:
        backend.resume.set()
        presser.join()
    assert stopped
    assert signal.getsignal(signal.SIGINT) is outside  # put back after the reply
    assert all(h not in (signal.default_int_handler, signal.SIG_DFL) for h in handlers_while_pressed)
    shown = capsys.readouterr()
    assert "(stopped)" in shown.err and shown.out.startswith("w0 w1") and "w399" not in shown.out
    assert s.turns[-1][0] == FRIEND and "w399" not in s.turns[-1][1]  # what was shown stays in the chat


def test_an_error_in_the_worker_reaches_the_caller(fake_twin: Twin) -> None:
    def broken(_: Any) -> Any:
        raise TwinError("boom")

    with pytest.raises(TwinError, match="boom"):
        ThreadedReply(broken).next()


# --- the command line ---------------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    init_workspace(tmp_path / "ws", TwinConfig(me=[ME]))
    return tmp_path / "ws"


def test_once_with_a_fake_model(workspace: Path, fake_twin: Twin, monkeypatch: pytest.MonkeyPatch) -> None:
    from twinlm.cli import app

    monkeypatch.setattr("twinlm.serve.twin.open_twin", lambda *a, **k: fake_twin)
    args = ["chat", "-w", str(workspace), "--as", "Sam", "--once", "hey there", "--seed", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == FAKE_REPLY + "\n"
    assert "Using a fake model (tests)." in result.stderr
    backend = fake_twin.backend
    assert isinstance(backend, FakeBackend)
    assert backend.prompts == [fake_twin.prompt(FRIEND, [(ME, "hey there")], max_new_tokens=512)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "-1"], "--temperature: Input should be greater than or equal to 0"),
        (["--backend", "vllm"], "--backend vllm: expected auto, transformers, llama.cpp or mistral-api"),
        (["--as", "Bob"], "no persona 'Bob'"),
    ],
)
def test_bad_options_are_one_line(
    workspace: Path, fake_twin: Twin, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    from twinlm.cli import app

    monkeypatch.setattr("twinlm.serve.twin.open_twin", lambda *a, **k: fake_twin)
    result = CliRunner().invoke(app, ["chat", "-w", str(workspace), "--once", "hi", *args])
    assert result.exit_code == 1
    assert message in " ".join(result.stderr.split())


def test_once_with_the_tiny_model(served_workspace: Path) -> None:
    """A real process on the exported tiny model: greedy, so the reply is the backend's own."""
    from twinlm.serve.twin import open_twin

    args = ["--backend", "transformers", "--temperature", "0", "--max-tokens", "6", "--as", "Sam"]
    done = subprocess.run(
        [str(TWINLM), "chat", "-w", str(served_workspace), "--once", "hey", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "Using export/r/merged via transformers" in done.stderr
    twin = open_twin(served_workspace, backend="transformers")
    expected = twin.reply(
        FRIEND, [(ME, "hey")], sampling=Sampling(temperature=0, max_tokens=6, repetition_penalty=1.1)
    )
    assert done.stdout == "".join(expected) + "\n"


def test_the_interactive_loop_shows_names_and_replies_harmlessly(
    workspace: Path, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names and model text come from chats anyone wrote: escape sequences and rich markup in them are
    shown as plain characters (stdin here is not a terminal; the pty test covers the terminal)."""
    from twinlm.cli import app

    hostile = "Mal\x1b]0;pwned\x07lory [/]"
    twin = make_fake_twin(FakeBackend(tiny_tokenizer, "clear\x1b[2J the [bold]screen"))
    twin.personas[hostile] = None
    monkeypatch.setattr("twinlm.serve.twin.open_twin", lambda *a, **k: twin)
    lines = "first line\\\nsecond\n/as Sam\n/nope\nhi\n/exit\n"
    result = CliRunner().invoke(app, ["chat", "-w", str(workspace), "--as", hostile, "--me", ME], input=lines)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout + result.stderr
    assert "Mal\ufffd]0;pwned\ufffdlory [/]" in result.stderr  # the name, its control characters made visible
    assert result.stdout.count("clear\ufffd[2J the [bold]screen") == 2  # two replies, markup left as text
    assert "unknown command" in result.stderr and f"The model now speaks as {FRIEND}." in result.stderr
    backend = twin.backend
    assert isinstance(backend, FakeBackend)
    # The two-line message reached the model as one turn with its line break.
    assert "first line\nsecond" in tiny_tokenizer.decode(backend.prompts[0])
