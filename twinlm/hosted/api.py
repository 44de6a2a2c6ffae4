"""The few Mistral API calls hosted fine-tuning makes, through the official `mistralai` client.

Files are uploaded and chat completions streamed with the client's own methods. The fine-tuning job
endpoints (POST /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs/{id}, POST /v1/fine_tuning/jobs/{id}/cancel,
documented at docs.mistral.ai/api) are no longer wrapped by the client since its 3.x releases, so they go
through the client's own HTTP connection (same server_url, same key, same user agent): one place where
requests leave, one server. Every failure becomes one TwinError line.

The key comes only from the environment variable MISTRAL_API_KEY; `api_key()` is asked before anything
else so that a missing key stops the command before any request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from twinlm.errors import TwinError
from twinlm.hosted.settings import HostedConfig
from twinlm.privacy import check_endpoint_url, endpoint_host

API_KEY_ENV = "MISTRAL_API_KEY"
JOBS_PATH = "/v1/fine_tuning/jobs"
# A job in one of these states changes no more.
FINAL_STATES = ("SUCCESS", "FAILED", "FAILED_VALIDATION", "CANCELLED")
TIMEOUT_MS = 300_000  # an upload of a few hundred MB on a slow line
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def api_key() -> str:
    """The API key from MISTRAL_API_KEY, or one line saying how to give it (never read from twin.yaml)."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise TwinError(
            f"{API_KEY_ENV} is not set: export your Mistral API key (console.mistral.ai > API keys) in the "
            "environment; twinlm never reads it from twin.yaml. Nothing was sent."
        )
    return key


def _client_class() -> Any:
    try:
        from mistralai.client import Mistral  # mistralai 2.x and later
    except ImportError:
        try:
            from mistralai import Mistral  # type: ignore[attr-defined,no-redef]  # 1.x
        except ImportError:
            raise TwinError(
                "hosted training needs the official Mistral client: pip install 'twinlm[hosted]'"
            ) from None
    return Mistral


class MistralAPI:
    """One client for one base URL and key; `settings.base_url` is checked (https, or loopback)."""

    def __init__(self, settings: HostedConfig, key: str) -> None:
        check_endpoint_url(settings.base_url, settings.allow_insecure_http, setting="hosted")
        self.base_url = settings.base_url.rstrip("/")
        self.host = endpoint_host(self.base_url)
        self._key = key
        self.client = _client_class()(api_key=key, server_url=self.base_url, timeout_ms=TIMEOUT_MS)
        self._config = self.client.sdk_configuration

    # --- files ------------------------------------------------------------------------------------

    def upload(self, path: Path) -> str:
        """Upload one JSONL file for fine-tuning; its file id."""
        try:
            with path.open("rb") as f:
                uploaded = self.client.files.upload(
                    file={"file_name": path.name, "content": f}, purpose="fine-tune"
                )
        except Exception as e:  # the client's errors (HTTP status, connection) have no common base in 1.x
            raise self._failed(f"uploading {path.name}", e) from None
        return str(uploaded.id)

    # --- jobs -------------------------------------------------------------------------------------

    def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("POST", JOBS_PATH, body, doing="creating the fine-tuning job")

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"{JOBS_PATH}/{check_job_id(job_id)}", None, doing=f"reading job {job_id}")

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        path = f"{JOBS_PATH}/{check_job_id(job_id)}/cancel"
        return self._json("POST", path, None, doing=f"cancelling job {job_id}")

    def _json(self, method: str, path: str, body: Mapping[str, Any] | None, *, doing: str) -> dict[str, Any]:
        headers = {
            "Authorization": f"Bearer {self._key}",
            "Accept": "application/json",
            "User-Agent": self._config.user_agent,
        }
        try:
            response = self._config.client.request(
                method, self.base_url + path, json=body, headers=headers, timeout=TIMEOUT_MS / 1000
            )
        except Exception as e:
            raise self._failed(doing, e) from None
        if response.status_code >= 400:
            raise TwinError(
                f"Mistral API at {self.host}: {doing} failed: HTTP {response.status_code} "
                f"{_detail(response.text)}"
            )
        try:
            data = response.json()
        except ValueError:
            data = None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("id"), str)
            or not _PLAIN_ID.fullmatch(data["id"])
        ):
            raise TwinError(
                f"Mistral API at {self.host}: {doing}: the answer is not a job ({response.text[:120]!r})"
            )
        return data

    # --- chat -------------------------------------------------------------------------------------

    def chat_stream(
        self, model: str, messages: Sequence[Mapping[str, str]], options: Mapping[str, Any]
    ) -> Iterator[Any]:
        """The client's chat completion stream: events whose .data is a completion chunk."""
        try:
            stream = self.client.chat.stream(model=model, messages=list(messages), **options)
        except Exception as e:
            raise self._failed(f"chat with {model}", e) from None
        try:
            with stream:
                yield from stream
        except TwinError:
            raise
        except GeneratorExit:
            raise
        except Exception as e:
            raise self._failed(f"chat with {model}", e) from None

    def _failed(self, doing: str, error: Exception) -> TwinError:
        status = getattr(error, "status_code", None)
        body = getattr(error, "body", None)
        if status is not None:
            said = f"HTTP {status} {_detail(body if isinstance(body, str) else '')}".rstrip()
        else:
            said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return TwinError(f"Mistral API at {self.host}: {doing} failed: {said}")


def check_job_id(job_id: str) -> str:
    """A job id as the API gives them (a UUID): it goes into a URL path, so nothing else is accepted."""
    if not isinstance(job_id, str) or not _PLAIN_ID.fullmatch(job_id):
        raise TwinError(f"job id {job_id!r} is not one the Mistral API gives; check the run's hosted.json")
    return job_id


def _detail(text: str) -> str:
    """The error message of an API error body ({"message": ...} or {"detail": ...}), else its start."""
    import orjson

    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.strip()[:200]
    if isinstance(data, dict):
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])[:300]
    return text.strip()[:200]
