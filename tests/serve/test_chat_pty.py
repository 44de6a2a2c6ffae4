"""`twinlm chat` in a real pseudo-terminal (pexpect): a reply streams, `/as` switches persona, Ctrl-C stops
a reply and the chat goes on; Ctrl-C twice at the prompt, Ctrl-D or /exit leave. The model is a slow fake
(a long reply, one token at a time) so a reply can be interrupted half-way; a last test talks to the real
tiny export."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from serve_fakes import FRIEND, ME

from twinlm.config import TwinConfig
from twinlm.workspace import init_workspace

pexpect = pytest.importorskip("pexpect")
pytestmark = pytest.mark.slow  # each test starts twinlm in a terminal (seconds of imports)

HERE = Path(__file__).parent
TWINLM = Path(sys.executable).parent / "twinlm"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200", "TERM": "dumb"}
WORDS = 400  # the fake reply "w0 w1 ... w399", 0.02 s a token: long enough to interrupt

# `twinlm chat` itself, with open_twin answering a slow FakeBackend (a subprocess cannot take a fixture).
LAUNCH = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{here!r}, {tests!r}]
    from transformers import AutoTokenizer
    from serve_fakes import FakeBackend, make_fake_twin
    import twinlm.serve.twin

    tokenizer = AutoTokenizer.from_pretrained({tokenizer!r})
    reply = " ".join(f"w{{i}}" for i in range({words}))
    twinlm.serve.twin.open_twin = lambda *a, **k: make_fake_twin(FakeBackend(tokenizer, reply, delay=0.02))
    from twinlm.cli import app
    app(sys.argv[1:], prog_name="twinlm")
    """
)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    init_workspace(tmp_path / "ws", TwinConfig(me=[ME]))
    return tmp_path / "ws"


@pytest.fixture
def tokenizer_dir(tmp_path: Path, tiny_tokenizer: Any) -> Path:
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def spawn(args: list[str], cwd: Path, timeout: int = 60) -> Any:
    child = pexpect.spawn(
        args[0], args[1:], cwd=str(cwd), env=ENV, encoding="utf-8", timeout=timeout, dimensions=(40, 200)
    )
    child.logfile_read = sys.stdout  # shown by pytest when a test fails
    return child


def test_stream_switch_persona_stop_and_leave(workspace: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    script = LAUNCH.format(here=str(HERE), tests=str(HERE.parent), tokenizer=str(tokenizer_dir), words=WORDS)
    child = spawn(
        [sys.executable, "-c", script, "chat", "-w", str(workspace), "--as", ME, "--me", FRIEND], tmp_path
    )
    child.expect_exact("Using a fake model (tests).")
    child.expect_exact(f"{FRIEND}> ")

    # A reply streams: its first words arrive while the rest is still being made; Ctrl-C stops it.
    child.sendline("are you coming tonight?")
    child.expect_exact(f"{ME}: ")
    child.expect_exact("w5 ")
    child.sendintr()
    child.expect_exact("(stopped)")
    assert "w399" not in child.before
    child.expect_exact(f"{FRIEND}> ")  # the chat goes on

    # /as: the model now speaks as Sam, and you take Alex Rivera's place.
    child.sendline("/as sam")
    child.expect_exact(f"The model now speaks as {FRIEND}. You are now {ME}.")
    child.expect_exact(f"{ME}> ")
    child.sendline("and you?\\")  # a message over two lines
    child.expect_exact("... ")
    child.sendline("tell me")
    child.expect_exact(f"{FRIEND}: ")
    child.expect_exact("w3 ")
    child.sendintr()
    child.expect_exact("(stopped)")
    child.expect_exact(f"{ME}> ")

    saved = tmp_path / "chat.json"
    child.sendline(f"/save {saved}")
    child.expect_exact("Saved 4 turns")
    child.expect_exact(f"{ME}> ")
    turns = orjson.loads(saved.read_bytes())["turns"]
    assert [t["speaker"] for t in turns] == [FRIEND, ME, ME, FRIEND]
    assert turns[2]["text"] == "and you?\ntell me"
    assert turns[1]["text"].startswith("w0 w1 w2 w3 w4 w5") and "w399" not in turns[1]["text"]

    # Ctrl-C at the prompt warns; twice leaves.
    child.sendintr()
    child.expect_exact("Ctrl-C again or /exit to leave")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_end_of_input_leaves(workspace: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    script = LAUNCH.format(here=str(HERE), tests=str(HERE.parent), tokenizer=str(tokenizer_dir), words=3)
    child = spawn([sys.executable, "-c", script, "chat", "-w", str(workspace), "--as", FRIEND], tmp_path)
    child.expect_exact(f"{ME}> ")
    child.sendline("hi")
    child.expect_exact("w0 w1 w2")
    child.expect_exact(f"{ME}> ")
    child.sendeof()  # Ctrl-D
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_real_reply_streams_from_the_tiny_export(served_workspace: Path, tmp_path: Path) -> None:
    args = ["chat", "-w", str(served_workspace), "--backend", "transformers", "--max-tokens", "8"]
    child = spawn([str(TWINLM), *args, "--seed", "1"], tmp_path, timeout=180)
    child.expect_exact("Using export/r/merged via transformers")
    child.expect(r"you are (.+)\. /help")  # the twin is you; you are its most frequent partner
    user = child.match.group(1)
    child.expect_exact(f"{user}> ")
    child.sendline("hey, dinner tonight?")
    child.expect_exact(f"{ME}: ")
    child.expect_exact(f"{user}> ")
    assert "Traceback" not in child.before and child.before.strip()  # some reply was written
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
