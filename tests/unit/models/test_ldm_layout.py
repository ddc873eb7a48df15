"""diffusers -> original (LDM) UNet module names, pinned by examples and by diffusers' own converter."""

from __future__ import annotations

import pytest

from lorasmith.models.ldm_layout import unet_module_name_to_ldm
from lorasmith.models.configs import shipped_config

SDXL_EXAMPLES = [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
    ("mid_block.attentions.0.proj_in", "middle_block.1.proj_in"),
    ("up_blocks.0.attentions.1.transformer_blocks.0.ff.net.2", "output_blocks.1.1.transformer_blocks.0.ff.net.2"),
    ("down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_out.0", "input_blocks.8.1.transformer_blocks.9.attn2.to_out.0"),
    ("up_blocks.1.attentions.2.proj_out", "output_blocks.5.1.proj_out"),
    ("conv_in", "input_blocks.0.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.2.resnets.2.norm2.weight", "output_blocks.8.0.out_layers.0.weight"),
    ("conv_norm_out.bias", "out.0.bias"),
]


@pytest.mark.parametrize(("diffusers_path", "ldm_path"), SDXL_EXAMPLES)
def test_sdxl_golden_examples(diffusers_path, ldm_path):
    assert unet_module_name_to_ldm(diffusers_path, shipped_config("sdxl", "unet")) == ldm_path


def test_sd1_upsampler_without_attention_goes_to_slot_one():
    config = shipped_config("sd1", "unet")
    assert unet_module_name_to_ldm("up_blocks.0.upsamplers.0.conv", config) == "output_blocks.2.1.conv"
    assert unet_module_name_to_ldm("up_blocks.3.attentions.2.proj_in", config) == "output_blocks.11.1.proj_in"


def test_not_a_unet_path():
    with pytest.raises(ValueError, match="not a module path"):
        unet_module_name_to_ldm("text_model.encoder.layers.0", shipped_config("sd1", "unet"))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("size", ["real", "tiny"])
def test_every_unet_name_inverts_through_diffusers_converter(family, size):
    """Name every parameter in the original layout, then let diffusers' converter map it back."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from lorasmith.models.tiny import tiny_unet_config

    config = shipped_config(family, "unet") if size == "real" else tiny_unet_config(family)
    with init_empty_weights():
        names = list(UNet2DConditionModel.from_config(config).state_dict())
    # Values are the diffusers names themselves: the converter only moves values around.
    ldm = {"model.diffusion_model." + unet_module_name_to_ldm(n, config): n for n in names}
    assert len(ldm) == len(names)
    back = convert_ldm_unet_checkpoint(ldm, config)
    assert back == {n: n for n in names}
