"""Model presets: short names for the base models twinlm is tested against, with training defaults.

A preset only names a model and gives defaults that a config may override; nothing here downloads
anything. Anything that is not a preset name (a local folder, another hub id) is used as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from twinlm.models.tiny import NAME as TINY

Method = Literal["lora", "qlora", "dora", "qdora", "full"]

# Usual LoRA / full fine-tuning learning rates for chat-style SFT: LoRA adapters start at zero and
# need a large step; updating all weights of a pretrained model needs a small one.
LORA_LR = 2e-4
FULL_LR = 1e-5


@dataclass(frozen=True)
class Preset:
    """A base model and the defaults twinlm trains it with."""

    name: str
    hub_id: str | None  # None: built locally (the tiny preset)
    params_b: float  # parameters in billions, for the training-time and memory estimates
    context_length: int  # the model's own maximum sequence length
    max_length: int = 2048  # default training sequence length (tokens per sample / packed row)
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    lora_lr: float = LORA_LR
    full_lr: float = FULL_LR
    gated: bool = False  # the hub asks users to accept a licence before downloading
    # Gemma 2's attention logit soft-capping is only honoured by the eager implementation.
    attn_implementation: str | None = None

    def lr(self, method: Method) -> float:
        """The default learning rate for a training method."""
        return self.full_lr if method == "full" else self.lora_lr


def _qwen(size: str, params_b: float) -> Preset:
    return Preset(f"qwen2.5-{size}-instruct", f"Qwen/Qwen2.5-{size.upper()}-Instruct", params_b, 32768)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("mistral-7b-instruct", "mistralai/Mistral-7B-Instruct-v0.3", 7.25, 32768),
        Preset("mistral-7b", "mistralai/Mistral-7B-v0.3", 7.25, 32768),
        Preset("llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct", 8.03, 131072, gated=True),
        _qwen("0.5b", 0.49),
        _qwen("1.5b", 1.54),
        _qwen("3b", 3.09),
        _qwen("7b", 7.62),
        Preset("gemma-2-9b-it", "google/gemma-2-9b-it", 9.24, 8192, gated=True, attn_implementation="eager"),
        Preset("gemma-2-2b-it", "google/gemma-2-2b-it", 2.61, 8192, gated=True, attn_implementation="eager"),
        # ~0.2M random-initialised parameters: short rows keep CPU steps fast, and a model that
        # starts from noise needs larger steps than a pretrained one to learn anything in a test.
        Preset(TINY, None, 0.0002, 4096, max_length=512, lora_lr=1e-3, full_lr=1e-3),
    )
}


def get_preset(name: str) -> Preset | None:
    """The preset called `name`, or None for a path or a hub id that is not a preset."""
    return PRESETS.get(name)


def resolve(name_or_path: str) -> str:
    """A preset name as its hub id; anything else (a folder, a hub id, `tiny`) as given.

    The tiny preset has no hub id: `twinlm.models.resolve_model` builds it in the workspace."""
    preset = PRESETS.get(name_or_path)
    if preset is not None and preset.hub_id is not None:
        return preset.hub_id
    return name_or_path
