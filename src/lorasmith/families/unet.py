"""SD1.x, SD2.x and SDXL: UNets with a DDPM noise objective and CLIP text encoders.

The work itself lives where it always did (models/text.py, train/step.py, network/, sampling/);
this module is the family interface over it (see `lorasmith.families.FamilyBehaviour`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lorasmith.models.base import BaseModel
from lorasmith.train.step import LossRecipe, NoiseRecipe, denoising_loss, draw_noise


def prepare_for_training(base: BaseModel, config: Any, train_text_encoder: bool) -> None:
    from lorasmith.errors import ConfigError
    from lorasmith.train.low_vram import mark_fp8_base
    from lorasmith.train.setup import prepare_base_for_training

    if config.blocks_to_swap:
        raise ConfigError(f"blocks_to_swap {config.blocks_to_swap} swaps Flux.1 transformer blocks, and this is a "
                          "Stable Diffusion model; set blocks_to_swap 0 (try fp8_base or gradient_checkpointing)")
    prepare_base_for_training(base, config, train_text_encoder)
    mark_fp8_base(base, config, list(base.text_encoders), convs=True)  # sd-scripts: the UNet and the CLIPs


def network_spec(config: Any) -> Any:
    from lorasmith.errors import ConfigError
    from lorasmith.network.create import network_spec as spec_of

    if config.network_module.strip() == "networks.lora_flux":
        raise ConfigError("network_module networks.lora_flux trains Flux.1 models, and this is a Stable Diffusion "
                          "model; set network_module networks.lora, or give a Flux.1 model")
    return spec_of(config)


def create_network(base: BaseModel, spec: Any) -> Any:
    from lorasmith.network.create import create_network as create

    return create(base, spec)


def encode_captions(base: BaseModel, captions: list[str], config: Any) -> Any:
    """CLIP states as the family was trained (clip_skip, long captions); weighted_captions scales each
    token's state by its weight."""
    from lorasmith.models.text import encode_tokens, tokenize

    if not config.weighted_captions:
        return encode_tokens(base, tokenize(base, captions, config.max_token_length), config.clip_skip)
    from dataclasses import replace

    from lorasmith.models.weighted_text import tokenize_weighted

    ids, weights = tokenize_weighted(base, captions, config.max_token_length)
    text = encode_tokens(base, ids, config.clip_skip)
    weights = weights.to(text.context.device, text.context.dtype)
    return replace(text, context=text.context * weights[..., None])


@dataclass(frozen=True)
class UnetRecipe:
    noise: NoiseRecipe
    loss: LossRecipe


def training_recipe(config: Any) -> UnetRecipe:
    return UnetRecipe(NoiseRecipe.from_config(config), LossRecipe.from_config(config))


def training_loss(base: BaseModel, latents: torch.Tensor, text: Any, batch: Any, generator: torch.Generator,
                  recipe: UnetRecipe) -> torch.Tensor:
    draw = draw_noise(latents, base.noise_scheduler.config.num_train_timesteps, generator, recipe.noise)
    return denoising_loss(base, latents, text.context, draw, text.pooled, batch.time_ids, batch.weights,
                          recipe.loss, batch.masks)


def fixed_loss(base: BaseModel, latents: torch.Tensor, context: torch.Tensor, draw: Any,
               pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> torch.Tensor:
    return denoising_loss(base, latents, context, draw, pooled, time_ids)


def encode_prompts(base: BaseModel, prompts: list[str], clip_skip: int, max_token_length: int) -> Any:
    from lorasmith.models.text import encode_prompts as encode

    return encode(base, prompts, clip_skip, max_token_length)


def run_pipeline(base: BaseModel, request: Any, precision: str) -> list:
    from lorasmith.sampling.generate import run_unet_pipeline

    return run_unet_pipeline(base, request, precision)


def metadata(config: Any, base_info: dict) -> dict[str, str]:
    return {}  # the common keys are the UNet families' own (network/metadata.py)


def apply_loras(base: BaseModel, loras: list) -> Any:
    from lorasmith.network.apply import apply_kohya_loras

    return apply_kohya_loras(base, loras)


def lora_file_bytes(family_name: str, config: Any, configs: dict | None) -> int:
    from lorasmith.network.size import estimate_lora_bytes

    return estimate_lora_bytes(
        family_name, config.network_dim, conv_rank=config.conv_dim,
        train_unet=not config.network_train_text_encoder_only,
        train_text_encoder=not config.network_train_unet_only, save_precision=config.save_precision,
        configs=configs,
    )
