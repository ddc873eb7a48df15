"""Flux.1 (dev and schnell): a diffusion transformer trained by flow matching, as sd-scripts trains it.

The family interface (`lorasmith.families.FamilyBehaviour`) over this package's rooms:

    load.py, keys.py, detect.py   the files users have (BFL single file, ComfyUI prefix, fp8, diffusers
                                  folder; ae / clip_l / t5xxl beside it), read offline
    text.py                       CLIP-L pooled output + T5-XXL states
    objective.py                  latent packing, timestep sampling, the flow-matching loss
    lora_targets.py, lora.py      sd-scripts' networks.lora_flux: BFL module names over diffusers' layers
    merge.py                      a Flux LoRA file merged into the base (samples, generate, evaluate)
    pipeline.py                   diffusers' FluxPipeline over the base's parts
    lora_metadata.py              the ss_* recipe keys and modelspec sd-scripts writes for Flux
    tiny.py, tiny_files.py        a tiny random Flux and its files in every layout, for tests and the demo
"""

from __future__ import annotations

from typing import Any

import torch

from lorasmith.errors import ConfigError
from lorasmith.models.base import BaseModel

DEFAULT_GUIDANCE = 3.5  # FluxPipeline's and sd-scripts' sampling guidance for dev


def prepare_for_training(base: BaseModel, config: Any, train_text_encoder: bool) -> None:
    """Freeze everything; gradient checkpointing where asked. Attention is diffusers' Flux processor, which
    already runs PyTorch's scaled-dot-product attention (sdpa off has no other kernel to choose).
    Low VRAM: fp8 for the transformer and T5 (CLIP-L stays, as sd-scripts), blocks_to_swap."""
    from lorasmith.families.flux.block_swap import enable_block_swap
    from lorasmith.train.low_vram import SWAP, enable_checkpointing, mark_fp8_base

    for module in (base.unet, base.vae, *base.text_encoders):
        module.requires_grad_(False)
    if config.gradient_checkpointing:
        enable_checkpointing(base.unet, config)
        if train_text_encoder:
            for encoder in base.text_encoders:
                enable = (getattr(encoder, "activation_checkpointing_enable", None)
                          or encoder.gradient_checkpointing_enable)  # transformers 5 renamed it
                enable()
    base.unet.train()
    for encoder in base.text_encoders:
        encoder.train(train_text_encoder)
    mark_fp8_base(base, config, list(base.text_encoders[1:]), convs=False)
    earlier = getattr(base.unet, SWAP, None)
    if earlier is not None:  # a base trained before in this process
        earlier.remove()
        delattr(base.unet, SWAP)
    if config.blocks_to_swap:
        setattr(base.unet, SWAP, enable_block_swap(base.unet, config.blocks_to_swap))


def network_spec(config: Any) -> Any:
    from lorasmith.families.flux.lora import FluxLoraSpec

    module = config.network_module.strip()
    if module not in ("networks.lora_flux", "networks.lora"):
        raise ConfigError(f"network_module {module} is not trained on Flux.1 by lorasmith yet; set network_module "
                          "networks.lora_flux (kohya_ss LoRA_type Flux1)")
    return FluxLoraSpec.from_config(config)


def create_network(base: BaseModel, spec: Any) -> Any:
    from lorasmith.families.flux.lora import create_flux_lora_network

    return create_flux_lora_network(base, spec)


def encode_captions(base: BaseModel, captions: list[str], config: Any) -> Any:
    from lorasmith.families.flux.text import encode_flux_captions

    return encode_flux_captions(base, captions, config.t5xxl_max_token_length, config.apply_t5_attn_mask)


def training_recipe(config: Any) -> Any:
    """sd-scripts' Flux recipe; the SNR weightings of the DDPM families do not apply (noted by `losing_settings`)."""
    from dataclasses import replace

    from lorasmith.families.flux.objective import FlowRecipe, check_flux_loss
    from lorasmith.train.step import LossRecipe

    loss = replace(LossRecipe.from_config(config), min_snr_gamma=0.0, debiased_estimation=False)
    check_flux_loss(loss)
    return FlowRecipe.from_config(config), loss


def training_loss(base: BaseModel, latents: torch.Tensor, text: Any, batch: Any, generator: torch.Generator,
                  recipe: Any) -> torch.Tensor:
    from lorasmith.families.flux.objective import draw_flow, flow_loss

    flow, loss = recipe
    draw = draw_flow(latents, generator, flow)
    return flow_loss(base, latents, text, draw, flow, loss, sample_weights=batch.weights, loss_mask=batch.masks)


def fixed_loss(base: BaseModel, latents: torch.Tensor, context: torch.Tensor, draw: Any,
               pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> torch.Tensor:
    """The plain flow-matching loss (raw prediction, uniform weights) at sigma = timestep / 1000, guidance
    1.0 (what dev is trained with): comparable between epochs whatever the run's recipe."""
    from lorasmith.families.flux.objective import FlowDraw, FlowRecipe, flow_loss
    from lorasmith.models.text import TextEmbeddings

    flow = FlowRecipe(model_prediction_type="raw", guidance_scale=1.0)
    return flow_loss(base, latents, TextEmbeddings(context, pooled), FlowDraw.at(draw.noise, draw.timesteps), flow)


def encode_prompts(base: BaseModel, prompts: list[str], clip_skip: int, max_token_length: int) -> Any:
    from lorasmith.families.flux.text import encode_flux_captions

    return encode_flux_captions(base, prompts)  # clip_skip and CLIP's long prompts do not apply to Flux


def run_pipeline(base: BaseModel, request: Any, precision: str) -> list:
    """Flux images of a request: `guidance` is dev's distilled guidance (3.5 unless given; schnell has none);
    the negative prompt and cfg_scale (true CFG) are not used, as in sd-scripts' Flux samples by default."""
    from lorasmith.families.flux.pipeline import generate_flux_images
    from lorasmith.sampling.generate import eval_mode

    guidance = DEFAULT_GUIDANCE if request.guidance is None else request.guidance
    seeds = [request.seed + i for i in range(request.batch_size)]
    with eval_mode(base), torch.no_grad():
        return generate_flux_images(base, [request.prompt] * request.batch_size, width=request.width,
                                    height=request.height, steps=request.steps, guidance_scale=guidance, seeds=seeds)


def metadata(config: Any, base_info: dict) -> dict[str, str | None]:
    from lorasmith.families.flux.lora_metadata import flux_metadata

    return flux_metadata(config, base_info)


def apply_loras(base: BaseModel, loras: list) -> Any:
    from lorasmith.families.flux.merge import merge_flux_loras

    return merge_flux_loras(base, loras)


def lora_file_bytes(family_name: str, config: Any, configs: dict | None) -> int:
    from lorasmith.families.flux.lora_metadata import flux_lora_file_bytes

    return flux_lora_file_bytes(config, configs)
