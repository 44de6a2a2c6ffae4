"""A stand-in for the Mistral API on 127.0.0.1: the endpoints hosted fine-tuning uses, answering with the
response shapes documented at docs.mistral.ai/api (files: upload; fine-tuning: create, get, cancel job;
chat completions, plain and streamed as server-sent events), recording every request it receives.

A job's life is scripted: each GET of the job moves it to the next (status, checkpoints) of `script`;
the last one repeats. Cancelling sets CANCELLATION_REQUESTED, and the next GET CANCELLED.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CREATED = 1_764_979_200


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upload:
    file_id: str
    filename: str
    purpose: str
    content: bytes


def checkpoint(step: int, train: float, valid: float | None = None) -> dict[str, Any]:
    metrics: dict[str, Any] = {"train_loss": train, "valid_loss": valid, "valid_mean_token_accuracy": None}
    if valid is not None:
        metrics["valid_mean_token_accuracy"] = 0.5
    return {"metrics": metrics, "step_number": step, "created_at": CREATED + step}


SUCCESS_SCRIPT = [
    ("QUEUED", []),
    ("RUNNING", [checkpoint(1, 2.5, 2.6)]),
    ("RUNNING", [checkpoint(1, 2.5, 2.6), checkpoint(2, 2.0)]),
    ("SUCCESS", [checkpoint(1, 2.5, 2.6), checkpoint(2, 2.0), checkpoint(3, 1.5, 1.9)]),
]


@dataclass
class FakeMistral:
    script: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=lambda: list(SUCCESS_SCRIPT))
    failure_event: dict[str, Any] | None = None  # added to the events of a FAILED job
    reply: str = "sure, see you at eight"
    unavailable_after: int | None = None  # job GETs answered before the API starts answering 503
    requests: list[Received] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    job_bodies: list[dict[str, Any]] = field(default_factory=list)
    chat_bodies: list[dict[str, Any]] = field(default_factory=list)
    gets: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- dispatch -------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append(Received(method, h.path, {k.lower(): v for k, v in h.headers.items()}, body))
        if h.headers.get("Authorization") != "Bearer test-key":
            return self._send(h, 401, {"message": "Unauthorized"})
        parts = h.path.split("?")[0].strip("/").split("/")
        if method == "POST" and parts == ["v1", "files"]:
            return self._send(h, 200, self._upload(h.headers.get("Content-Type", ""), body))
        if method == "POST" and parts == ["v1", "fine_tuning", "jobs"]:
            return self._send(h, 200, self._create(json.loads(body)))
        if parts[:3] == ["v1", "fine_tuning", "jobs"] and len(parts) >= 4 and parts[3] in self.jobs:
            job = self.jobs[parts[3]]
            if method == "GET" and len(parts) == 4:
                if self.unavailable_after is not None and self.gets[job["id"]] >= self.unavailable_after:
                    return self._send(h, 503, {"message": "Service unavailable"})
                return self._send(h, 200, self._advance(job))
            if method == "POST" and parts[4:] == ["cancel"]:
                job["status"] = "CANCELLATION_REQUESTED"
                return self._send(h, 200, self._detailed(job))
        if method == "POST" and parts == ["v1", "chat", "completions"]:
            return self._chat(h, json.loads(body))
        return self._send(h, 404, {"detail": "Not Found"})

    def _send(self, h: BaseHTTPRequestHandler, status: int, data: dict[str, Any]) -> None:
        payload = json.dumps(data).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    # --- files ----------------------------------------------------------------------------------

    def _upload(self, content_type: str, body: bytes) -> dict[str, Any]:
        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        filename, content = fields["file"]
        purpose = fields.get("purpose", (None, b""))[1].decode()
        upload = Upload(f"file-{len(self.uploads) + 1}", filename or "", purpose, content)
        self.uploads.append(upload)
        return {
            "id": upload.file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": CREATED,
            "filename": upload.filename,
            "purpose": purpose,
            "sample_type": "instruct",
            "source": "upload",
            "num_lines": content.count(b"\n"),
        }

    # --- jobs -----------------------------------------------------------------------------------

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.job_bodies.append(body)
        job_id = f"job-{len(self.jobs) + 1:04d}"
        job = {
            "id": job_id,
            "auto_start": body.get("auto_start", True),
            "model": body["model"],
            "status": "QUEUED",
            "job_type": "completion",
            "created_at": CREATED,
            "modified_at": CREATED,
            "training_files": [f["file_id"] for f in body["training_files"]],
            "validation_files": body.get("validation_files", []),
            "object": "job",
            "fine_tuned_model": None,
            "suffix": body.get("suffix"),
            "integrations": [],
            "trained_tokens": None,
            "metadata": None,
            "hyperparameters": body.get("hyperparameters", {}),
            "events": [{"name": "status-updated", "data": {"status": "QUEUED"}, "created_at": CREATED}],
            "checkpoints": [],
        }
        self.jobs[job_id] = job
        self.gets[job_id] = 0
        return {k: v for k, v in job.items() if k not in ("events", "checkpoints")}

    def _advance(self, job: dict[str, Any]) -> dict[str, Any]:
        if job["status"] == "CANCELLATION_REQUESTED":
            job["status"] = "CANCELLED"
        elif job["status"] not in ("CANCELLED",):
            index = min(self.gets[job["id"]], len(self.script) - 1)
            status, checkpoints = self.script[index]
            job["status"], job["checkpoints"] = status, checkpoints
            if status == "SUCCESS":
                job["fine_tuned_model"] = f"ft:{job['model']}:{job.get('suffix') or 'x'}:abc123"
            if status == "FAILED" and self.failure_event:
                job["events"].append(self.failure_event)
        self.gets[job["id"]] += 1
        job["events"].append(
            {"name": "status-updated", "data": {"status": job["status"]}, "created_at": CREATED}
        )
        return self._detailed(job)

    def _detailed(self, job: dict[str, Any]) -> dict[str, Any]:
        return dict(job)

    # --- chat -----------------------------------------------------------------------------------

    def _chat(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        self.chat_bodies.append(body)
        words = self.reply.split(" ")
        usage = {"prompt_tokens": 11, "completion_tokens": len(words), "total_tokens": 11 + len(words)}
        base = {"id": "cmpl-1", "object": "chat.completion", "created": CREATED, "model": body["model"]}
        if not body.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": self.reply},
                "finish_reason": "stop",
            }
            return self._send(h, 200, {**base, "choices": [choice], "usage": usage})
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        chunks = []
        for i, piece in enumerate(pieces):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            chunks.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        last = {"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}
        chunks.append({**base, "choices": [last], "usage": usage})
        for chunk in chunks:
            self._chunk(h, f"data: {json.dumps(chunk)}\n\n".encode())
        self._chunk(h, b"data: [DONE]\n\n")
        self._chunk(h, b"")

    @staticmethod
    def _chunk(h: BaseHTTPRequestHandler, data: bytes) -> None:
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()
