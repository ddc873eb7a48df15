"""The base model on the meta device, and the bytes its weights take on the GPU, by part and dtype.

The architecture comes from the checkpoint's own configs where it carries them, else the family's
shipped ones (as `network/size.py` builds it for the LoRA's file size). Nothing is loaded: meta
tensors have shapes and dtypes but no data, so SDXL's 3.5 billion parameters cost nothing here.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

# The frozen base weights' dtype on the GPU, by name (mixed_precision as train/setup.weight_dtype reads it).
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "fp8": torch.float8_e4m3fn}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def base_dtype_for(mixed_precision: str) -> str:
    """The dtype the trainer gives the base weights on a GPU: half precision under mixed precision."""
    return {"fp16": "fp16", "bf16": "bf16"}.get(mixed_precision, "fp32")


@dataclass(frozen=True)
class PartBytes:
    """The bytes of one part of the base model (its parameters and buffers), by dtype name."""

    part: str  # "unet", "text_encoder", "text_encoder_2", "vae"
    by_dtype: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(size for _, size in self.by_dtype)

    def describe(self) -> str:
        return ", ".join(f"{name} {size / 2**20:,.0f} MiB" for name, size in self.by_dtype)


def module_bytes(part: str, module: Any) -> PartBytes:
    """Every parameter and buffer of `module`, counted once even where shared (tied weights)."""
    sizes: dict[str, int] = {}
    seen: set[int] = set()
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        name = DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype).removeprefix("torch."))
        sizes[name] = sizes.get(name, 0) + tensor.numel() * tensor.element_size()
    return PartBytes(part, tuple(sorted(sizes.items())))


def _shipped(family: str, part: str) -> dict:
    from lorasmith.models.configs import shipped_config

    return shipped_config(family, part)


def text_parts(family: str) -> tuple[str, ...]:
    return ("text_encoder", "text_encoder_2") if family == "sdxl" else ("text_encoder",)


def meta_base(family: str, configs_json: str | None, base_dtype: str):
    """A `BaseModel` of `family` on the meta device, its weights in `base_dtype` (fresh each call)."""
    from accelerate import init_empty_weights
    from diffusers import DDPMScheduler

    from lorasmith.models.base import BaseModel
    from lorasmith.models.families import get_family
    from lorasmith.models.load import diffusers_model_from_config, text_model_from_config
    from lorasmith.models.tiny import noise_scheduler_config

    configs = json.loads(configs_json) if configs_json else {}
    config = lambda part: configs.get(part) or _shipped(family, part)  # noqa: E731
    with _quiet_diffusers():
        with init_empty_weights():
            unet = diffusers_model_from_config("UNet2DConditionModel", config("unet"))
            encoders = [text_model_from_config(config(part), i) for i, part in enumerate(text_parts(family))]
            vae = diffusers_model_from_config("AutoencoderKL", config("vae"))
        for module in (unet, *encoders, vae):  # buffers too: init_empty_weights leaves them on the CPU
            module.to(device="meta", dtype=DTYPES[base_dtype])
    fam = get_family(family)
    return BaseModel(family=fam, v_prediction=bool(configs.get("v_prediction")), unet=unet, vae=vae,
                     text_encoders=encoders, tokenizers=[],
                     noise_scheduler=DDPMScheduler(**noise_scheduler_config(False)), name=f"meta-{family}")


@contextmanager
def _quiet_diffusers():
    """diffusers warns when a UNet is cast with `to()`, which is what the trainer's loader does too."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def base_part_bytes(family: str, configs_json: str | None, base_dtype: str) -> tuple[PartBytes, ...]:
    """UNet, text encoder(s) and VAE, in that order, as the GPU holds them in `base_dtype`."""
    base = meta_base(family, configs_json, base_dtype)
    parts = [module_bytes("unet", base.unet)]
    parts += [module_bytes(part, encoder) for part, encoder in zip(text_parts(family), base.text_encoders)]
    return (*parts, module_bytes("vae", base.vae))
