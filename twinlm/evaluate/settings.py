"""The `eval:` section of twin.yaml (here, not in twinlm.config, so the settings load without the
evaluation code; twinlm.config only includes the model)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_PROBES = {
    "en": ["hey", "what's up?"],
    "de": ["hey", "was geht?"],
    "es": ["hola", "¿qué tal?"],
    "fr": ["salut", "ça va ?"],
    "it": ["ciao", "come va?"],
    "pt": ["oi", "tudo bem?"],
}
DEFAULT_JUDGE_PROMPT = (
    "You grade answers to questions about a document. Question: {question}\n"
    "Reference answer: {reference}\nAnswer to grade: {answer}\n"
    "How well does the answer agree with the reference? Reply with one integer from 0 (wrong or "
    "missing) to 10 (fully correct), and nothing else."
)


class JudgeConfig(BaseModel):
    """Optional grading of document answers by a judge model behind an OpenAI-compatible endpoint."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Ask a judge model to grade each held-out document answer. This SENDS the questions, "
        "reference answers and the models' answers to base_url; use a local server to keep them here.",
    )
    base_url: str | None = Field(
        None,
        description="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1.",
    )
    model: str | None = Field(None, description="Model name the endpoint knows, e.g. 'gpt-4o-mini'.")
    allow_insecure_http: bool = Field(
        False, description="Allow a plain http:// base_url on another machine (off: only this machine)."
    )
    api_key_env: str = Field(
        "TWINLM_JUDGE_API_KEY",
        min_length=1,
        description="Name of the environment variable that holds the API key (unset: no key is sent).",
    )
    timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for one grade.")
    max_retries: int = Field(
        2, ge=0, le=20, description="Retries per grade on rate limits and server errors."
    )
    prompt: str = Field(
        DEFAULT_JUDGE_PROMPT,
        description="Prompt per answer: {question}, {reference} and {answer} are filled in; the judge's "
        "first number (0-10) is the grade.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not re.match(r"https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL; write it like http://127.0.0.1:8000/v1")
        return value

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> JudgeConfig:
        if self.enabled and not self.base_url:
            raise ValueError("enabled, but base_url is empty; set base_url (and model) or set enabled: false")
        if self.enabled and not (self.model or "").strip():
            raise ValueError("enabled, but model is empty; name the judge model or set enabled: false")
        return self


class EvalConfig(BaseModel):
    """Evaluation (`twinlm eval`): base vs tuned and each checkpoint, on the held-out data; the report
    goes to reports/."""

    model_config = ConfigDict(extra="forbid")

    probes: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_PROBES.items()},
        description="Probe conversation starters per language: each persona is probed in the language most "
        "of its real messages are in (en where unknown), one starter per turn.",
    )
    friends: list[str] = Field(
        default_factory=list,
        description="The friends the model plays in probe conversations (talking to you). Empty: the people "
        "you talk with most in the held-out chats, up to max_friends.",
    )
    max_friends: int = Field(3, ge=0, le=20, description="Friends probed when `friends` is empty.")
    max_replies: int = Field(
        40,
        ge=1,
        description="Held-out places per person where each model writes the reply the person really wrote "
        "(the style metrics compare those replies with the real ones).",
    )
    max_new_tokens: int = Field(96, ge=1, description="Longest generated reply, in tokens.")
    checkpoints: str = Field(
        "all",
        description="Which weights get the generated metrics (style, documents, judge): all (every "
        "checkpoint and the final weights) or final (the base model and the final weights). Perplexity "
        "covers every checkpoint either way.",
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description=JudgeConfig.__doc__ or "")

    @field_validator("checkpoints")
    @classmethod
    def _checkpoints(cls, value: str) -> str:
        if value not in ("all", "final"):
            raise ValueError(f"{value!r}: write all or final")
        return value

    @field_validator("probes")
    @classmethod
    def _probes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for language, starters in value.items():
            if not [s for s in starters if s.strip()]:
                raise ValueError(f"{language}: no starter; give at least one, e.g. [hey]")
        return value
