"""`twinlm chat`'s logic: a conversation with the twin, its slash commands, and multi-line input.

The terminal side (reading lines, Ctrl-C, printing the stream) is twinlm.cli.chat; everything here
works without a terminal, so tests drive it directly.

History is kept whole; each reply's prompt is `Twin.prompt` of it, which drops the oldest turns
first (the system prompt stays) until the prompt and the reply fit the context window.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue

import orjson

from twinlm.errors import TwinError
from twinlm.files import write_atomic
from twinlm.serve.backends import Generation, Sampling
from twinlm.serve.twin import ASSISTANT, Twin

HELP = """\
Type a message and press Enter; the twin answers, streaming.
  multi-line   end a line with \\ to go on on the next line, or type \"\"\" alone on a line to start
               and end a block (pasted text included)
  Ctrl-C       stops a reply (the chat goes on); at the prompt, Ctrl-C twice or /exit leaves
  /as NAME     who the model speaks as (one of: {personas})
  /me NAME     who you are in the chat (anyone; the model sees this name)
  /system TEXT the system prompt for this chat; /system alone shows it, /system default restores
               the persona's own
  /reset       forget the conversation so far
  /save FILE   write the conversation to FILE (.json: JSON, else one 'Name: text' block per turn)
  /help        this help
  /exit        leave"""
BLOCK = '"""'  # a line with only this starts and ends a multi-line block


@dataclass
class ChatSession:
    """One conversation: who speaks as whom, the turns so far, and the sampling settings."""

    twin: Twin
    persona: str
    me: str
    sampling: Sampling
    turns: list[tuple[str, str]] = field(default_factory=list)
    system: str | None = None  # an override of the persona's system prompt (/system)

    @classmethod
    def start(
        cls, twin: Twin, sampling: Sampling, persona: str | None = None, me: str | None = None
    ) -> ChatSession:
        """`persona`: who the model speaks as (default: you, the twin's owner); `me`: who the user is
        (default: the persona's usual partner)."""
        chosen = twin.persona(persona)
        user = _name(me) if me is not None else twin.partner(chosen)
        if user == chosen:
            raise TwinError(f"--me {user}: that is who the model speaks as (--as); name someone else")
        return cls(twin, chosen, user, sampling)

    # --- the conversation ----------------------------------------------------------------------------

    def prompt_ids(self) -> list[int]:
        return self.twin.prompt(
            self.persona, self.turns, system=self.system, max_new_tokens=self.sampling.max_tokens
        )

    def ask(self, text: str, cancel: threading.Event | None = None) -> Generation:
        """Add the user's message and start the persona's reply (iterate it; then call `keep`)."""
        self.turns.append((self.me, text))
        try:
            return self.twin.reply(
                self.persona, self.turns, sampling=self.sampling, system=self.system, cancel=cancel
            )
        except TwinError:
            self.turns.pop()
            raise

    def keep(self, reply: Generation) -> None:
        """The reply (what of it was shown, also when stopped) becomes part of the history."""
        if reply.text.strip():
            self.turns.append((self.persona, reply.text))

    def effective_system(self) -> str | None:
        if self.system is not None:
            return self.system
        return self.twin.system_prompt(self.persona, [self.me, *(who for who, _ in self.turns)])

    # --- slash commands -------------------------------------------------------------------------------

    def command(self, line: str) -> str | None:
        """Run a slash command; the text to show (None: leave the chat). TwinError: a bad command."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        name = name.lower()
        if name in ("/exit", "/quit"):
            return None
        if name in ("/help", "/?"):
            return HELP.format(personas=", ".join(self.twin.personas))
        if name == "/as":
            return self._as(arg)
        if name == "/me":
            if not arg:
                return f"You are {self.me}."
            who = _name(arg)
            if who == self.persona:
                raise TwinError(f"/me {who}: that is who the model speaks as; /as someone else first")
            self.me = who
            return f"You are now {who}."
        if name == "/system":
            if not arg:
                shown = self.effective_system()
                return f"System prompt: {shown}" if shown else "No system prompt."
            self.system = None if arg.lower() == "default" else arg
            return (
                "System prompt restored to the persona's own."
                if self.system is None
                else "System prompt set."
            )
        if name == "/reset":
            self.turns.clear()
            return "Conversation cleared."
        if name == "/save":
            if not arg:
                raise TwinError("/save FILE: name the file to write")
            path = self.save(Path(arg).expanduser())
            return f"Saved {len(self.turns)} turns to {path}."
        raise TwinError(f"{name}: unknown command; /help lists them")

    def _as(self, arg: str) -> str:
        if not arg:
            return f"The model speaks as {self.persona} (personas: {', '.join(self.twin.personas)})."
        persona = self.twin.persona(arg)
        said = ""
        if persona == self.me:  # talking to yourself: you take the persona's place
            self.me = self.persona if self.persona != ASSISTANT else self.twin.partner(persona)
            said = f" You are now {self.me}."
        self.persona = persona
        return f"The model now speaks as {persona}.{said}"

    def save(self, path: Path) -> Path:
        if path.suffix.lower() == ".json":
            data = {
                "persona": self.persona,
                "me": self.me,
                "system": self.effective_system(),
                "turns": [{"speaker": who, "text": text} for who, text in self.turns],
            }
            text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
        else:
            text = "".join(f"{who}: {said}\n\n" for who, said in self.turns)
        try:
            write_atomic(path, text)
        except OSError as err:
            raise TwinError(f"{path}: cannot write ({err.strerror or err})") from None
        return path


def _name(name: str) -> str:
    """A speaker name as rendering would see it: one line, no surrounding spaces."""
    cleaned = " ".join(name.split())
    if not cleaned:
        raise TwinError("a name cannot be empty")
    return cleaned


# --- input --------------------------------------------------------------------------------------------


class LineEditor:
    """Joins typed lines into messages: a line ending with a backslash continues on the next one; a
    line of three double quotes starts a block that the next such line ends."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.block = False

    @property
    def pending(self) -> bool:
        return bool(self.lines) or self.block

    def clear(self) -> None:
        self.lines, self.block = [], False

    def feed(self, line: str) -> str | None:
        """The message complete with this line, or None while more is to come."""
        if self.block:
            if line.strip() == BLOCK:
                return self._done()
            self.lines.append(line)
            return None
        if line.strip() == BLOCK and not self.lines:
            self.block = True
            return None
        if line.endswith("\\"):
            self.lines.append(line[:-1])
            return None
        self.lines.append(line)
        return self._done()

    def _done(self) -> str:
        text = "\n".join(self.lines)
        self.clear()
        return text


