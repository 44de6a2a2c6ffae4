"""Backends: a model that turns prompt token ids into a streamed reply (transformers or llama.cpp).

The prompt is always token ids made by the training rendering (twinlm.prepare.render.render_prompt,
through twinlm.serve.twin), never text through a second template: the transformers backend feeds the
ids to the model, the llama.cpp backend hands the same ids to llama_cpp.Llama.generate.

Both backends only produce token ids; what happens to them is shared (twinlm.serve.generation's
`Generation`, re-exported here with `Sampling`): decoding with the run's tokenizer, stopping at an
end-of-turn token, a stop string, max_tokens or a cancel. Sampling is llama.cpp's chain in both
(`sample_token`), so each setting means the same whichever backend runs.

One generation at a time per backend object (not thread-safe): callers that run several at once use
several backend objects or queue.
"""

from __future__ import annotations

import inspect
import logging
import random
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, Protocol

from twinlm.errors import TwinError
from twinlm.serve import cpu_share
from twinlm.serve.cpu_share import CoreShare
from twinlm.serve.generation import FinishReason, Generation, Sampling

__all__ = [
    "Backend",
    "BackendKind",
    "FinishReason",
    "Generation",
    "LlamaCppBackend",
    "Sampling",
    "TransformersBackend",
    "end_of_turn_ids",
    "open_backend",
    "open_llama_cpp",
    "open_transformers",
    "sample_token",
]

BackendKind = Literal["transformers", "llama.cpp"]
DEFAULT_GGUF_CONTEXT = 8192  # llama.cpp's cache is allocated up front: not a 128k model's whole window


class Backend(Protocol):
    name: str  # "transformers" or "llama.cpp"
    tokenizer: Any  # the HF tokenizer render_prompt uses (from the run / export folder)
    context_length: int

    def generate(
        self, prompt_ids: list[int], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Generation: ...


def end_of_turn_ids(tokenizer: Any) -> frozenset[int]:
    """The ids that end a reply: the token the template closes a trained turn with (found from the
    rendering's labels, as training learned it), the tokenizer's EOS, and every other special token.

    A reply's text never holds a special token (the rendering makes special-token text in messages
    plain), so one in the output is the template's own: "<|im_start|>" or "<|start_header_id|>" begin
    the next turn (the model going on as someone else); decoding would drop it silently anyway."""
    from twinlm.prepare.render import IGNORE_INDEX, inspect_template, render
    from twinlm.prepare.sample import Sample, Turn

    ids = set(inspect_template(tokenizer).special_ids)  # control tokens (not <unk>: text can become it)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for kind, speakers in (("assistant", ("user", "assistant")), ("chat", ("Sam", "Alex"))):
        sample = Sample(
            "eot", "eot", "eot", kind, (Turn(speakers[0], "Hi", False), Turn(speakers[1], "Hello", True))
        )
        try:
            rendered = render(sample, tokenizer, 1 << 16)
        except Exception:
            continue  # a template that cannot render this kind: the other one says it
        for r in rendered:
            labels = [x for x in r.labels if x != IGNORE_INDEX]
            if labels:
                ids.add(int(labels[-1]))
    return frozenset(ids)


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise TwinError(f"{folder}: cannot load the tokenizer ({err})") from None


# --- transformers ---------------------------------------------------------------------------------------


class TransformersBackend:
    """A Hugging Face model (a merged folder, or a base model with a run's adapter), CPU or GPU.

    A manual token loop with the KV cache, so `cancel` is checked between tokens and sampling is
    exactly temperature / top_p / min_p / repetition penalty as documented in the config.
    """

    name = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        context_length: int | None = None,
        end_ids: frozenset[int] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        trained = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 2048
        self.context_length = min(context_length or trained, trained)
        self.end_ids = end_ids if end_ids is not None else end_of_turn_ids(tokenizer)
        self.device = next(model.parameters()).device
        # transformers 5 renamed forward's past_key_values to cache (the old name warns, then goes away).
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def generate(
        self, prompt_ids: list[int], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Generation:
        capped = fit_to_context(prompt_ids, sampling, self.context_length)
        return Generation(
            self._tokens(list(prompt_ids), capped),
            self.tokenizer,
            self.end_ids,
            capped,
            len(prompt_ids),
            cancel,
        )

    def _tokens(self, prompt_ids: list[int], sampling: Sampling) -> Iterator[int]:
        import torch
        from transformers import DynamicCache

        generator = torch.Generator(device=self.device)
        generator.manual_seed(sampling.seed if sampling.seed is not None else random.getrandbits(63))
        cache = DynamicCache()
        step = torch.tensor([prompt_ids], device=self.device)
        reply: list[int] = []
        while True:
            with torch.inference_mode():
                out = self.model(input_ids=step, use_cache=True, **{self._cache_arg: cache})
                token = sample_token(out.logits[0, -1].float().clone(), reply, sampling, generator)
            yield token
            reply.append(token)
            step = torch.tensor([[token]], device=self.device)


PENALTY_WINDOW = 64  # the reply's last tokens the repetition penalty looks at (llama-cpp-python's default)


def sample_token(logits: Any, reply: list[int], sampling: Sampling, generator: Any = None) -> int:
    """The next token, the way llama.cpp's sampler chain picks it (so both backends mean the same by
    each setting): the repetition penalty on the tokens among the reply's last PENALTY_WINDOW
    (a positive logit divided by it, a negative one multiplied); temperature 0: the likeliest token;
    else top_p, then min_p on the probabilities before temperature, then temperature and a draw."""
    import torch

    if sampling.repetition_penalty != 1.0 and reply:
        previous = torch.tensor(sorted(set(reply[-PENALTY_WINDOW:])), device=logits.device)
        scores = logits[previous]
        logits[previous] = torch.where(
            scores <= 0, scores * sampling.repetition_penalty, scores / sampling.repetition_penalty
        )
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits, dim=-1)
    keep = torch.ones_like(probs, dtype=torch.bool)
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        before = torch.cumsum(ordered, 0) - ordered  # the mass of the likelier tokens
        keep[order[before >= sampling.top_p]] = False  # the token that crosses top_p stays
    if sampling.min_p > 0:
        keep &= probs >= sampling.min_p * probs.max()
    scaled = torch.where(keep, logits / sampling.temperature, float("-inf"))
    return int(torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator))


