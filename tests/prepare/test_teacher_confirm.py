"""Nothing goes to a teacher endpoint unasked (issue 16, point 5): before the first request the build says
where (the host), how many chunks and characters, and asks, or takes --yes; with no terminal and no --yes
it sends nothing. Plain http to another machine is refused unless teacher.allow_insecure_http."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from twinlm import privacy
from twinlm.cli import app
from twinlm.config import BuildConfig, TwinConfig
from twinlm.corpus.db import Corpus
from twinlm.errors import TwinError
from twinlm.ingest import ingest
from twinlm.model import ParseOptions
from twinlm.prepare import teacher
from twinlm.prepare.teacher import TeacherConfig, generate_qa
from twinlm.privacy import check_endpoint_url, confirm_remote_send
from twinlm.workspace import init_workspace

from test_teacher import PROMPT, FakeTeacher
from testdata import DOCUMENTS


@pytest.fixture
def server() -> Iterator[FakeTeacher]:
    fake = FakeTeacher()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWINLM_TEACHER_API_KEY", raising=False)
    monkeypatch.setattr(teacher, "_BACKOFF_S", 0.001)


def _chunks(n: int) -> list[tuple[str, str]]:
    return [(f"documents:d1:{i}", f"Chunk number {i} talks about topic {i * 7}.") for i in range(n)]


def _config(url: str, **overrides: Any) -> TeacherConfig:
    values = {"enabled": True, "base_url": url, "model": "t", "prompt": PROMPT, "concurrency": 1}
    return TeacherConfig(**(values | overrides))


# ------------------------------------------------------------------------------------------ the URL


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "http://127.0.0.2/v1",
        "http://localhost:11434/v1",
        "http://[::1]:8000/v1",
        "https://api.example.com/v1",
    ],
)
def test_https_and_http_to_this_machine_are_allowed(url: str) -> None:
    check_endpoint_url(url, False, setting="build.teacher")


@pytest.mark.parametrize(
    "url", ["http://api.example.com/v1", "http://192.168.1.20:8000/v1", "http://0.0.0.0:8000/v1"]
)
def test_plain_http_to_another_machine_is_refused_unless_allowed(url: str) -> None:
    with pytest.raises(TwinError, match=r"build\.teacher\.allow_insecure_http: true") as refused:
        check_endpoint_url(url, False, setting="build.teacher")
    assert "\n" not in str(refused.value)
    check_endpoint_url(url, True, setting="build.teacher")


def test_generate_qa_refuses_http_to_a_remote_host_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    posted: list[str] = []
    monkeypatch.setattr(httpx.Client, "post", lambda self, url, **kw: posted.append(url))
    asked: list[tuple[str, int, int]] = []
    with pytest.raises(TwinError, match=r"plain http to another machine \(teacher\.example\.com\)"):
        generate_qa(
            _chunks(2),
            _config("http://teacher.example.com/v1"),
            tmp_path / "cache.jsonl",
            confirm=lambda *a: asked.append(a),
        )
    assert posted == [] and asked == []
    assert not (tmp_path / "cache.jsonl").exists()


def test_http_to_127_0_0_1_is_sent_after_the_confirmation(server: FakeTeacher, tmp_path: Path) -> None:
    asked: list[tuple[str, int, int]] = []
    chunks = _chunks(3)

    def confirm(url: str, n: int, characters: int) -> None:
        assert server.requests == []  # asked before the first request
        asked.append((url, n, characters))

    result = generate_qa(chunks, _config(server.url), tmp_path / "cache.jsonl", confirm=confirm)
    assert asked == [(server.url, 3, sum(len(text) for _, text in chunks))]
    assert result.requested == 3 and len(server.requests) == 3
    # Everything cached: nothing to send, nothing asked.
    generate_qa(chunks, _config(server.url), tmp_path / "cache.jsonl", confirm=confirm)
    assert len(asked) == 1


def test_a_refused_confirmation_sends_nothing(server: FakeTeacher, tmp_path: Path) -> None:
    def refuse(url: str, n: int, characters: int) -> None:
        raise TwinError("not confirmed")

    with pytest.raises(TwinError, match="not confirmed"):
        generate_qa(_chunks(2), _config(server.url), tmp_path / "cache.jsonl", confirm=refuse)
    assert server.requests == []


# ------------------------------------------------------------------------------------------ the question


def test_confirm_says_where_and_how_much_and_asks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(privacy, "_interactive", lambda: True)
    monkeypatch.setattr("sys.stdin", _Lines("n\n"))
    with pytest.raises(TwinError, match=r"nothing was sent to the teacher at api\.example\.com"):
        confirm_remote_send("https://key:secret@api.example.com/v1", 12, 34567, yes=False)
    said = capsys.readouterr().err
    assert "api.example.com" in said and "12 document chunks" in said and "34,567 characters" in said
    assert "secret" not in said  # credentials in a URL are never printed
    monkeypatch.setattr("sys.stdin", _Lines("y\n"))
    confirm_remote_send("https://api.example.com/v1", 1, 10, yes=False)  # confirmed: returns


def test_no_terminal_and_no_yes_refuses_with_one_line_naming_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privacy, "_interactive", lambda: False)
    with pytest.raises(TwinError, match="--yes") as refused:
        confirm_remote_send("https://api.example.com/v1", 2, 20, yes=False)
    assert "\n" not in str(refused.value)
    confirm_remote_send("https://api.example.com/v1", 2, 20, yes=True)


class _Lines:
    """A stdin that answers prompts from a string."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines(keepends=True)

    def readline(self, *args: object) -> str:
        return self.lines.pop(0) if self.lines else ""

    def isatty(self) -> bool:
        return True


# ------------------------------------------------------------------------------------------ the CLI


def _workspace(tmp_path: Path, model: Path, teacher_settings: dict[str, Any]) -> Path:
    ws = tmp_path / "twin"
    config = TwinConfig(
        name="alex", me=["Alex"], build=BuildConfig(model=str(model), teacher=teacher_settings)
    )
    init_workspace(ws, config)
    with Corpus(ws / "corpus.db") as corpus:
        assert not ingest([], corpus, ParseOptions(timezone="UTC"), documents=[DOCUMENTS]).failed
    return ws


def test_cli_build_asks_before_sending_and_yes_sends(
    server: FakeTeacher, tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    settings = {"enabled": True, "base_url": server.url, "model": "t", "prompt": PROMPT}
    ws = _workspace(tmp_path, tokenizer_dir("chatml"), settings)
    runner = CliRunner()
    refused = runner.invoke(app, ["build", "-w", str(ws)])  # CliRunner's stdin is no terminal
    assert refused.exit_code == 1
    assert "run again with --yes" in refused.stderr and server.requests == []
    assert (
        "127.0.0.1" in refused.stderr
        and "document chunk" in refused.stderr
        and "characters" in refused.stderr
    )
    sent = runner.invoke(app, ["build", "-w", str(ws), "--yes"])
    assert sent.exit_code == 0, sent.stderr
    assert server.requests and "127.0.0.1" in sent.stderr


def test_cli_build_refuses_plain_http_to_another_machine(
    tokenizer_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    settings = {"enabled": True, "base_url": "http://teacher.example.com/v1", "model": "t", "prompt": PROMPT}
    ws = _workspace(tmp_path, tokenizer_dir("chatml"), settings)
    refused = CliRunner().invoke(app, ["build", "-w", str(ws), "--yes"])
    assert refused.exit_code == 1
    assert "allow_insecure_http" in refused.stderr and "Traceback" not in refused.stderr
