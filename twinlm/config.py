"""`twin.yaml`: one pydantic model is the single source of truth for the file, the CLI and the docs.

Every field carries a description; `twinlm init` writes the file with those descriptions as
comments, the CLI takes its option help from them, and an invalid file gets one error line that
names the file, the line, the field and the fix.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from twinlm.errors import ConfigError
from twinlm.evaluate.settings import EvalConfig
from twinlm.hosted.settings import HostedConfig
from twinlm.model import ParseOptions
from twinlm.prepare.clean import CleanConfig
from twinlm.prepare.documents import DocumentsConfig
from twinlm.prepare.redact import RedactConfig
from twinlm.prepare.teacher import TeacherConfig

CONFIG_NAME = "twin.yaml"

# The persona prompts' templates and their fields (filled by twinlm.prepare.persona.persona_prompt;
# here so that the settings do not import the build code that uses them).
DEFAULT_SYSTEM_PROMPT = "You are {name}, chatting with {others} on {platform}. Today is {date}."
TEMPLATE_FIELDS = ("name", "others", "platform", "date")
DEFAULT_GROUP_PROMPT = "A chat between {names} on {platform}. Today is {date}."
GROUP_TEMPLATE_FIELDS = ("names", "platform", "date")


class IngestConfig(BaseModel):
    """How exports are read into the corpus."""

    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(
        default_factory=list,
        description="Exports to read when `twinlm ingest` is given no paths (files, folders or zips; "
        "relative to the workspace). Only chat exports are read from these: documents, attachments and "
        "other files in them are skipped, each named with its reason.",
    )
    documents: list[str] = Field(
        default_factory=list,
        description="Documents to train on (.txt, .md, .pdf, .docx files, or folders searched for them; "
        "relative to the workspace), read when `twinlm ingest` is given no paths. Documents are read "
        "only from here or from `--documents`, never from inside an export.",
    )
    media: Literal["placeholder", "drop"] = Field(
        "placeholder",
        description="Photos, voice notes, stickers, files: 'placeholder' keeps a marker such as "
        "[photo] in the conversation, 'drop' leaves such messages out.",
    )
    max_message_chars: int = Field(
        20_000, ge=100, description="Longer messages (pasted logs, dumps) are cut to this many characters."
    )
    timezone: str | None = Field(
        None,
        description="IANA time zone (e.g. Europe/Berlin) for exports that store local times "
        "(WhatsApp, old Telegram). Empty: this machine's time zone.",
    )
    whatsapp_date_order: Literal["auto", "day_first", "month_first"] = Field(
        "auto",
        description="WhatsApp dates such as 03/04/21: 'auto' infers the order per file from the dates "
        "themselves.",
    )
    max_unpacked_gb: float = Field(
        50.0, gt=0, description="Refuse zip archives that would unpack to more than this (zip-bomb guard)."
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'Europe/Paris' "
                "or leave it empty for this machine's zone"
            ) from None
        return value

    def parse_options(self) -> ParseOptions:
        return ParseOptions(
            media=self.media,
            max_message_chars=self.max_message_chars,
            timezone=self.timezone,
            whatsapp_date_order=self.whatsapp_date_order,
        )


class BuildConfig(BaseModel):
    """How the corpus becomes a training dataset (`twinlm build`)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "",
        description="The base model whose tokenizer and chat template render the data: 'tiny' (a small "
        "model made on this machine, for CPU runs and trials), a local model folder, or a hub id (e.g. "
        "mistralai/Mistral-7B-Instruct-v0.3).",
    )
    trust_remote_code: bool = Field(
        False,
        description="Let the model's own code run when loading its tokenizer. Off: only turn on for a "
        "model you trust.",
    )
    targets: Literal["auto", "me", "assistant", "everyone"] | list[str] = Field(
        "auto",
        description="Whose turns are trained: 'auto' (you in chats, the assistant in ChatGPT exports), "
        "'me', 'assistant', 'everyone' (the model can play any regular), or a list of people's names.",
    )
    sources: list[str] = Field(
        default_factory=list, description="Only these sources (e.g. [discord, whatsapp]); empty: all of them."
    )
    system_prompt: str = Field(
        DEFAULT_SYSTEM_PROMPT,
        description="The persona's system prompt for chats, with fields {name}, {others}, {platform}, "
        "{date}. Stored with the dataset; chat time fills the same template.",
    )
    group_prompt: str = Field(
        DEFAULT_GROUP_PROMPT,
        description="The system prompt when one rendering trains several speakers (several targets on a "
        "template with named roles, such as ChatML or Llama 3): it names everyone and nobody as 'you'. "
        "Fields {names}, {platform}, {date}. Templates with only user/assistant roles (Mistral, Gemma) "
        "play one speaker at a time, each with its own system_prompt.",
    )
    session_gap_minutes: float = Field(
        10.0, gt=0, description="A pause longer than this starts a new session (one training sample)."
    )
    max_length: int = Field(
        2048, ge=64, description="Tokens per sample; longer sessions are split at turn boundaries."
    )
    eval_fraction: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Share of the trained tokens held out for the eval loss: each chat's newest sessions; "
        "short conversations (one ChatGPT conversation) and documents whole, by a hash.",
    )
    split_seed: str = Field(
        "twinlm", description="Changes which short conversations and documents go to eval, deterministically."
    )
    clean: CleanConfig = Field(default_factory=CleanConfig, description=CleanConfig.__doc__ or "")
    redact: RedactConfig = Field(default_factory=RedactConfig, description=RedactConfig.__doc__ or "")
    documents: DocumentsConfig = Field(
        default_factory=DocumentsConfig, description=DocumentsConfig.__doc__ or ""
    )
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description=TeacherConfig.__doc__ or "")

    @field_validator("system_prompt", "group_prompt")
    @classmethod
    def _known_fields(cls, value: str, info: ValidationInfo) -> str:
        import string

        try:
            used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as e:
            raise ValueError(
                f"not a valid template ({e}); write fields as {{name}}, a literal brace as {{{{"
            ) from None
        allowed = GROUP_TEMPLATE_FIELDS if info.field_name == "group_prompt" else TEMPLATE_FIELDS
        unknown = sorted(used - set(allowed))
        if unknown:
            fields = ", ".join("{" + f + "}" for f in allowed)
            raise ValueError(f"unknown field(s) {unknown}; use {fields}")
        return value


