"""Tiny models for the planner's tests: the same architecture built real (to measure) and on meta (to plan)."""

from __future__ import annotations

import pytest


def tiny_configs(family: str) -> dict:
    """The tiny model's architecture, as a checkpoint written by lorasmith carries it."""
    from lorasmith.models.tiny import tiny_text_config, tiny_unet_config, tiny_vae_config

    configs = {"unet": tiny_unet_config(family), "vae": tiny_vae_config(), "text_encoder": tiny_text_config(family, 0)}
    if family == "sdxl":
        configs["text_encoder_2"] = tiny_text_config(family, 1)
    return configs


def tiny_config(**settings):
    """A TrainConfig at the tiny models' scale (rank 4), with `settings` on top."""
    from dataclasses import replace

    from lorasmith.config.schema import TrainConfig

    return replace(TrainConfig(network_dim=4, network_alpha=2, train_batch_size=2, resolution="128,128"), **settings)


def real_tiny(family: str, mixed_precision: str = "no"):
    """The real tiny model with random weights, its frozen weights in the dtype the trainer gives them."""
    import torch

    from lorasmith.memory.weights import DTYPES, base_dtype_for
    from lorasmith.models.tiny import tiny_base_model

    base = tiny_base_model(family)
    dtype = DTYPES[base_dtype_for(mixed_precision)]
    for module in (base.unet, base.vae, *base.text_encoders):
        for tensor in [*module.parameters(), *module.buffers()]:  # module.to() would warn about fp32 modules
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(dtype)
    torch.manual_seed(0)
    return base


@pytest.fixture
def measured_real():
    """measured_real(family, config) -> activations.StepMeasure of the real tiny model's step."""
    from lorasmith.memory.activations import inject_network, tracked_step
    from lorasmith.memory.estimate import largest_bucket

    def measure(family: str, config):
        base = real_tiny(family, config.mixed_precision)
        network = inject_network(base, config)
        return tracked_step(base, network, config, largest_bucket(config))

    return measure
