"""The shipped configs build the real architectures: parameter counts measured on the real models."""

from __future__ import annotations

import pytest

from lorasmith.models.configs import PARTS, shipped_config

# SD1.5 from sd-scripts' model (peers.md); SD2 and SDXL as diffusers ships them.
COUNTS = {
    ("sd1", "unet"): 859_520_964,
    ("sd1", "vae"): 83_653_863,
    ("sd1", "text_encoder"): 123_060_480,
    ("sd2", "unet"): 865_910_724,
    ("sd2", "vae"): 83_653_863,
    ("sd2", "text_encoder"): 340_387_840,  # OpenCLIP ViT-H, 23 of its 24 layers
    ("sdxl", "unet"): 2_567_463_684,
    ("sdxl", "vae"): 83_653_863,
    ("sdxl", "text_encoder"): 123_060_480,
    ("sdxl", "text_encoder_2"): 694_659_840,  # OpenCLIP bigG with its 1280 projection
    ("flux", "transformer"): 11_901_408_320,  # BFL's flux1-dev.safetensors (shared/reference/flux-lora-format.md)
    ("flux", "vae"): 83_819_683,  # ae.safetensors
    ("flux", "text_encoder"): 123_060_480,  # clip_l.safetensors
    ("flux", "text_encoder_2"): 4_893_906_944,  # T5-XXL as t5xxl_fp16.safetensors counts it (shared and embed_tokens)
}


def _build(family: str, part: str):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = shipped_config(family, part)
    with init_empty_weights():
        if part == "transformer":
            from diffusers import FluxTransformer2DModel

            return FluxTransformer2DModel.from_config(config)
        if family == "flux" and part == "text_encoder_2":
            from transformers import T5EncoderModel

            from lorasmith.families.flux.meta import t5_config

            return T5EncoderModel(t5_config(config))
        if part == "unet":
            return UNet2DConditionModel.from_config(config)
        if part == "vae":
            return AutoencoderKL.from_config(config)
        cls = CLIPTextModelWithProjection if part == "text_encoder_2" else CLIPTextModel
        return cls(CLIPTextConfig(**config))


@pytest.mark.parametrize(("family", "part"), list(COUNTS))
def test_meta_device_parameter_counts(family, part):
    model = _build(family, part)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == COUNTS[family, part]


def test_every_part_has_a_config():
    assert {(f, p) for f, parts in PARTS.items() for p in parts if p != "scheduler"} == set(COUNTS)


def test_unknown_part():
    with pytest.raises(ValueError, match="no shipped config"):
        shipped_config("sd1", "text_encoder_2")