class LoraConfig(BaseModel):
    """LoRA adapter shape (methods lora, qlora, dora, qdora)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="Rank of the adapter matrices.")
    alpha: float = Field(
        32, gt=0, description="Scaling numerator (effective scale alpha/r, or alpha/sqrt(r) with rslora)."
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Layers that get adapters: 'all-linear' or a list of module names (q_proj, ...).",
    )
    rslora: bool = Field(False, description="Rank-stabilised scaling (alpha/sqrt(r)): better at high ranks.")


AttentionKernel = Literal["auto", "sdpa", "eager", "flash_attention_2", "twinlm_packed", "flex_attention"]


class TrainConfig(BaseModel):
    """How the model is fine-tuned on the built dataset (`twinlm train`)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "qlora", "dora", "qdora", "full"] = Field(
        "lora",
        description="lora: small adapters on a frozen model; qlora: the same on a 4-bit model (least "
        "memory); dora: weight-decomposed adapters; qdora: DoRA on a 4-bit model; full: every weight "
        "(most memory, most capacity).",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description=LoraConfig.__doc__ or "")
    learning_rate: float | None = Field(
        None, gt=0, description="Peak learning rate. Empty: 2e-4 for adapters, 1e-5 for full fine-tuning."
    )
    epochs: float = Field(2.0, gt=0, description="Passes over the training split (fractions allowed).")
    max_steps: int = Field(0, ge=0, description="Stop after this many optimizer steps (0: run all epochs).")
    batch_tokens: int = Field(
        4096, ge=64, description="Tokens per micro-batch: samples are packed into rows of at most this many."
    )
    grad_accum: int = Field(4, ge=1, description="Micro-batches per optimizer step.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(
        0.03, ge=0, lt=1, description="Share of the steps spent warming up the learning rate."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradients are clipped to this norm.")
    eval_every: int = Field(50, ge=1, description="Optimizer steps between eval-loss measurements.")
    save_every: int = Field(100, ge=1, description="Optimizer steps between checkpoints.")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept besides the best one.")
    log_every: int = Field(10, ge=1, description="Optimizer steps between training-loss log lines.")
    seed: int = Field(42, description="Seed for initialisation, data order and dropout.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 on a GPU that supports it, else fp32 (bf16 is ~13x slower on CPUs). No "
        "fp16: pure fp16 weights without loss scaling diverge; a GPU without bf16 trains in fp32.",
    )
    attention: AttentionKernel = Field(
        "auto",
        description="Attention kernel. auto: flash_attention_2 when installed on a GPU, else twinlm_packed "
        "(SDPA per packed sample) when packing, else sdpa. flex_attention: PyTorch FlexAttention with a "
        "document mask built from the packed rows (compiles on first use).",
    )
    packing: bool = Field(
        True,
        description="Pack samples into full rows (no attention across samples); off: length-grouped padding.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, ~25% slower."
    )
    compile: bool = Field(
        False,
        description="torch.compile the model: faster steps on a GPU after a compile at the start (minutes "
        "for a 7B model); packed rows of varying length compile once, as dynamic shapes.",
    )
    liger_kernels: bool = Field(
        False,
        description="Liger's fused GPU kernels (RMSNorm, RoPE, SwiGLU, and a linear cross-entropy that never "
        "materialises the logits): less memory, faster. CUDA only; pip install liger-kernel.",
    )
    distributed: Literal["ddp", "fsdp", "zero2", "zero3"] = Field(
        "ddp",
        description="How several GPUs share the work (`--gpus N`, `twinlm launch-config`). ddp: a whole "
        "copy per GPU (fastest while it fits); fsdp: weights, gradients and optimizer state sharded "
        "(PyTorch FSDP2); zero2 / zero3: DeepSpeed ZeRO stage 2 / 3 (pip install deepspeed).",
    )
    report_to: Literal["none", "tensorboard", "wandb"] = Field(
        "none",
        description="Also send the metrics to TensorBoard (runs/NAME/tensorboard) or Weights & Biases (its "
        "service, unless WANDB_MODE=offline). metrics.jsonl and loss.png are always written.",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _no_fp16(cls, value: Any) -> Any:
        if value == "fp16":
            raise ValueError(
                "fp16 is not supported (fp16 weights without loss scaling reach NaN); use bf16 on a GPU "
                "that supports it (Ampere or newer), else fp32"
            )
        return value


class ExportConfig(BaseModel):
    """Export (`twinlm export`, `merge`, `gguf`, `ollama`): the trained model as a merged folder, a GGUF
    and an Ollama Modelfile, in export/RUN/."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16", "f32"] = Field(
        "q4_k_m",
        description="GGUF type: q4_k_m (4-bit, the usual choice), q5_k_m, q6_k, q8_0, or unquantized f16, "
        "bf16, f32. k-quants need layers at least 256 wide (the tiny model is not: use q8_0).",
    )
    check: bool = Field(
        True,
        description="Check parity after exporting: llama.cpp must tokenize like the trained tokenizer, "
        "predict like the merged model and stop at the end of a turn; a failed check marks the export "
        "failed.",
    )
    temperature: float | None = Field(
        None, ge=0, description="The Modelfile's temperature PARAMETER (empty: Ollama's default)."
    )


class SamplingConfig(BaseModel):
    """How a reply is sampled at chat time (`twinlm chat`, `serve`, `discord-bot`); each can be overridden per
    command or request."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(
        0.7, ge=0, le=5, description="Randomness of the reply: 0 always picks the likeliest token (greedy)."
    )
    top_p: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Draw only from the likeliest tokens that together hold this much probability.",
    )
    min_p: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Leave out tokens less likely than this fraction of the likeliest one (0: off).",
    )
    repetition_penalty: float = Field(
        1.1,
        gt=0,
        description="Above 1 makes tokens the reply already wrote (among its last 64) less likely (1: off).",
    )
    max_tokens: int = Field(512, ge=1, description="Longest reply, in tokens.")
    seed: int | None = Field(
        None, description="Seed of the random draws, for repeatable replies (empty: a new one each time)."
    )


