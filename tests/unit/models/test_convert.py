"""diffusers -> original -> diffusers is exact, with diffusers' own converter as the way back."""

from __future__ import annotations

import pytest
import torch

from lorasmith.models import convert
from lorasmith.models.configs import shipped_config


def _assert_same(converted: dict, expected: dict) -> None:
    assert converted.keys() == expected.keys()
    for key, value in expected.items():
        assert converted[key].shape == value.shape, key
        if value.device.type != "meta":
            assert torch.equal(converted[key], value), key


def _round_trip(base) -> None:
    ldm = convert.base_model_to_ldm(base)
    _assert_same(convert.unet_from_ldm(ldm, dict(base.unet.config)), base.unet.state_dict())
    _assert_same(convert.vae_from_ldm(ldm, dict(base.vae.config)), base.vae.state_dict())
    for index, encoder in enumerate(base.text_encoders):
        back = convert.text_encoder_from_ldm(ldm, base.family.name, index, encoder)
        _assert_same(back, convert.text_encoder_state_dict(encoder))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_round_trip_is_exact(tiny_models, family):
    _round_trip(tiny_models(family))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_real_architecture_round_trip_on_meta(family):
    """Every name and shape of the real architectures survives the round trip (no weights needed)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lorasmith.models.base import BaseModel
    from lorasmith.models.families import get_family

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(shipped_config(family, "unet"))
        vae = AutoencoderKL.from_config(shipped_config(family, "vae"))
        encoders = [CLIPTextModel(CLIPTextConfig(**shipped_config(family, "text_encoder")))]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**shipped_config(family, "text_encoder_2"))))
    base = BaseModel(get_family(family), False, unet, vae, encoders, [], DDPMScheduler())
    _round_trip(base)


def test_real_layout_key_names_and_shapes():
    """Spot checks against names and shapes of the published checkpoints."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        sd2 = CLIPTextModel(CLIPTextConfig(**shipped_config("sd2", "text_encoder")))
        big_g = CLIPTextModelWithProjection(CLIPTextConfig(**shipped_config("sdxl", "text_encoder_2")))
    ldm = convert.text_encoder_to_ldm("sd2", 0, sd2)
    # SD2 files carry OpenCLIP's 24 layers and a text projection; diffusers keeps 23.
    assert ldm["cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"].shape == (3072, 1024)
    assert ldm["cond_stage_model.model.text_projection"].shape == (1024, 1024)
    assert ldm["cond_stage_model.model.positional_embedding"].shape == (77, 1024)
    ldm = convert.text_encoder_to_ldm("sdxl", 1, big_g)
    assert ldm["conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc.weight"].shape == (5120, 1280)
    assert ldm["conditioner.embedders.1.model.text_projection"].shape == (1280, 1280)
    assert "conditioner.embedders.1.model.transformer.resblocks.32.ln_1.weight" not in ldm


def test_vae_attention_is_a_1x1_convolution_in_the_original_layout(tiny_models):
    base = tiny_models("sd1")
    ldm = convert.vae_to_ldm(base.vae.state_dict(), dict(base.vae.config))
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].dim() == 4
    assert ldm["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape[2:] == (1, 1)
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in ldm  # the bottom level does not upsample
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in ldm
