"""The `twinlm` command line: one command per pipeline verb (corpus commands in `corpus.py`, dataset
commands in `data.py`; this module holds the app and what they share).

Option help is taken from the config model's field descriptions, so twin.yaml, `--help` and the
docs say the same thing. Errors for users are one line on stderr and exit code 1; a traceback means
a bug in twinlm.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

# Ctrl-C while the command line's libraries load (before typer, which turns it into exit status 130, runs)
# would print a KeyboardInterrupt traceback: end quietly with the same status. Restored at the end.
_LOADING = threading.current_thread() is threading.main_thread()
if _LOADING:
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import typer  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from rich.console import Console  # noqa: E402

from twinlm import __version__  # noqa: E402
from twinlm.cli.display import safe_text  # noqa: E402
from twinlm.corpus.db import corpus_error  # noqa: E402
from twinlm.errors import TwinError, disk_full  # noqa: E402
from twinlm.privacy import protect_process  # noqa: E402

app = typer.Typer(
    name="twinlm",
    help="Turn your own chat history and documents into a private, fine-tuned LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts contain literal brackets such as "[photo]"
)
out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(command: F) -> F:
    """Show TwinError as one red line and exit 1; anything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TwinError as e:
            _say(e)
            raise typer.Exit(1) from None
        except Exception as e:  # the corpus held by another process or damaged, a full disk: the user's
            found = corpus_error(e) or disk_full(e)
            if found is None:
                raise
            _say(found)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _say(error: TwinError) -> None:
    # Errors name files and quote their content: shown literally (twinlm.cli.display). Several problems
    # at once (every mistake in twin.yaml) come one per line, each its own error line.
    for line in str(error).split("\n"):
        err.print(f"[bold red]error:[/] {safe_text(line)}", markup=True, highlight=False, soft_wrap=True)


def _help(model: type[BaseModel], field: str) -> str:
    return model.model_fields[field].description or ""


Workspace = Annotated[
    Path, typer.Option("--workspace", "-w", help="The twin's folder (holds twin.yaml).", show_default=False)
]
AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def _version(value: bool) -> None:
    if value:
        out.print(f"twinlm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Turn your own chat history and documents into a private, fine-tuned LLM."""
    # Before any command imports a library: owner-only files, no telemetry, the hub offline (twinlm.privacy).
    protect_process()


# Registers the commands on `app` (imported last: they use the helpers above).
from twinlm.cli import (  # noqa: E402, F401
    chat,
    corpus,
    curate,
    data,
    discord_bot,
    evaluate,
    export,
    reexports,
    run,
    serve,
    status,
    train,
)

if _LOADING:
    signal.signal(signal.SIGINT, signal.default_int_handler)
