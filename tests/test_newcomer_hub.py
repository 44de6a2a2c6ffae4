"""A hub model that cannot be fetched fails at once with the fix (offline? gated? misnamed? HF_TOKEN?),
after one question with a short timeout, never the download's minute of retries (issue 12, item 6). No
network: the hub client is replaced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from twinlm.config import TwinConfig
from twinlm.workspace import init_workspace

REQUEST = httpx.Request("GET", "https://huggingface.co/api/models/acme/llm")


def gated() -> Exception:
    from huggingface_hub.errors import GatedRepoError

    return GatedRepoError(
        "Access to model acme/llm is restricted", response=httpx.Response(403, request=REQUEST)
    )


def missing() -> Exception:
    from huggingface_hub.errors import RepositoryNotFoundError

    return RepositoryNotFoundError("Repository Not Found", response=httpx.Response(404, request=REQUEST))


def refused() -> Exception:
    from huggingface_hub.errors import HfHubHTTPError

    return HfHubHTTPError("Unauthorized", response=httpx.Response(401, request=REQUEST))


def offline() -> Exception:
    return httpx.ConnectError("[Errno -3] Temporary failure in name resolution", request=REQUEST)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """The hub client replaced: model_info raises what the test sets; a real download fails the test."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    seen: dict[str, Any] = {"raise": None, "timeouts": []}

    def model_info(self: object, repo_id: str, **kwargs: Any) -> None:
        seen["timeouts"].append(kwargs.get("timeout"))
        raise seen["raise"]()

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not cached")
        raise AssertionError("downloaded after a failed check")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TWINLM_HUB_OFFLINE_DEFAULT", "1")  # offline by twinlm's default: a fetch may go out
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return seen


def build(ws: Path) -> list[str]:
    from twinlm.cli import app

    result = CliRunner().invoke(app, ["build", "-w", str(ws), "--model", "acme/llm"])
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    return [" ".join(line.split()) for line in result.stderr.splitlines() if line.startswith("error")]


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (gated, "a gated model: accept its licence at https://huggingface.co/acme/llm"),
        (missing, "no such model on huggingface.co; check the name"),
        (refused, "huggingface.co refused access (401); then set HF_TOKEN"),
        (
            offline,
            "cannot reach huggingface.co (ConnectError: [Errno -3] Temporary failure in name resolution);",
        ),
    ],
)
def test_an_unreachable_hub_model_fails_at_once_with_the_fix(
    hub: dict[str, Any], tmp_path: Path, error: Any, says: str
) -> None:
    ws = tmp_path / "ws"
    init_workspace(ws, TwinConfig(me=["Alex"]))
    hub["raise"] = error
    (line,) = build(ws)
    assert says in line, line
    assert hub["timeouts"] and all(t is not None and t <= 10 for t in hub["timeouts"])  # one short question


def test_a_gated_model_with_a_token_asks_whether_it_is_the_right_account(
    hub: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    init_workspace(ws, TwinConfig(me=["Alex"]))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    hub["raise"] = gated
    (line,) = build(ws)
    assert "HF_TOKEN is set: is it a token of the account that accepted?" in line
    assert "hf_secret_value" not in line
