"""Issue 16, points 2 and 3: nothing leaves the machine unasked, and what twinlm writes is its owner's only.

Every verb runs as a user runs it, in a child process, with a local model (the tiny preset), under a guard
that records and refuses any DNS lookup or connection beyond loopback, with HF_HUB_OFFLINE *not* set (so
the test proves twinlm itself stays offline), a fresh Hugging Face cache, and umask 022 (so the modes
checked are twinlm's doing, not the environment's). The servers (serve, review) answer one request each
over loopback and stop on Ctrl-C; discord-bot, which can only talk to Discord, is shown to try Discord's
host only and to stop with one line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from twinlm.config import TwinConfig
from twinlm.train.report import Reporter

from testdata import EXAMPLES

TWINLM = Path(sys.executable).parent / "twinlm"

# Loaded by every child Python through PYTHONPATH: refuses (and logs, with the stack) the first lookup or
# connection that leaves the machine, so the log names what reached out.
GUARD = textwrap.dedent("""
    import os, socket, traceback

    _LOG = os.environ["TWINLM_TEST_NET_LOG"]

    def _local(host):
        host = host.decode() if isinstance(host, bytes) else str(host)
        return host in ("localhost", "::1", "") or host.startswith("127.")

    def _refuse(what, target):
        with open(_LOG, "a", encoding="utf-8") as log:
            log.write(f"=== {what} {target!r} (pid {os.getpid()})\\n")
            log.write("".join(traceback.format_stack()[:-2]))
        raise OSError(f"network guard: {what} {target!r}")

    _getaddrinfo = socket.getaddrinfo
    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _local(host):
            _refuse("DNS lookup of", host)
        return _getaddrinfo(host, *args, **kwargs)
    socket.getaddrinfo = getaddrinfo

    _gethostbyname = socket.gethostbyname
    def gethostbyname(host):
        if not _local(host):
            _refuse("DNS lookup of", host)
        return _gethostbyname(host)
    socket.gethostbyname = gethostbyname

    for _name in ("connect", "connect_ex"):
        def _guarded(self, address, _real=getattr(socket.socket, _name)):
            if isinstance(address, tuple) and not _local(address[0]):
                _refuse("connection to", address)
            return _real(self, address)
        setattr(socket.socket, _name, _guarded)
""")


def guarded_env(tmp: Path) -> dict[str, str]:
    guard = tmp / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(GUARD, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}  # conftest sets them
    env |= {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")])),
        "TWINLM_TEST_NET_LOG": str(tmp / "network.log"),
        "HF_HOME": str(tmp / "hf-home"),  # nothing cached: a kernel or model on the hub is not on disk
        "OMP_NUM_THREADS": "1",
    }
    return env


def twinlm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(TWINLM), *args], capture_output=True, text=True, timeout=600, env=env, umask=0o022
    )
    assert proc.returncode == 0, f"twinlm {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving(env: dict[str, str], out: Path, *args: str) -> subprocess.Popen[bytes]:
    """`twinlm ARGS` started as a server (stdout and stderr to the file `out`)."""
    with out.open("wb") as sink:
        return subprocess.Popen(
            [str(TWINLM), *args], stdout=sink, stderr=subprocess.STDOUT, env=env, umask=0o022
        )


def ask(
    server: subprocess.Popen[bytes], out: Path, address: str | re.Pattern[str], path: str, body: Any = None
) -> Any:
    """One request over loopback to the server at `address` (a pattern finds it in the server's output, for
    --port 0), waiting for it to listen: its JSON answer."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    for _ in range(1200):
        said = out.read_text(encoding="utf-8", errors="replace")
        assert server.poll() is None, f"the server stopped: {said[-3000:]}"
        found = address.search(said) if isinstance(address, re.Pattern) else None
        url = address if isinstance(address, str) else found.group(1) if found else None
        if url is not None:
            data = None if body is None else orjson.dumps(body)
            request = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
            try:
                with direct.open(request, timeout=120) as response:
                    return orjson.loads(response.read())
            except urllib.error.URLError as e:
                if not isinstance(e.reason, ConnectionRefusedError):
                    raise
        time.sleep(0.1)
    raise AssertionError(f"no answer from the server: {out.read_text(encoding='utf-8')[-3000:]}")