def fit_to_context(prompt_ids: list[int], sampling: Sampling, context_length: int) -> Sampling:
    """`sampling` with max_tokens cut to the room the prompt leaves; one-line TwinError for a prompt
    that is empty or fills the context, or max_tokens under 1."""
    if not prompt_ids:
        raise TwinError("empty prompt: nothing to answer")
    if len(prompt_ids) >= context_length:
        raise TwinError(
            f"the prompt is {len(prompt_ids)} tokens, the context window {context_length}: shorten it"
        )
    if sampling.max_tokens < 1:
        raise TwinError(f"max_tokens {sampling.max_tokens}: must be at least 1")
    return replace(sampling, max_tokens=min(sampling.max_tokens, context_length - len(prompt_ids)))


def _torch_device(device: str | None) -> str:
    import torch

    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise TwinError(f"--device {device}: expected cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise TwinError(f"--device {device}: no CUDA GPU here; use cpu")
    return device


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft imports bitsandbytes, which looks for hub kernels (offline: two warning lines) and
    transformers warns about a deprecated name on the way; none of it concerns a chat."""
    loggers = [logging.getLogger(name) for name in ("kernels", "bitsandbytes")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def open_transformers(
    path: Path,
    *,
    adapter: Path | None = None,
    tokenizer_dir: Path | None = None,
    device: str | None = None,
    context_length: int | None = None,
) -> TransformersBackend:
    """A merged model folder (or a base model folder with `adapter`, a run's final/ or checkpoint)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    where = _torch_device(device)
    dtype = torch.float32 if where == "cpu" else "auto"  # CPU: f32 (bf16 matmuls are slow there)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise TwinError(f"{path}: cannot load the model ({err})") from None
    if adapter is not None:
        with _quiet_peft():
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
            except (OSError, ValueError) as err:
                raise TwinError(f"{adapter}: cannot load the adapter ({err})") from None
    model.to(where)
    model.eval()
    tokenizer = _load_tokenizer(tokenizer_dir or path)
    return TransformersBackend(model, tokenizer, context_length=context_length)


# --- llama.cpp ------------------------------------------------------------------------------------------


class LlamaCppBackend:
    """A GGUF through llama-cpp-python. The prompt goes in as token ids (llama.cpp's own cache reuses a
    shared prefix between turns); decoding and stops are the shared `Generation`'s, with the run's
    tokenizer."""

    name = "llama.cpp"

    def __init__(
        self,
        llama: Any,
        tokenizer: Any,
        *,
        end_ids: frozenset[int] | None = None,
        cores: CoreShare | None = None,
    ) -> None:

        self.llama = llama
        self.cores = cores or cpu_share.CORES  # shared with the process's other llama.cpp backends
        self._threads = cpu_share.ContextThreads(llama.ctx)
        self.tokenizer = tokenizer
        self.context_length = int(llama.n_ctx())
        self.end_ids = gguf_end_ids(llama, end_ids if end_ids is not None else end_of_turn_ids(tokenizer))

    def generate(
        self, prompt_ids: list[int], sampling: Sampling, cancel: threading.Event | None = None
    ) -> Generation:
        capped = fit_to_context(prompt_ids, sampling, self.context_length)
        self.llama.set_seed(llama_cpp_seed(sampling))
        tokens = self.llama.generate(
            list(prompt_ids),
            **llama_cpp_sampler_args(sampling),
            reset=True,  # keeps the cached prefix the new prompt shares, re-evaluates the rest
        )
        shared = cpu_share.tokens_on_their_own_thread(tokens, self.cores, self._threads.use)
        return Generation(
            shared, self.tokenizer, self.end_ids, capped, len(prompt_ids), cancel, close=shared.close
        )

    def close(self) -> None:
        """Free the model now (quietly: llama.cpp logs its context's teardown otherwise)."""
        from twinlm.export.parity import _llama_cpp_quiet

        with _llama_cpp_quiet():
            self.llama.close()


def llama_cpp_seed(sampling: Sampling) -> int:
    """The seed llama.cpp's sampler chain starts from (a random one where none is set)."""
    return sampling.seed if sampling.seed is not None else random.getrandbits(31)


def llama_cpp_sampler_args(sampling: Sampling) -> dict[str, Any]:
    """`sampling` as llama-cpp-python's sampler chain takes it (Llama.generate, Llama._init_sampler):
    the one mapping for LlamaCppBackend and the batched backend, so a seed gives the same reply."""
    return {
        "top_k": 0,  # off: Sampling has no top_k (llama.cpp's default is 40)
        "top_p": sampling.top_p,
        "min_p": sampling.min_p,
        "typical_p": 1.0,
        "temp": max(sampling.temperature, 0.0),
        "repeat_penalty": sampling.repetition_penalty,
    }


def gguf_end_ids(llama: Any, end_ids: frozenset[int]) -> frozenset[int]:
    """`end_ids`, and what the GGUF itself ends generation at (its eos / eot ids), as llama-server
    would."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    ends = set(end_ids)
    ends.update(t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))
    return frozenset(ends)


def open_llama_cpp(
    gguf: Path,
    *,
    tokenizer_dir: Path,
    context_length: int | None = None,
    gpu_layers: int | None = None,
    slots: int = 1,
) -> Backend:
    """A GGUF file, with the tokenizer of the merged folder it was converted from (for decoding and for
    render_prompt). `gpu_layers`: layers offloaded to a GPU (-1 all; default: all where llama.cpp was
    built with GPU support). `slots` > 1: that many replies at once, batched in one context
    (twinlm.serve.batched); the returned backend's generate may then be called from several threads."""
    try:
        import llama_cpp
    except ImportError:
        raise TwinError(
            "the llama.cpp backend needs llama-cpp-python (a twinlm dependency): pip install "
            "llama-cpp-python, or use --backend transformers"
        ) from None
    from twinlm.export.parity import _llama_cpp_quiet

    tokenizer = _load_tokenizer(tokenizer_dir)
    with _llama_cpp_quiet():
        try:
            trained = _gguf_context(gguf)
            n_ctx = min(context_length or DEFAULT_GGUF_CONTEXT, trained or DEFAULT_GGUF_CONTEXT)
            threads = cpu_share.CORES.threads()  # alone (set again before each token)
            own_ctx = n_ctx if slots == 1 else 256  # batched: the model only, contexts made apart
            llama = llama_cpp.Llama(
                model_path=str(gguf),
                n_ctx=own_ctx,
                n_batch=min(own_ctx, 512),
                n_threads=threads[0],
                n_threads_batch=threads[1],
                n_gpu_layers=-1 if gpu_layers is None else gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError) as err:
            raise TwinError(f"{gguf}: llama.cpp cannot load it ({err})") from None
        if slots > 1:
            from twinlm.serve.batched import BatchedLlamaCpp

            ends = gguf_end_ids(llama, end_of_turn_ids(tokenizer))
            return BatchedLlamaCpp(llama, tokenizer, ends, slots=slots, context_length=n_ctx)
    return LlamaCppBackend(llama, tokenizer)


def _gguf_context(gguf: Path) -> int | None:
    """The context length the GGUF's model was made for (its `<arch>.context_length`)."""
    try:
        from gguf import GGUFReader

        fields = GGUFReader(gguf).fields
        arch = fields["general.architecture"].contents()
        return int(fields[f"{arch}.context_length"].contents())
    except (ImportError, KeyError, OSError, ValueError, TypeError):
        return None


def open_backend(
    kind: BackendKind,
    path: Path,
    *,
    adapter: Path | None = None,
    tokenizer_dir: Path | None = None,
    context_length: int | None = None,
    device: str | None = None,
    slots: int = 1,
) -> Backend:
    """`kind` "transformers": `path` a model folder (merged, or a base with `adapter`); "llama.cpp":
    `path` a GGUF, decoded with the tokenizer in `tokenizer_dir` (default: merged/ beside it), `slots`
    replies at once (see open_llama_cpp; the transformers backend makes one at a time)."""
    path = Path(path)
    if kind == "llama.cpp":
        return open_llama_cpp(
            path,
            tokenizer_dir=tokenizer_dir or path.parent / "merged",
            context_length=context_length,
            slots=slots,
        )
    if kind == "transformers":
        return open_transformers(
            path, adapter=adapter, tokenizer_dir=tokenizer_dir, device=device, context_length=context_length
        )
    raise TwinError(f"backend {kind!r}: expected transformers or llama.cpp")
