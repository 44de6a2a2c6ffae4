"""What may leave the machine, and who may read what twinlm writes.

twinlm works on people's most private text, so the command line sets, for its process and the processes
it starts:

* umask 077: every file and folder twinlm or a library writes (corpus.db and its -wal/-shm, data/, runs/,
  export/, the unpacked zips and caches in the workspace) is readable by its owner only, whatever the
  user's umask;
* telemetry off (Hugging Face's, and anything honouring DO_NOT_TRACK), always;
* the Hugging Face hub offline (HF_HUB_OFFLINE=1) unless the user set HF_HUB_OFFLINE themselves: no
  library looks anything up on import or when the model is on disk (bitsandbytes' CPU backend, imported
  by peft, otherwise asks the hub for a kernel at import). The one exception is `fetch_model`: a model
  that is not on disk is downloaded, once, after saying what is downloaded;
* for Weights & Biases (only when train.report_to asks for it): no code, git state or console output
  uploaded (the tracker gets metrics and an allow-list of settings: twinlm.train.report).

Text sent to a model endpoint (the build's teacher; an eval judge) goes through `check_endpoint_url` (no
plain http to another machine unless the user allows it) and `confirm_remote_send` (say where and how
much, then ask, or take `--yes`) before the first request.

Nothing here imports a heavy library: it runs before any of them is imported.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

from twinlm.errors import TwinError

PRIVATE_UMASK = 0o077
# Set whatever the environment says: twinlm never sends usage statistics.
TELEMETRY_OFF = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    # OpenTelemetry (FastAPI 0.16x can configure it itself; the Mistral client traces through it) and the
    # Mistral client's own telemetry switch ("false" is its documented off value).
    "OTEL_SDK_DISABLED": "true",
    "MISTRAL_SDK_TELEMETRY": "false",
}
# Defaults a user may override in their environment (an explicit choice to send more).
PRIVATE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "WANDB_DISABLE_CODE": "true",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_CONSOLE": "off",  # W&B otherwise uploads everything printed, names and paths included
}
# Files a model is loaded from: config, tokenizer, chat template, safetensors weights (never pickles), and
# a model's own code (run only with build.trust_remote_code).
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]
# Set when HF_HUB_OFFLINE is twinlm's default, not the user's choice: a missing model may then be fetched.
_OFFLINE_BY_TWINLM = "TWINLM_HUB_OFFLINE_DEFAULT"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def protect_process() -> None:
    """Private files and no unasked traffic for this process and its children (see the module's doc).

    Called by the command line before it imports any library that reads these variables at import."""
    os.umask(PRIVATE_UMASK)
    os.environ.update(TELEMETRY_OFF)
    if "HF_HUB_OFFLINE" not in os.environ:  # children (accelerate launch) inherit both
        os.environ[_OFFLINE_BY_TWINLM] = "1"
    for name, value in PRIVATE_DEFAULTS.items():
        os.environ.setdefault(name, value)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # imported already (tests, `python -c`): it read the variables at import
        constants.HF_HUB_DISABLE_TELEMETRY = True
        constants.HF_HUB_OFFLINE = _true(os.environ["HF_HUB_OFFLINE"])


def make_private(path: Path) -> None:
    """Owner-only access to a folder made before twinlm ran (mkdir under a umask of 022 gives 0755)."""
    path.chmod(0o700 if path.is_dir() else 0o600)


def fetch_model(repo_id: str) -> str:
    """The local folder of hub model `repo_id`: the cached copy, without asking the hub anything, or else a
    download of its config, tokenizer and safetensors weights (announced on stderr with its size).

    Only this function goes online, and only for a model that is not on disk."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = MODEL_FILES
    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
        if any(Path(folder).glob("*.safetensors")):  # a tokenizer alone is not the model
            return folder
    except LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE and os.environ.get(_OFFLINE_BY_TWINLM) != "1":
        raise TwinError(
            f"{repo_id}: not a folder here nor a downloaded model, and HF_HUB_OFFLINE=1 forbids the "
            "download; unset HF_HUB_OFFLINE once to fetch it, or give a local model folder"
        )
    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
    try:
        size = _reach(repo_id, patterns)
        print(
            f"Downloading {repo_id} from huggingface.co ({size}config, tokenizer and safetensors weights) "
            f"into {constants.HF_HUB_CACHE}; this happens once.",
            file=sys.stderr,
            flush=True,
        )
        return snapshot_download(repo_id, allow_patterns=patterns)
    except (HfHubHTTPError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TwinError(
            f"{repo_id}: not a folder here, and cannot download it from the hub ({first}); check the name, "
            "your connection, and for a gated model `hf auth login` after accepting its licence"
        ) from None
    finally:
        constants.HF_HUB_OFFLINE = offline


def is_hub_id(name: str) -> bool:
    """`owner/name` that is not a folder on this machine."""
    return bool(_HUB_ID.match(name)) and not Path(name).expanduser().exists()


HUB_TIMEOUT_S = 8.0  # the one question asked before a download; the download's own retries take ~a minute


def _reach(repo_id: str, patterns: list[str]) -> str:
    """'14.5 GB: ' for the files `patterns` select ('' when the hub does not say), after one quick question
    to the hub: a model that cannot be fetched (offline, gated, misnamed, a refused token) fails here in
    seconds with the fix, not after the download's retries with a library's message."""
    from fnmatch import fnmatch

    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    token = (
        "HF_TOKEN is set: is it a token of the account that accepted?"
        if os.environ.get("HF_TOKEN")
        else "then set HF_TOKEN to a token of that account (huggingface.co/settings/tokens) or run "
        "`hf auth login`"
    )
    try:
        info = HfApi().model_info(repo_id, files_metadata=True, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise TwinError(
            f"{repo_id}: a gated model: accept its licence at https://huggingface.co/{repo_id} while logged "
            f"in; {token}"
        ) from None
    except RepositoryNotFoundError:
        raise TwinError(
            f"{repo_id}: no such model on huggingface.co; check the name (owner/name, as on its page), or "
            "for a private model set HF_TOKEN"
        ) from None
    except HfHubHTTPError as e:  # (an OSError too: before the next clause)
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise TwinError(f"{repo_id}: huggingface.co refused access ({status}); {token}") from None
        return ""  # the hub answered oddly: the download says what is wrong
    except Exception as e:  # no answer: the client's transport errors (httpx or its fork), OSError
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise TwinError(
            f"{repo_id}: cannot reach huggingface.co ({type(e).__name__}{': ' + first if first else ''}); "
            "offline or behind a proxy? "
            "Connect (HTTPS_PROXY names a proxy), or download the model on another machine and set "
            "build.model to its folder"
        ) from None
    total = sum((s.size or 0) for s in info.siblings or [] if any(fnmatch(s.rfilename, p) for p in patterns))
    return f"{total / 1e9:.1f} GB: " if total else ""


def endpoint_host(url: str) -> str:
    """The host (and port, when given) a URL points at, as a user recognises it: 'api.openai.com'."""
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or url  # never echo credentials written into the URL


def shown_url(url: str) -> str:
    """`url` without any user:password written into it, to print."""
    parts = urlsplit(url)
    return parts._replace(netloc=endpoint_host(url)).geturl() if parts.netloc else url


def is_loopback(url: str) -> bool:
    """Whether `url` points at this machine (localhost, 127.0.0.0/8, ::1): nothing crosses a network."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always this machine
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: it may resolve anywhere
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def check_endpoint_url(url: str, allow_http: bool, *, setting: str) -> None:
    """Refuse plain http:// to a host other than this machine unless the user allowed it (`setting`, e.g.
    'build.teacher'): whatever is sent would cross the network readable by anyone on the way."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "https" or (scheme == "http" and (allow_http or is_loopback(url))):
        return
    if scheme != "http":
        raise TwinError(f"{setting}.base_url: {shown_url(url)!r} is not an http(s) URL")
    raise TwinError(
        f"{setting}.base_url: {shown_url(url)} is plain http to another machine ({endpoint_host(url)}), so "
        f"your text would cross the network unencrypted; use https or set {setting}.allow_insecure_http: true"
    )


def confirm_remote_send(
    url: str, chunks: int, characters: int, *, yes: bool, what: str = "document chunks", to: str = "teacher"
) -> None:
    """Say where text is about to go and how much of it, then ask (unless `yes`); TwinError if the user
    says no, or if nobody can be asked (no terminal) and `--yes` was not given. Nothing is sent before."""
    import typer  # the command line's own dependency; not needed before something is about to be sent

    plural = what if chunks != 1 else what.removesuffix("s")
    typer.echo(
        f"The {to} at {endpoint_host(url)} ({shown_url(url)}) is about to be sent {chunks:,} {plural} "
        f"({characters:,} characters, redacted).",
        err=True,
    )
    if yes:
        return
    if not _interactive():
        raise TwinError(
            f"not sending {chunks:,} {plural} to the {to} at {endpoint_host(url)} without a confirmation: "
            "run again with --yes to send them"
        )
    if not typer.confirm("Send them?", default=False, err=True):
        raise TwinError(f"nothing was sent to the {to} at {endpoint_host(url)}: not confirmed")


def _interactive() -> bool:
    """Whether a person can answer a question (stdin and stderr are terminals)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def _true(value: str) -> bool:
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