class ChatConfig(BaseModel):
    """Talking to the twin (`twinlm chat`, and the settings `serve` and `discord-bot` share)."""

    model_config = ConfigDict(extra="forbid")

    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description=SamplingConfig.__doc__ or "")
    context_length: int | None = Field(
        None,
        ge=64,
        description="Tokens of chat the model sees at once, reply included (empty: the model's own window, "
        "at most 8192 for a GGUF); older turns are dropped first, the system prompt is kept.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads a GGUF (llama.cpp) generates with (empty: one per physical core; "
        "serve.workers' replies are decoded together on them).",
    )


class ServeConfig(BaseModel):
    """The OpenAI-compatible server and its web chat page (`twinlm serve`). An API key, where wanted, comes
    only from the environment variable TWINLM_API_KEY, never from this file."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to listen on. 127.0.0.1 (the default) is this machine only; 0.0.0.0 opens "
        "the server to the network (set TWINLM_API_KEY then).",
    )
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: any free port).")
    max_request_bytes: int = Field(
        1_000_000, ge=1024, description="Largest request body accepted; a larger one gets 413 before parsing."
    )
    max_messages: int = Field(256, ge=1, description="Most messages in one chat completion request.")
    max_tokens: int = Field(
        2048, ge=1, description="Largest max_tokens a request may ask for (and never more than the context)."
    )
    workers: int = Field(
        1,
        ge=1,
        description="Replies generated at once. A GGUF (llama.cpp) makes them in one context, their "
        "tokens decoded together (one model in memory, a context's memory per reply); the transformers "
        "backend loads a copy of the model per worker. Further requests wait in line, first come first "
        "served.",
    )
    max_queued: int = Field(
        128, ge=0, description="Requests that may wait for a worker; one more gets 429 (retry later)."
    )


class DiscordConfig(BaseModel):
    """The Discord bot (`twinlm discord-bot`): where it answers, what it reads, how often it replies. Its
    token comes only from the environment variable DISCORD_BOT_TOKEN, never from this file."""

    model_config = ConfigDict(extra="forbid")

    channels: list[int] = Field(
        default_factory=list,
        description="Ids of the channels the bot answers in (and their threads); every other channel is "
        "ignored. `--channel ID` adds more. Copy an id with Discord's developer mode: right-click the "
        "channel > Copy Channel ID.",
    )
    context_messages: int = Field(
        30,
        ge=1,
        le=100,
        description="Recent channel messages the model reads before replying; messages before a pause "
        "longer than build.session_gap_minutes are left out, as training sessions were cut there.",
    )
    user_per_minute: float = Field(4, gt=0, description="Replies one person may get per minute, on average.")
    user_burst: int = Field(3, ge=1, description="Replies one person may get in a row, before that rate.")
    channel_per_minute: float = Field(10, gt=0, description="Replies per minute in one channel, on average.")
    channel_burst: int = Field(5, ge=1, description="Replies in a row in one channel, before that rate.")


class TwinConfig(BaseModel):
    """One twin: whose history it is, who is who, and how each stage runs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "my-twin", min_length=1, description="A name for this twin, used in model and run names."
    )
    me: list[str] = Field(
        default_factory=list,
        description="Your names and ids on every platform (display names, user ids, phone numbers, "
        "or 'source:id' such as 'discord:1234'). `twinlm people` lists the candidates.",
    )
    people: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Other people, one entry each: a canonical name mapped to their aliases across "
        "platforms, so one person is one speaker.",
    )
    ingest: IngestConfig = Field(default_factory=IngestConfig, description=IngestConfig.__doc__ or "")
    build: BuildConfig = Field(default_factory=BuildConfig, description=BuildConfig.__doc__ or "")
    train: TrainConfig = Field(default_factory=TrainConfig, description=TrainConfig.__doc__ or "")
    export: ExportConfig = Field(default_factory=ExportConfig, description=ExportConfig.__doc__ or "")
    eval: EvalConfig = Field(default_factory=EvalConfig, description=EvalConfig.__doc__ or "")
    chat: ChatConfig = Field(default_factory=ChatConfig, description=ChatConfig.__doc__ or "")
    serve: ServeConfig = Field(default_factory=ServeConfig, description=ServeConfig.__doc__ or "")
    discord: DiscordConfig = Field(default_factory=DiscordConfig, description=DiscordConfig.__doc__ or "")
    hosted: HostedConfig = Field(default_factory=HostedConfig, description=HostedConfig.__doc__ or "")

    @field_validator("me")
    @classmethod
    def _no_blank_aliases(cls, value: list[str]) -> list[str]:
        if any(not alias.strip() for alias in value):
            raise ValueError("aliases must not be empty; remove the blank entry")
        return value

    @field_validator("people")
    @classmethod
    def _aliases_unique(cls, value: dict[str, list[str]], info: ValidationInfo) -> dict[str, list[str]]:
        owner: dict[str, str] = {alias.casefold(): "me" for alias in info.data.get("me", [])}
        for person, aliases in value.items():
            for alias in [person, *aliases]:
                key = alias.casefold()
                if key in owner and owner[key] != person:
                    raise ValueError(
                        f"alias {alias!r} of {person!r} also belongs to {owner[key]!r}; "
                        "keep it under one of them"
                    )
                owner[key] = person
        return value