# --- a reply in a worker thread, so Ctrl-C in the main thread can stop it between tokens -------------------


class ThreadedReply:
    """Runs `start(cancel)`'s generation in a worker thread and hands its pieces over one by one.

    `stop()` (or `interrupt()`, from a signal handler) and going on calling `next()`: the worker stops
    before its next token and the pieces end. An error in the worker is raised again in the caller's
    thread.

    Ctrl-C must reach it through `interrupt()`, not as a KeyboardInterrupt: one raised inside the
    queue's `get` can land after its lock is taken and before the `try` that frees it, and then the
    worker's next `put` and the caller's next `get` wait on that lock for ever (seen in CI: the chat
    hung after Ctrl-C). `interrupt()` only sets a flag, so it is safe at any bytecode."""

    def __init__(self, start: Callable[[threading.Event], Generation]) -> None:
        self.cancel = threading.Event()
        self.generation: Generation | None = None
        self.interrupted = False  # set by interrupt(); next() passes it on to `cancel`
        self._queue: Queue[tuple[str, object]] = Queue()
        self._start = start
        self._thread = threading.Thread(target=self._work, name="twinlm-reply", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            self.generation = self._start(self.cancel)
            for piece in self.generation:
                self._queue.put(("piece", piece))
        except BaseException as err:
            self._queue.put(("error", err))
        finally:
            self._queue.put(("end", None))

    def stop(self) -> None:
        self.cancel.set()

    def interrupt(self) -> None:
        """Stop, from a signal handler: sets a plain flag (no lock), which `next()` turns into `stop()`."""
        self.interrupted = True

    def next(self) -> str | None:
        """The next piece of text, or None when the reply has ended."""
        while True:
            if self.interrupted and not self.cancel.is_set():
                self.stop()
            try:
                kind, value = self._queue.get(timeout=0.05)
            except Empty:
                continue
            if kind == "piece":
                return str(value)
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            self._thread.join()
            return None

    def __iter__(self) -> Iterator[str]:
        while (piece := self.next()) is not None:
            yield piece
