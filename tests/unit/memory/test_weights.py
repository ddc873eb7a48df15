"""The meta model's weights are the real model's, byte for byte, in the trainer's dtypes."""

from __future__ import annotations

import json

import pytest

from lorasmith.memory.weights import base_part_bytes, module_bytes

from .conftest import real_tiny, tiny_configs


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("mixed_precision", ["no", "fp16"])
def test_part_bytes_equal_the_real_models(family, mixed_precision):
    base = real_tiny(family, mixed_precision)
    real = [module_bytes("unet", base.unet)]
    real += [module_bytes(part, encoder) for part, encoder in zip(("text_encoder", "text_encoder_2"),
                                                                   base.text_encoders)]
    real.append(module_bytes("vae", base.vae))
    dtype = "fp16" if mixed_precision == "fp16" else "fp32"
    planned = base_part_bytes(family, json.dumps(tiny_configs(family), default=list), dtype)
    assert planned == tuple(real)
    counted = sum(t.numel() * t.element_size() for t in [*base.unet.parameters(), *base.unet.buffers()])
    assert planned[0].total == counted


def test_the_real_sdxl_architecture_is_counted_without_weights():
    unet, *_ = base_part_bytes("sdxl", None, "fp16")
    assert unet.by_dtype == (("fp16", 2 * 2_567_463_684),)  # SDXL base's UNet parameter count