def stop(server: subprocess.Popen[bytes], out: Path) -> None:
    """Ctrl-C, as a user stops it: the server ends by itself."""
    server.send_signal(signal.SIGINT)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        said = out.read_text(encoding="utf-8")[-2000:]
        raise AssertionError(f"the server did not stop on Ctrl-C: {said}") from None


def set_in_config(ws: Path, *replacements: tuple[str, str]) -> None:
    """Edit twin.yaml's text as a user does (each setting's line is unique in the commented file)."""
    text = (ws / "twin.yaml").read_text(encoding="utf-8")
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (ws / "twin.yaml").write_text(text, encoding="utf-8")


@dataclass
class Pipeline:
    ws: Path
    log: Path  # what the guard refused (nothing, it must stay empty)
    verbs: list[str]  # the verbs run
    answers: dict[str, Any]  # what the servers answered
    discord: subprocess.CompletedProcess[str]  # discord-bot, which can only reach Discord
    discord_log: str  # what the guard refused for it


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """Every verb on one workspace under the guard."""
    tmp = tmp_path_factory.mktemp("privacy")
    env = guarded_env(tmp)
    ws = tmp / "twin"
    verbs: list[str] = []
    answers: dict[str, Any] = {}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        verbs.append(args[0])
        return twinlm(env, *args)

    run("init", str(ws), "--me", "Alex Rivera", "--me", "alex")
    set_in_config(ws, ("timezone: null", "timezone: UTC"))
    # An export that arrives zipped is unpacked inside the workspace while it is read.
    shutil.make_archive(str(tmp / "whatsapp"), "zip", EXAMPLES / "whatsapp")
    run("ingest", "-w", str(ws), str(EXAMPLES), str(tmp / "whatsapp.zip"))
    run("people", "-w", str(ws))
    run("stats", "-w", str(ws))
    run("config", "-w", str(ws))
    run("superseded", "-w", str(ws))
    # Curation: each change is logged in the corpus; the export is a file the user asked for (here inside
    # the workspace, so the mode check covers it).
    listed = orjson.loads(run("conversations", "-w", str(ws), "--json").stdout)["conversations"]
    chatgpt = [c["key"] for c in listed if c["source"] == "chatgpt"]
    run("join-chats", "-w", str(ws), chatgpt[0], chatgpt[1])
    chat = str(next(c["id"] for c in listed if c["source"] == "telegram"))
    shown = orjson.loads(run("show", "-w", str(ws), chat, "--json").stdout)
    message = str(shown["sessions"][0]["messages"][0]["id"])
    run("exclude", "-w", str(ws), chat, "--yes")
    run("include", "-w", str(ws), chat)
    run("edit", "-w", str(ws), message, "an edited message")
    run("undo", "-w", str(ws))
    run("note", "-w", str(ws), chat, "my sister's chat: check the addresses")
    run("changes", "list", "-w", str(ws))
    run("changes", "export", "-w", str(ws), str(ws / "changes.json"))
    run("build", "-w", str(ws), "--model", "tiny")
    run("validate", "-w", str(ws))
    run("export-data", "-w", str(ws), "--format", "sharegpt")
    # peft (imported for LoRA) imports bitsandbytes, whose CPU backend looks for a kernel on the hub.
    run("train", "-w", str(ws), "--method", "lora", "--max-steps", "2", "--name", "r")
    run("launch-config", "-w", str(ws), "--gpus", "2")
    run("export", "-w", str(ws), "--type", "q8_0")  # merge, GGUF, Modelfile, llama.cpp parity
    # A small evaluation: two held-out replies of four tokens, one friend probed, base and final weights.
    set_in_config(
        ws,
        ("max_friends: 3", "max_friends: 1"),
        ("max_replies: 40", "max_replies: 2"),
        ("max_new_tokens: 96", "max_new_tokens: 4"),
        ("checkpoints: all", "checkpoints: final"),
    )
    run("eval", "-w", str(ws), "r", "--pick", "eval_loss")
    # A GGUF is there: auto chats through llama.cpp (where it is installed), then the merged weights.
    run("chat", "-w", str(ws), "--once", "hey", "--max-tokens", "4")
    run("chat", "-w", str(ws), "--once", "hey", "--max-tokens", "4", "--backend", "transformers")

    # The servers: one request each over loopback, then Ctrl-C.
    verbs.append("serve")
    out = tmp / "serve.out"
    server = serving(env, out, "serve", "-w", str(ws), "--port", "0")
    try:
        api = re.compile(r"OpenAI API: (http://127\.0\.0\.1:\d+)/v1 ")  # the address --port 0 got
        models = ask(server, out, api, "/v1/models")
        model = models["data"][0]["id"]
        question = {"model": model, "messages": [{"role": "user", "content": "hey"}], "max_tokens": 4}
        answers["serve"] = ask(server, out, api, "/v1/chat/completions", question)
    finally:
        stop(server, out)

    verbs.append("review")
    out, port = tmp / "review.out", free_port()
    server = serving(env, out, "review", "-w", str(ws), "--port", str(port), "--no-browser")
    try:
        answers["review"] = ask(server, out, f"http://127.0.0.1:{port}", "/review/api/conversations")
    finally:
        stop(server, out)

    run("status", "-w", str(ws))
    # The whole way in one command: nothing ingested (ingest.paths is empty), the rest again in a new run.
    set_in_config(
        ws,
        ("  model: ''", "  model: tiny"),
        ("max_steps: 0", "max_steps: 2"),
        ("\n  type: q4_k_m", "\n  type: q8_0"),
    )
    run("run", "-w", str(ws))

    # discord-bot can only talk to Discord: offline it says so in one line, and Discord's host is the only
    # place it tried (its own log: the one above must stay empty).
    verbs.append("discord-bot")
    bot_log = tmp / "discord-network.log"
    discord = subprocess.run(
        [str(TWINLM), "discord-bot", "-w", str(ws), "--channel", "1234"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env | {"TWINLM_TEST_NET_LOG": str(bot_log), "DISCORD_BOT_TOKEN": "not-a-real-token"},
        umask=0o022,
    )
    return Pipeline(
        ws,
        tmp / "network.log",
        verbs,
        answers,
        discord,
        bot_log.read_text(encoding="utf-8") if bot_log.exists() else "",
    )


def test_the_guard_catches_a_lookup(tmp_path: Path) -> None:
    """The guard itself works: without it the test below could not fail."""
    env = guarded_env(tmp_path)
    code = "import socket\ntry: socket.create_connection(('example.org', 443))\nexcept OSError: pass"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert "DNS lookup of 'example.org'" in (tmp_path / "network.log").read_text(encoding="utf-8")


# Verbs the pipeline does not run by name, and why that is enough.
NOT_RUN = {
    "merge": "a step of export, which runs it",
    "gguf": "a step of export, which runs it",
    "ollama": "a step of export, which runs it",
}


def test_the_pipeline_runs_every_verb(pipeline: Pipeline) -> None:
    """A verb added later fails here until it runs under the guard (or says why it need not)."""
    import typer.main

    from twinlm.cli import app

    verbs = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert verbs - set(pipeline.verbs) - set(NOT_RUN) == set()
    assert set(NOT_RUN) <= verbs


def test_no_verb_looks_up_or_connects_to_anything(pipeline: Pipeline) -> None:
    reached = pipeline.log.read_text(encoding="utf-8") if pipeline.log.exists() else ""
    assert reached == "", f"a verb reached the network:\n{reached[:6000]}"


def test_the_servers_answered_over_loopback(pipeline: Pipeline) -> None:
    """serve and review did their work (a reply, the conversations) while the guard watched."""
    reply = pipeline.answers["serve"]
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["usage"]["completion_tokens"] >= 1
    assert pipeline.answers["review"]["total"] >= 5


def test_the_discord_bot_tries_discord_only_and_says_so_in_one_line(pipeline: Pipeline) -> None:
    bot = pipeline.discord
    assert bot.returncode == 1, bot.stderr[-3000:]
    assert "Traceback" not in bot.stderr
    errors = [line for line in bot.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot reach Discord" in errors[0], bot.stderr[-3000:]
    tried = re.findall(r"^=== (.*) \(pid \d+\)$", pipeline.discord_log, re.MULTILINE)
    assert tried and all(re.fullmatch(r"DNS lookup of '(\w+\.)*discord\.(com|gg)'", t) for t in tried), tried


def test_every_file_and_folder_of_the_workspace_is_its_owners_only(pipeline: Pipeline) -> None:
    ws = pipeline.ws
    assert (ws / "corpus.db").is_file() and (ws / "runs" / "r" / "final").is_dir()
    assert any((ws / "export").iterdir()) and any((ws / "data").iterdir()) and (ws / "models").is_dir()
    # What the later verbs write: eval's report and pick, the exported change log.
    assert (ws / "reports" / "eval-r.json").is_file() and (ws / "runs" / "r" / "picked.json").is_file()
    assert (ws / "changes.json").is_file() and (ws / ".twinlm" / "run-state.json").is_file()
    shared = []
    for path in [ws, *ws.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        wanted = 0o700 if stat.S_ISDIR(mode) else 0o600
        if stat.S_IMODE(mode) & 0o077 or stat.S_IMODE(mode) & wanted != wanted:
            shared.append(f"{oct(stat.S_IMODE(mode))} {path.relative_to(ws.parent)}")
    assert not shared, "readable by others:\n" + "\n".join(shared[:40])


def test_init_makes_an_existing_folder_private(tmp_path: Path) -> None:
    """A folder the user made beforehand (mkdir: 0755 under the usual umask) becomes private at init."""
    ws = tmp_path / "twin"
    ws.mkdir(mode=0o755)
    ws.chmod(0o755)
    twinlm(guarded_env(tmp_path), "init", str(ws))
    assert stat.S_IMODE(ws.stat().st_mode) == 0o700


class FakeWandb:
    """Stands in for the wandb module: records what `wandb.init` would upload."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.logged: list[dict[str, Any]] = []

    def init(self, **kwargs: Any) -> FakeWandb:
        self.config = kwargs["config"]
        return self

    def log(self, values: dict[str, Any], step: int) -> None:
        self.logged.append(values)

    def finish(self) -> None:
        pass


def test_trackers_get_settings_but_no_alias_prompt_or_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = TwinConfig.model_validate(
        {
            "name": "alex-private-twin",
            "me": ["Alex Rivera", "+44 7700 900123", "alex@example.org"],
            "people": {"Mom": ["Maria Rivera", "mom@example.org"]},
            "build": {
                "model": str(tmp_path / "home" / "alexrivera" / "models" / "mine"),
                "system_prompt": "You are Alex, who lives at 12 Secret Lane",
                "targets": ["Alex Rivera"],
            },
            "train": {"method": "qlora", "learning_rate": 3e-4, "report_to": "wandb"},
        }
    )
    reporter = Reporter("wandb", tmp_path / "run", config.model_dump(mode="json"))
    reporter.log(1, "train", {"loss": 2.5})
    reporter.close()
    sent = orjson.dumps(fake.config).decode()
    for secret in ("Alex", "Rivera", "+44", "example.org", "Maria", "Secret", "alexrivera", "alex-private"):
        assert secret not in sent, f"{secret!r} reached the tracker: {sent}"
    assert fake.config["train"]["method"] == "qlora" and fake.config["train"]["learning_rate"] == 3e-4
    assert fake.config["build"]["model"] == "a local model"
    assert fake.logged == [{"train/loss": 2.5}]


def test_a_preset_model_name_is_shown_to_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = TwinConfig.model_validate({"build": {"model": "qwen2.5-0.5b-instruct"}})
    Reporter("wandb", tmp_path / "run", config.model_dump(mode="json")).close()
    assert fake.config["build"]["model"] == "qwen2.5-0.5b-instruct"


RESOLVE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from twinlm.errors import TwinError\n"
    "from twinlm.models import resolve_model\n"
    "from twinlm.privacy import protect_process\n"
    "protect_process()\n"
    "try:\n"
    "    print(resolve_model(sys.argv[1], Path('.')))\n"
    "except TwinError as e:\n"
    "    print(f'error: {e}', file=sys.stderr)\n"
)


def resolve_in_child(tmp: Path, model: str, **env: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """resolve_model(MODEL) as the CLI runs it, under the guard: (the process, what the guard saw)."""
    proc = subprocess.run(
        [sys.executable, "-c", RESOLVE, model],
        capture_output=True,
        text=True,
        timeout=120,
        env=guarded_env(tmp) | env,
        cwd=tmp,
    )
    log = tmp / "network.log"
    return proc, log.read_text(encoding="utf-8") if log.exists() else ""


def cache_model(tmp: Path, repo_id: str) -> Path:
    """A model in the Hugging Face cache layout under HF_HOME, as a past download left it."""
    repo = tmp / "hf-home" / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    (snapshot / "config.json").write_text("{}", encoding="utf-8")
    (snapshot / "model.safetensors").write_bytes(b"")
    return snapshot


def test_a_hub_model_on_disk_is_loaded_without_asking_the_hub(tmp_path: Path) -> None:
    snapshot = cache_model(tmp_path, "someone/model")
    proc, reached = resolve_in_child(tmp_path, "someone/model")
    assert proc.stdout.strip() == str(snapshot), proc.stderr[-2000:]
    assert reached == ""


def test_a_missing_hub_model_out_of_reach_is_one_line_before_any_download(tmp_path: Path) -> None:
    proc, reached = resolve_in_child(tmp_path, "someone/not-here")
    said = proc.stderr.strip().splitlines()
    # One quick question to the hub comes first (issue 12): unanswered, it says so with the fix at once.
    assert len(said) == 1, proc.stderr[-2000:]
    assert said[0].startswith("error: someone/not-here: cannot reach huggingface.co")
    assert "offline or behind a proxy?" in said[0]
    assert "DNS lookup of 'huggingface.co'" in reached  # the one lookup asked for: blocked by the guard


def test_hf_hub_offline_set_by_the_user_forbids_the_download(tmp_path: Path) -> None:
    proc, reached = resolve_in_child(tmp_path, "someone/not-here", HF_HUB_OFFLINE="1")
    assert "HF_HUB_OFFLINE=1 forbids the download" in proc.stderr and "Downloading" not in proc.stderr
    assert reached == ""


def test_telemetry_is_off_whatever_the_environment_says_but_hub_access_is_the_users_choice() -> None:
    code = (
        "import os\nfrom twinlm.privacy import protect_process\nprotect_process()\n"
        "names = 'HF_HUB_DISABLE_TELEMETRY', 'DO_NOT_TRACK', 'HF_HUB_OFFLINE', 'WANDB_CONSOLE', "
        "'OTEL_SDK_DISABLED', 'MISTRAL_SDK_TELEMETRY'\n"
        "print(*(os.environ[name] for name in names), oct(os.umask(0)))"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    said = subprocess.run(
        [sys.executable, "-c", code],
        env=env
        | {
            "HF_HUB_DISABLE_TELEMETRY": "0",
            "DO_NOT_TRACK": "0",
            "WANDB_CONSOLE": "wrap",
            "OTEL_SDK_DISABLED": "false",
            "MISTRAL_SDK_TELEMETRY": "dedicated",
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert said == ["1", "1", "1", "wrap", "true", "false", "0o77"]
    said = subprocess.run(
        [sys.executable, "-c", code],
        env=env | {"HF_HUB_OFFLINE": "0"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert said[2] == "0"  # the user's explicit choice to reach the hub
