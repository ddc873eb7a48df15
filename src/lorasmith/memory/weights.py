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
# fp8 (fp8_base) joins when the trainer stores weights in float8 and upcasts them per layer.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
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
        """Its dtypes ("fp16"), with their sizes where it holds several (e.g. "fp8 2,400 MiB, bf16 12 MiB")."""
        shown = [(name, size) for name, size in self.by_dtype if size >= 2**20] or list(self.by_dtype)
        if len(shown) == 1:
            return shown[0][0]
        return ", ".join(f"{name} {size / 2**20:,.0f} MiB" for name, size in shown)


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


def part_config(family: str, configs_json: str | None, part: str) -> dict:
    """A part's architecture: the checkpoint's own when it carries one, else the family's shipped one."""
    configs = json.loads(configs_json) if configs_json else {}
    return configs.get(part) or _shipped(family, part)


def text_parts(family: str) -> tuple[str, ...]:
    return ("text_encoder", "text_encoder_2") if family == "sdxl" else ("text_encoder",)


def meta_module(family: str, configs_json: str | None, part: str, dtype: str):
    """One part ("unet", "text_encoder", "text_encoder_2", "vae") on the meta device, in `dtype`."""
    from lorasmith.models.empty import empty_weights
    from lorasmith.models.load import diffusers_model_from_config, text_model_from_config

    config = part_config(family, configs_json, part)
    with quiet_diffusers():
        with empty_weights():
            if part == "unet":
                module = diffusers_model_from_config("UNet2DConditionModel", config)
            elif part == "vae":
                module = diffusers_model_from_config("AutoencoderKL", config)
            else:
                module = text_model_from_config(config, text_parts(family).index(part))
        return module.to(device="meta", dtype=DTYPES[dtype])  # buffers too: init_empty_weights leaves them on the CPU


def meta_base(family: str, configs_json: str | None, base_dtype: str, with_vae: bool = True):
    """A `BaseModel` of `family` on the meta device, its weights in `base_dtype` (fresh each call).

    Without `with_vae` its VAE is an empty module: a training step on cached latents never runs it.
    """
    import torch
    from diffusers import DDPMScheduler

    from lorasmith.models.base import BaseModel
    from lorasmith.models.families import get_family
    from lorasmith.models.tiny import noise_scheduler_config

    configs = json.loads(configs_json) if configs_json else {}
    unet = meta_module(family, configs_json, "unet", base_dtype)
    encoders = [meta_module(family, configs_json, part, base_dtype) for part in text_parts(family)]
    vae = meta_module(family, configs_json, "vae", base_dtype) if with_vae else torch.nn.Module()
    return BaseModel(family=get_family(family), v_prediction=bool(configs.get("v_prediction")), unet=unet,
                     vae=vae, text_encoders=encoders, tokenizers=[],
                     noise_scheduler=DDPMScheduler(**noise_scheduler_config(False)), name=f"meta-{family}")


@contextmanager
def quiet_diffusers():
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


def fp8_part_bytes(family: str, configs_json: str | None, base_dtype: str, part: str) -> tuple[PartBytes, int]:
    """A part with fp8_base (train/low_vram.py): its Linear weights (the UNet's Conv2d weights too) in float8
    (1 byte), the rest in `base_dtype`; and the largest such weight in `base_dtype`, the upcast copy the GPU
    holds while that layer runs."""
    module = meta_module(family, configs_json, part, base_dtype)
    counted = module_bytes(part, module)
    size = DTYPES[base_dtype].itemsize
    kinds = (torch.nn.Linear, torch.nn.Conv2d) if part == "unet" else (torch.nn.Linear,)
    layers = [m.weight.numel() for m in module.modules() if isinstance(m, kinds)]
    rest = counted.total - sum(layers) * size
    return PartBytes(part, (("fp8", sum(layers)), (base_dtype, rest))), max(layers, default=0) * size
