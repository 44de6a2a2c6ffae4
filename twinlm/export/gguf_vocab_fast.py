"""The GGUF vocabulary without transformers where the files decide it, else without waiting for it.

`gguf_vocab.read_vocab` loads the tokenizer exactly as training did, with transformers' AutoTokenizer,
which imports transformers and torch first: about 3 s on two cores, more than converting the tensor
data of a 1B model takes, and CPU the conversion needs. `VocabInBackground` reads the vocabulary from
tokenizer.json and tokenizer_config.json with the `tokenizers` library alone (`FileTokenizer`, ~0.05 s),
and then:

- where transformers loads those files as written (`transformers_may_differ` finds no class, added
  token, legacy file or flag that makes it rebuild or complete the tokenizer: the usual folder saved
  by transformers with a generic tokenizer class, as the tests' tokenizers of every family are), that
  reading is read_vocab's, and transformers is never imported;
- elsewhere it is a guess to write at once, and the exact `read_vocab` runs in a thread while the
  tensor data is converted and written (that work waits in system calls and numpy loops, which leave
  the interpreter lock to the thread). Before its file gets its final name, the conversion compares:
  the same vocabulary (every token, score, type, merge, special id, flag and the chat template) means
  the same bytes as if it had waited; a different one makes the caller put the exact metadata in
  place where it takes the same room, else write the file again.

Either way the output is `read_vocab`'s. The tests check that both readings agree for every family's
tokenizer, and that a folder the rule cannot decide is read by transformers.

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
    """`guess`: a Vocab to write now; `exact()`: read_vocab's (its TwinError where it has one).

    Where `transformers_may_differ` finds nothing transformers would change, the guess is the exact
    vocabulary and nothing else is read (no transformers, no torch). Otherwise the exact one is read
    by a thread; the guess is read before the thread starts, and the thread imports torch before
    transformers: no two threads ever wait on each other's half-imported modules."""

    def __init__(self, model_dir: Path, n_vocab: int | None = None) -> None:
        self.model_dir, self.n_vocab = Path(model_dir), n_vocab
        self._thread: threading.Thread | None = None
        try:
            files = FileTokenizer(self.model_dir)
            guess: Vocab | None = read_vocab(self.model_dir, n_vocab, hf=files)
        except Exception:  # any failure of the guess: the exact reading decides, errors included
            guess = None
        self.undecided = (
            "the files could not be read alone" if guess is None else transformers_may_differ(files)
        )
        self._result: tuple[Vocab | None, BaseException | None] = (guess, None)
        if self.undecided is not None:
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
        """read_vocab's Vocab for the folder (waits for the thread, if one reads it)."""
        if self._thread is not None:
            self._thread.join()
        vocab, error = self._result
        if error is not None:
            raise error
        assert vocab is not None
        return vocab


# Classes AutoTokenizer builds from tokenizer.json as written (transformers 5: the second is an alias
# of the first). A model-specific class (LlamaTokenizer, Qwen2Tokenizer, ...) may rebuild the pipeline
# from the vocabulary with its own normalizer and pre-tokenizer instead.
GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def transformers_may_differ(files: FileTokenizer) -> str | None:
    """Why transformers' AutoTokenizer might load the folder as something other than what `files` reads
    (its tokenizer.json and tokenizer_config.json as written), or None where it loads exactly that.

    What transformers 5 does on loading, each checked here from the files alone: a model-specific
    class rebuilds the pipeline; special tokens the config names but tokenizer.json does not carry as
    added tokens, and config added tokens that differ from tokenizer.json's, are added or changed;
    legacy special_tokens_map.json / added_tokens.json are merged in where the config has no
    added_tokens_decoder; fix_mistral_regex patches the split regex of a Mistral vocabulary;
    split_special_tokens, padding and truncation change encoding; several chat templates become a
    dict. (add_bos_token / add_eos_token are dropped where tokenizer.json exists.)"""
    folder = files.model_dir
    config = files.config
    backend = files.backend_tokenizer
    cls = config.get("tokenizer_class")
    if cls not in GENERIC_CLASSES:
        return f"tokenizer class {cls}"
    if config.get("split_special_tokens"):
        return "split_special_tokens"
    if backend.post_processor is None or backend.padding is not None or backend.truncation is not None:
        return "tokenizer.json's post-processor, padding or truncation"
    added = backend.get_added_tokens_decoder()
    contents = {t.content for t in added.values()}
    named = [config.get(k) for k in config if k in _SPECIAL_KEYS or k.endswith("_token")]
    extras = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    named += list(extras.values()) if isinstance(extras, dict) else list(extras)
    for token in named:
        content = token.get("content") if isinstance(token, dict) else token
        if isinstance(content, str) and content not in contents:
            return f"special token {content!r} is not an added token of tokenizer.json"
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        for token_id, entry in decoder.items():
            have = added.get(int(token_id))
            if not isinstance(entry, dict) or have is None:
                return f"added token {token_id} is not tokenizer.json's"
            for attr in ("content", "lstrip", "rstrip", "normalized", "single_word", "special"):
                if attr in entry and entry[attr] != getattr(have, attr):
                    return f"added token {token_id} differs from tokenizer.json's ({attr})"
    elif (folder / "special_tokens_map.json").exists() or (folder / "added_tokens.json").exists():
        return "legacy special_tokens_map.json / added_tokens.json"
    if config.get("fix_mistral_regex"):  # a >100k Mistral vocabulary gets another split regex
        return "fix_mistral_regex"
    template = config.get("chat_template")
    if not (template is None or isinstance(template, str)):
        return "several chat templates"
    if (folder / "chat_template.json").exists() or (folder / "additional_chat_templates").exists():
        return "chat_template.json or additional_chat_templates"
    return None


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
        self.model_dir = Path(model_dir)
        self.backend_tokenizer = Tokenizer.from_file(str(path))
        self.config = config = _load_json(Path(model_dir) / "tokenizer_config.json") or {}
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
