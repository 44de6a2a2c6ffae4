"""`twinlm serve`: the twin behind an OpenAI-compatible API with a web chat page (twinlm.serve.server).

The API key comes only from the environment variable TWINLM_API_KEY (never a flag, which other users see
in the process list, nor twin.yaml, which gets copied around). The socket is bound before the model is
loaded, so a taken port fails at once, and `--port 0` (any free port) prints the address it got.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from twinlm.cli import Workspace, _help, _user_errors, app, err, out
from twinlm.cli.display import safe_text
from twinlm.config import ServeConfig
from twinlm.errors import TwinError
from twinlm.workspace import open_workspace

API_KEY_ENV = "TWINLM_API_KEY"
_LOOPBACK = ("127.", "localhost", "::1")


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or one error line saying what to change."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise TwinError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise TwinError(
            f"cannot listen on {host}:{port} ({e.strerror}): pick another --port or --host"
        ) from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@app.command("serve")
@_user_errors
def serve_command(
    source: Annotated[
        str | None,
        typer.Argument(
            help="What to serve: a run, an export folder, a merged folder or a GGUF. Default: the newest "
            "export, else the newest run.",
            show_default=False,
        ),
    ] = None,
    workspace: Workspace = Path("."),
    host: Annotated[str | None, typer.Option(help=_help(ServeConfig, "host"), show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help=_help(ServeConfig, "port"), show_default=False)] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="Run the model with transformers, llama.cpp (a GGUF), or auto; or mistral-api: the model "
            "of a hosted run (SOURCE names the run), every chat sent to the Mistral API."
        ),
    ] = "auto",
    workers: Annotated[
        int | None, typer.Option(min=1, help=_help(ServeConfig, "workers"), show_default=False)
    ] = None,
) -> None:
    """Serve the twin: an OpenAI-compatible API at /v1 (one model per persona) and a web chat page at /.
    Set TWINLM_API_KEY to require that key (as a Bearer token) on the API."""
    import uvicorn

    from twinlm.serve import cpu_share
    from twinlm.serve.backends import Sampling
    from twinlm.serve.serve_api import model_ids
    from twinlm.serve.server import create_app
    from twinlm.serve.twin import open_twin

    if backend not in ("auto", "transformers", "llama.cpp", "mistral-api"):
        raise TwinError(f"--backend {backend}: expected auto, transformers, llama.cpp or mistral-api")
    ws = open_workspace(workspace)
    updates = {"host": host, "port": port, "workers": workers}
    settings = ws.config.serve.model_copy(update={k: v for k, v in updates.items() if v is not None})
    api_key = os.environ.get(API_KEY_ENV, "").strip() or None
    sock = _listen(settings.host, settings.port)  # before loading: a taken port fails at once
    try:
        chat = ws.config.chat
        cpu_share.configure(chat.threads)  # one share of the cores for every worker
        if backend == "mistral-api":  # the hosted model: its prompts are messages (twinlm.hosted.twin)
            from twinlm.hosted.twin import open_hosted_twin

            twin: Any = open_hosted_twin(ws.root, ws.config, source)
            extra: list[Any] = [twin.worker() for _ in range(settings.workers - 1)]
        else:
            opening = {"backend": backend, "context_length": chat.context_length}
            twin = open_twin(ws.root, source, slots=settings.workers, **opening)  # type: ignore[arg-type]
            if getattr(twin.backend, "slots", 1) > 1:  # a GGUF: one context makes every worker's replies
                extra = [twin.backend] * (settings.workers - 1)
            else:  # each further worker its own model object (the backend makes one reply at a time)
                extra = [
                    open_twin(ws.root, source, **opening).backend  # type: ignore[arg-type]
                    for _ in range(settings.workers - 1)
                ]
        application = create_app(
            twin,
            settings,
            sampling=Sampling.from_config(chat.sampling),
            backends=[twin.backend, *extra],
            api_key=api_key,
            workspace=ws.root,
        )
        bound = sock.getsockname()
        url = _url(settings.host, int(bound[1]))
        err.print(f"Serving {safe_text(twin.description)}", highlight=False, soft_wrap=True)
        models = ", ".join(
            f"{safe_text(model)} ({safe_text(name)})" for model, name in model_ids(twin.personas).items()
        )
        err.print(f"Models: {models}", highlight=False, soft_wrap=True)
        if api_key is None and not settings.host.startswith(_LOOPBACK):
            err.print(
                f"[yellow]warning:[/] listening on {safe_text(settings.host)} without an API key: anyone "
                f"who can reach this machine can use the twin (set {API_KEY_ENV})",
                highlight=False,
                soft_wrap=True,
            )
        out.print(f"Web chat:   {url}/", highlight=False, soft_wrap=True)
        out.print(
            f"Review:     {url}/review (the data the twin learns from; this machine only)",
            highlight=False,
            soft_wrap=True,
        )
        out.print(
            f"OpenAI API: {url}/v1 ({'API key required' if api_key else 'no API key'}); Ctrl-C stops",
            highlight=False,
            soft_wrap=True,
        )
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
        server = uvicorn.Server(
            uvicorn.Config(application, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
