"""Issue 16, points 2 and 3: nothing leaves the machine unasked, and what twinlm writes is its owner's only.

Every verb runs as a user runs it, in a child process, with a local model (the tiny preset), under a guard
that records and refuses any DNS lookup or connection beyond loopback, with HF_HUB_OFFLINE *not* set (so
the test proves twinlm itself stays offline), a fresh Hugging Face cache, and umask 022 (so the modes
checked are twinlm's doing, not the environment's).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
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


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Every verb on one workspace under the guard: (the workspace, the guard's log)."""
    tmp = tmp_path_factory.mktemp("privacy")
    env = guarded_env(tmp)
    ws = tmp / "twin"
    twinlm(env, "init", str(ws), "--me", "Alex Rivera", "--me", "alex")
    text = (ws / "twin.yaml").read_text(encoding="utf-8").replace("timezone: null", "timezone: UTC")
    (ws / "twin.yaml").write_text(text, encoding="utf-8")
    # An export that arrives zipped is unpacked inside the workspace while it is read.
    shutil.make_archive(str(tmp / "whatsapp"), "zip", EXAMPLES / "whatsapp")
    twinlm(env, "ingest", "-w", str(ws), str(EXAMPLES), str(tmp / "whatsapp.zip"))
    twinlm(env, "people", "-w", str(ws))
    twinlm(env, "stats", "-w", str(ws))
    twinlm(env, "config", "-w", str(ws))
    twinlm(env, "superseded", "-w", str(ws))
    twinlm(env, "build", "-w", str(ws), "--model", "tiny")
    twinlm(env, "validate", "-w", str(ws))
    twinlm(env, "export-data", "-w", str(ws), "--format", "sharegpt")
    # peft (imported for LoRA) imports bitsandbytes, whose CPU backend looks for a kernel on the hub.
    twinlm(env, "train", "-w", str(ws), "--method", "lora", "--max-steps", "2", "--name", "r")
    twinlm(env, "launch-config", "-w", str(ws), "--gpus", "2")
    twinlm(env, "export", "-w", str(ws), "--type", "q8_0")  # merge, GGUF, Modelfile, llama.cpp parity
    log = tmp / "network.log"
    return ws, log


def test_the_guard_catches_a_lookup(tmp_path: Path) -> None:
    """The guard itself works: without it the test below could not fail."""
    env = guarded_env(tmp_path)
    code = "import socket\ntry: socket.create_connection(('example.org', 443))\nexcept OSError: pass"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert "DNS lookup of 'example.org'" in (tmp_path / "network.log").read_text(encoding="utf-8")


def test_no_verb_looks_up_or_connects_to_anything(pipeline: tuple[Path, Path]) -> None:
    _, log = pipeline
    reached = log.read_text(encoding="utf-8") if log.exists() else ""
    assert reached == "", f"a verb reached the network:\n{reached[:6000]}"


def test_every_file_and_folder_of_the_workspace_is_its_owners_only(pipeline: tuple[Path, Path]) -> None:
    ws, _ = pipeline
    assert (ws / "corpus.db").is_file() and (ws / "runs" / "r" / "final").is_dir()
    assert any((ws / "export").iterdir()) and any((ws / "data").iterdir()) and (ws / "models").is_dir()
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
        "names = 'HF_HUB_DISABLE_TELEMETRY', 'DO_NOT_TRACK', 'HF_HUB_OFFLINE', 'WANDB_CONSOLE'\n"
        "print(*(os.environ[name] for name in names), oct(os.umask(0)))"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    said = subprocess.run(
        [sys.executable, "-c", code],
        env=env | {"HF_HUB_DISABLE_TELEMETRY": "0", "DO_NOT_TRACK": "0", "WANDB_CONSOLE": "wrap"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert said == ["1", "1", "1", "wrap", "0o77"]
    said = subprocess.run(
        [sys.executable, "-c", code],
        env=env | {"HF_HUB_OFFLINE": "0"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert said[2] == "0"  # the user's explicit choice to reach the hub
