"""The GGUF vocabulary without waiting for transformers: a guess to write now, the exact one to check.

`gguf_vocab.read_vocab` loads the tokenizer exactly as training did, with transformers' AutoTokenizer,
which imports transformers and torch first: about 3 s on two cores, a third of converting a 1B model,
before the first byte can be written (the GGUF header, vocabulary included, comes before the tensor
data, and its size fixes where the data starts). So `VocabInBackground` reads it twice at once:

- a guess, at once, from tokenizer.json and tokenizer_config.json with the `tokenizers` library alone
  (what transformers does with them for the usual tokenizer folder; ~0.05 s);
- the exact `read_vocab`, in a thread, while the tensor data is converted and written (that work
  waits in system calls and torch kernels, which leave the interpreter lock to the thread).

The conversion writes with the guess and, before its file gets its final name, compares: the same
vocabulary (every token, score, type, merge, special id, flag and the chat template) means the same
bytes as if it had waited; a different one (a tokenizer transformers rebuilds or completes) makes the
caller put the exact metadata in place where it takes the same room, else write the file again.
Either way the output is `read_vocab`'s. For the tests' tokenizers of every preset family, and for
their copies saved by transformers (as a merge saves them), the guess is the exact one.

A child process instead of the thread was measured too (benchmarks/export_gguf.py's model at 0.2B,
side by side on a loaded machine): it repeats the torch and transformers imports in the child, ~40%
more CPU, and was the slower of the two.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

from twinlm.export.gguf_vocab import Vocab, _load_json, read_vocab


class VocabInBackground:
    """`guess`: a Vocab to write now; `exact()`: read_vocab's, from the thread (its TwinError where it
    has one). The guess is read before the thread starts, and the thread imports torch before
    transformers: no two threads ever wait on each other's half-imported modules."""

    def __init__(self, model_dir: Path, n_vocab: int | None = None) -> None:
        self.model_dir, self.n_vocab = Path(model_dir), n_vocab
        try:
            guess: Vocab | None = read_vocab(self.model_dir, n_vocab, hf=FileTokenizer(self.model_dir))
        except Exception:  # any failure of the guess: the exact reading decides, errors included
            guess = None
        self._result: tuple[Vocab | None, BaseException | None] = (None, None)
        self._thread = threading.Thread(target=self._read_exact, name="gguf-vocab", daemon=True)
        self._thread.start()
        self.guess = guess if guess is not None else self.exact()

    def _read_exact(self) -> None:
        try:
            with contextlib.suppress(ImportError):  # first, alone: see the class docstring
                import torch  # noqa: F401

            self._result = (read_vocab(self.model_dir, self.n_vocab), None)
        except BaseException as err:  # handed to exact(), in the caller's thread
            self._result = (None, err)

    def exact(self) -> Vocab:
        """read_vocab's Vocab for the folder (waits for the thread)."""
        self._thread.join()
        vocab, error = self._result
        if error is not None:
            raise error
        assert vocab is not None
        return vocab


class FileTokenizer:
    """What `read_vocab` asks of a Hugging Face tokenizer, from tokenizer.json and tokenizer_config.json
    as written: the backend, its added tokens, the special tokens and ids, encoding and the chat template.
    Right for a folder transformers loads as it is; where transformers would rebuild or complete it,
    the vocabulary read with this one differs from read_vocab's, and VocabInBackground's caller sees
    that."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(path)
        self.backend_tokenizer = Tokenizer.from_file(str(path))
        config = _load_json(Path(model_dir) / "tokenizer_config.json") or {}
        self.added_tokens_decoder: dict[int, Any] = self.backend_tokenizer.get_added_tokens_decoder()
        self.bos_token, self.eos_token = _token(config, "bos_token"), _token(config, "eos_token")
        self.unk_token, self.pad_token = _token(config, "unk_token"), _token(config, "pad_token")
        template = config.get("chat_template")
        self.chat_template = template if isinstance(template, str) else None

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id(self.unk_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}


def _token(config: dict[str, Any], key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
