"""The `hosted:` section of twin.yaml (kept here so twinlm.config imports no client code)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_BASE_URL = "https://api.mistral.ai"


class HostedConfig(BaseModel):
    """Hosted fine-tuning through the Mistral API (`twinlm train --backend mistral-api`; never by default).
    The built dataset is uploaded to Mistral: your messages and the people's you chat with leave this
    machine. The API key comes only from the environment variable MISTRAL_API_KEY, never from this file."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "open-mistral-7b",
        min_length=1,
        description="The base model Mistral fine-tunes (a name its fine-tuning API accepts, e.g. "
        "open-mistral-7b, mistral-small-latest).",
    )
    training_steps: int | None = Field(
        None, ge=1, description="Training steps of the job (empty: Mistral's default, or `epochs`)."
    )
    epochs: float | None = Field(
        None,
        gt=0,
        description="Passes over the training data (empty: Mistral's default, or `training_steps`).",
    )
    learning_rate: float = Field(1e-4, gt=0, description="Learning rate of the job.")
    suffix: str | None = Field(
        None,
        max_length=18,
        description="Added to the fine-tuned model's name (ft:MODEL:SUFFIX:...); empty: the twin's name is "
        "not sent, nothing is added.",
    )
    max_tokens: int = Field(
        20_000_000,
        ge=1,
        description="Refuse to start a job whose training would see more than about this many tokens "
        "(the data's estimate times the epochs): the API bills by trained token.",
    )
    base_url: str = Field(
        DEFAULT_BASE_URL, min_length=1, description="The API's address (only change it for a proxy)."
    )
    allow_insecure_http: bool = Field(
        False,
        description="Allow a plain http:// base_url to another machine (the data would cross unencrypted).",
    )
    poll_seconds: float = Field(10.0, gt=0, description="Seconds between two looks at the job's status.")

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> HostedConfig:
        if self.training_steps is not None and self.epochs is not None:
            raise ValueError("set training_steps or epochs, not both")
        return self
