"""The planner's step on meta tensors allocates what the same step allocates with real tensors.

The real run is the tiny model with random weights on the CPU, under the same tracking and CUDA rules;
the planner builds the same architecture on the meta device from its configs. They must agree within
10 % (they agree within 1 %: the attention kernels differ, CUDA's flash on meta and the CPU's flash).
"""

from __future__ import annotations

import json

import pytest

from lorasmith.memory import measure
from lorasmith.memory.estimate import STEP_FIELDS, _frozen, largest_bucket
from lorasmith.memory.weights import base_dtype_for

from .conftest import real_tiny, tiny_config, tiny_configs

SETTINGS = {  # each a few seconds for the two runs: the ones that change the step's shape most
    "fp32": {},
    "fp16 + checkpointing": {"mixed_precision": "fp16", "gradient_checkpointing": True},
    "bf16, LoCon, batch 3, accumulation, text encoders frozen": {
        "mixed_precision": "bf16", "conv_dim": 4, "train_batch_size": 3, "gradient_accumulation_steps": 2,
        "network_train_unet_only": True},
}


def planned_step(family: str, config):
    key = tuple((name, _frozen(getattr(config, name))) for name in STEP_FIELDS)
    return measure.step(family, json.dumps(tiny_configs(family), default=list),
                        base_dtype_for(config.mixed_precision), largest_bucket(config), key)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_planned_step_matches_the_real_step(family, name, measured_real):
    config = tiny_config(**SETTINGS[name])
    real = measured_real(family, config)
    planned = planned_step(family, config)
    assert planned.peak == pytest.approx(real.peak, rel=0.10)
    assert planned.gradient_bytes == real.gradient_bytes
    assert planned.lora_bytes == real.lora_bytes
    assert planned.trainable_shapes == real.trainable_shapes


@pytest.mark.parametrize("mixed_precision", ["no", "fp16"])
def test_planned_vae_encoding_matches_the_real_one(mixed_precision):
    from lorasmith.memory.activations import tracked_encode

    base = real_tiny("sd1", mixed_precision)
    real = tracked_encode(base.vae, (128, 128), 2, base.family.latent_scale)
    planned = measure.encode("sd1", json.dumps(tiny_configs("sd1"), default=list),
                             base_dtype_for(mixed_precision), (128, 128), 2)
    assert planned.upcast == real.upcast == (mixed_precision == "fp16")  # diffusers' force_upcast default
    assert planned.bytes == pytest.approx(real.bytes, rel=0.10)
