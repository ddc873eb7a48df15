"""Flux.1 in the planner: the step on meta tensors against the same step on real tensors, the fit from
cut-down models against a direct measurement, and the fp8 and block-swap weights against the real tiny model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from lorasmith.config.schema import TrainConfig
from lorasmith.memory import flux
from lorasmith.memory.flux_estimate import estimate_flux_memory


def tiny_flux_configs(double: int = 1, single: int = 2, t5_layers: int = 2) -> dict:
    from lorasmith.families.flux.tiny import tiny_flux_transformer_config, tiny_flux_vae_config, tiny_t5_config
    from lorasmith.models.tiny import tiny_text_config

    transformer = {**tiny_flux_transformer_config(), "num_layers": double, "num_single_layers": single}
    return {"transformer": transformer, "vae": tiny_flux_vae_config(),
            "text_encoder": tiny_text_config("sd1", 0), "text_encoder_2": {**tiny_t5_config(), "num_layers": t5_layers}}


def flux_config(**settings) -> TrainConfig:
    return replace(TrainConfig(network_module="networks.lora_flux", network_dim=4, network_alpha=4, train_batch_size=2,
                               resolution="128,128", mixed_precision="bf16", t5xxl_max_token_length=32), **settings)


def real_tiny_flux(configs: dict):
    """The real model of `configs` with random weights (the tiny Flux's parts, their depth from `configs`)."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lorasmith.families.flux.tiny import tiny_flux_base_model

    base = tiny_flux_base_model()
    torch.manual_seed(0)
    base.unet = FluxTransformer2DModel(**configs["transformer"])
    base.text_encoders = [CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
                          T5EncoderModel(T5Config(**configs["text_encoder_2"]))]
    base.vae = torch.nn.Module()
    return base


SETTINGS = {
    "checkpointing, text cached": {"gradient_checkpointing": True, "cache_text_encoder_outputs": True,
                                   "network_train_unet_only": True},
    "no checkpointing, T5 frozen, batch 3": {"network_train_unet_only": True, "train_batch_size": 3},
    "CLIP-L trained, full_bf16": {"full_bf16": True},
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_planned_flux_step_matches_the_real_step(name):
    config = flux_config(**SETTINGS[name])
    configs = tiny_flux_configs()
    real = flux.tracked_flux_step(real_tiny_flux(configs), config, (128, 128))
    planned = flux.tracked_flux_step(flux.cut_base(json.dumps(configs), (1, 2, 2)), config, (128, 128))
    assert planned.peak == pytest.approx(real.peak, rel=0.10)
    assert planned.lora_bytes == real.lora_bytes and planned.trainable_shapes == real.trainable_shapes


@pytest.mark.parametrize("name", list(SETTINGS)[:2])
def test_the_fit_from_cut_models_matches_a_direct_measurement(name):
    config = flux_config(**SETTINGS[name])
    configs_json = json.dumps(tiny_flux_configs())
    depth = (3, 4, 3)
    direct = flux.tracked_flux_step(flux.cut_base(configs_json, depth), config, (128, 128)).peak
    fitted = flux.fitted_peak(configs_json, (128, 128), flux.flux_step_key(config), depth,
                              not config.cache_text_encoder_outputs, offload=False)
    assert fitted == pytest.approx(direct, rel=0.10)


def test_fp8_and_block_swap_weights_match_the_real_model():
    configs = tiny_flux_configs(double=4, single=6)
    real = real_tiny_flux(configs).unet.to(torch.bfloat16)
    for module in real.modules():  # fp8_base: every linear weight stored in float8_e4m3fn
        if isinstance(module, torch.nn.Linear):
            module.weight.data = module.weight.data.to(torch.float8_e4m3fn)
    stored = sum(t.numel() * t.element_size() for t in real.parameters())
    config = flux_config(fp8_base=True, cache_latents=True, cache_text_encoder_outputs=True,
                         network_train_unet_only=True)
    def transformer(estimate):
        return next(part.bytes for part in estimate.training if part.name == "transformer")

    plain = estimate_flux_memory(config, configs)
    assert transformer(plain) == stored
    # blocks_to_swap 4: 2 double and 4 single blocks on the CPU, two blocks in flight (sd-scripts' split)
    assert flux.swapped_blocks(4, 4, 6) == (2, 4)
    block_bytes = [sum(t.numel() * t.element_size() for t in block.parameters())
                   for block in (*real.transformer_blocks[:2], *real.single_transformer_blocks[:4])]
    swapped = estimate_flux_memory(replace(config, blocks_to_swap=4), configs)
    in_flight = 2 * max(block_bytes[0], block_bytes[-1])
    assert transformer(swapped) == stored - sum(block_bytes) + in_flight
    assert flux.swapped_blocks(35, 19, 38) == (17, 36)


def test_flux_text_caching_is_its_own_phase_and_frees_the_encoders():
    configs = tiny_flux_configs()
    cached = estimate_flux_memory(flux_config(cache_text_encoder_outputs=True, network_train_unet_only=True), configs)
    assert next(p for p in cached.training if p.name == "text encoders").bytes == 0
    frozen = estimate_flux_memory(flux_config(network_train_unet_only=True, cache_latents=False), configs)
    assert next(p for p in frozen.training if p.name == "text encoders").bytes > 0 and frozen.caching is None
    cached = estimate_flux_memory(flux_config(cache_text_encoder_outputs=True, network_train_unet_only=True,
                                              cache_latents=False), configs)
    assert cached.caching_label == "caching text-encoder outputs"
    assert sum(p.bytes for p in cached.caching) > next(p for p in cached.caching if p.name == "text encoders").bytes


def test_flux_text_caching_peak_follows_the_captions_encoded_at_a_time():
    configs = tiny_flux_configs()

    def caching(**settings):
        estimate = estimate_flux_memory(flux_config(cache_text_encoder_outputs=True, network_train_unet_only=True,
                                                    cache_latents=False, **settings), configs)
        return next(p for p in estimate.caching if p.name == "activations")

    one, eight = caching(train_batch_size=1), caching(train_batch_size=1, text_encoder_batch_size=8)
    assert "1 caption(s) at a time" in one.detail and "8 caption(s) at a time" in eight.detail
    assert eight.bytes > 4 * one.bytes
    assert caching(train_batch_size=8).bytes == eight.bytes  # by default the batch size, as sd-scripts