# ----------------------------------------------------------------------------------- loading


def load_config(path: Path) -> TwinConfig:
    """Read and validate twin.yaml; every problem becomes one ConfigError line with the line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; create a workspace with `twinlm init DIR`") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_problem(path, e)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}:1: expected a mapping of settings (name: ..., me: [...]), found {type(data).__name__}"
        )
    try:
        return TwinConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(path, node, e)) from None


# What the YAML parser was in the middle of (its "context"), in a user's words: the problem is usually
# where that began (an unclosed bracket or quote), lines before the parser noticed.
_YAML_CONTEXTS = {
    "while parsing a flow sequence": "a [ list opened here is not closed with ]",
    "while parsing a flow mapping": "a { mapping opened here is not closed with }",
    "while scanning a quoted scalar": "a quoted text opened here is not closed",
    "while parsing a block mapping": "the settings from here on are not indented evenly",
    "while parsing a block collection": "the list from here on is not indented evenly",
}
_YAML_PROBLEMS = {
    "mapping values are not allowed here": "a setting is indented more than the one above it, or a value "
    "holds ': ' (quote it)",
    "found character '\\t' that cannot start any token": "a tab: YAML is indented with spaces only",
}


def _yaml_problem(path: Path, error: yaml.YAMLError) -> str:
    """A YAML syntax error at the line where the mistake is: the start of what was left open (the parser's
    context) where it says one, else where the parser stopped."""
    problem_mark = getattr(error, "problem_mark", None)
    context_mark = getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None) or ""
    said = _YAML_PROBLEMS.get(problem, problem)
    opened = _YAML_CONTEXTS.get(context)
    earlier = context_mark is not None and (problem_mark is None or context_mark.line < problem_mark.line)
    if opened and earlier:
        noticed = f" (noticed at line {problem_mark.line + 1}: {said})" if problem_mark else ""
        return f"{path}:{context_mark.line + 1}: invalid YAML: {opened}{noticed}"
    where = f":{problem_mark.line + 1}" if problem_mark else ""
    return f"{path}{where}: invalid YAML: {said}"


def _describe(path: Path, node: yaml.Node | None, error: ValidationError) -> str:
    """Every validation problem, one line each, in file order: `file:line: field: what is wrong; the fix`.
    A setting that takes several forms (a choice or a list) gets one line saying all of them."""
    problems: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for item in error.errors():
        problems.setdefault(_user_loc(tuple(item["loc"])), []).append(dict(item))
    # A setting given in one of its forms (a list for build.targets) is judged in that form: the problem
    # inside it, not that it is not one of the other forms.
    problems = {
        loc: items
        for loc, items in problems.items()
        if not any(len(other) > len(loc) and other[: len(loc)] == loc for other in problems)
    }
    lines = []
    for loc, items in problems.items():
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"
        line = _line_of(node, loc)
        where = f"{path}:{line}" if line else str(path)
        lines.append((line or 0, f"{where}: {field}: {_message(loc, items)}"))
    lines.sort(key=lambda pair: pair[0])
    return "\n".join(text for _, text in lines)


_KINDS = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "dict_type": "a mapping of settings (name: value, one per line)",
}


def _message(loc: tuple[Any, ...], items: list[dict[str, Any]]) -> str:
    first = items[0]
    if first["type"] == "extra_forbidden":
        known = _known_fields(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"unknown setting; {hint}valid settings here: {', '.join(known)}"
    said = []
    for item in items:
        text = str(item["msg"]).removeprefix("Value error, ").removeprefix("Input should be ")
        if item["type"] == "list_type":
            text = "a list, e.g. [a, b] or one '- item' per line"
        elif item["type"] == "string_type":
            text = "text (put it in quotes)"
        elif item["type"] in _KINDS:
            text = _KINDS[item["type"]]
        if text not in said:
            said.append(text)
    message = ", or ".join(said)
    if any(item["type"] not in ("value_error", "assertion_error") for item in items):
        message = f"should be {message}"
    value = first.get("input")
    if not isinstance(value, dict | list) and first["type"] not in ("value_error", "missing"):
        message += f" (got {value!r})"
    return message


def _user_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The error's place as a twin.yaml path: without pydantic's tags for the forms a setting may take
    (build.targets.literal['auto',...] is build.targets)."""
    model: type[BaseModel] | None = TwinConfig
    shown: list[Any] = []
    keep_next = False
    for part in loc:
        if keep_next or isinstance(part, int):  # a dict's key (a person's name) or a list index
            shown.append(part)
            keep_next = False
        elif model is not None:
            shown.append(part)
            info = model.model_fields.get(str(part))
            annotation = info.annotation if info else None
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
            keep_next = get_origin(annotation) is dict
        # else: the name of one form of a union setting: not part of the user's path
    return tuple(shown)


def _known_fields(parent: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = TwinConfig
    for part in parent:
        annotation = model.model_fields[str(part)].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return list(model.model_fields)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc` (or of its deepest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == part), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


# ----------------------------------------------------------------------------------- writing


def render_config(config: TwinConfig) -> str:
    """twin.yaml text for `config`, each setting preceded by its description as a comment."""
    lines = [
        "# twinlm workspace configuration. Every setting is optional unless noted;",
        "# `twinlm --help` and the docs describe the same fields.",
        "",
    ]
    _render_model(config, lines, indent="")
    return "\n".join(lines) + "\n"


def _render_model(model: BaseModel, lines: list[str], indent: str) -> None:
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        for comment in _wrap(info.description or "", 100 - len(indent)):
            lines.append(f"{indent}# {comment}")
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{name}:")
            _render_model(value, lines, indent + "  ")
        else:
            dumped = yaml.dump(
                {name: value}, Dumper=_Dumper, allow_unicode=True, sort_keys=False, default_flow_style=False
            ).rstrip("\n")
            lines.extend(indent + part if part else "" for part in dumped.splitlines())
        lines.append("")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (prompt templates) as readable `|` blocks instead of escaped one-liners."""


_Dumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)


def _wrap(text: str, width: int) -> list[str]:
    words, out, current = text.split(), [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    if current:
        out.append(current)
    return out


def reference_markdown() -> str:
    """docs/configuration.md: every setting with its default and description, from the model itself."""
    return (
        "# Configuration: twin.yaml\n\n"
        "Generated from `twinlm/config.py` (`twinlm config --markdown`); do not edit by hand.\n"
        "Every setting is optional. `twinlm init` writes this file into a new workspace, and\n"
        "`twinlm config -w DIR` prints a workspace's settings in the same form.\n\n"
        "```yaml\n" + render_config(TwinConfig()) + "```\n"
    )
