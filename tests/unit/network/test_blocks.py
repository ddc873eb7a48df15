"""Block-wise weights as sd-scripts' networks.lora numbers and reads them: lr per group, dims and alphas per block."""

from __future__ import annotations

import math

import pytest
import torch

from lorasmith.errors import ConfigError
from lorasmith.models.tiny import tiny_base_model
from lorasmith.network.blocks import BlockWeights, block_count, block_index
from lorasmith.network.lora import LoraSpec, create_lora_network


@pytest.mark.parametrize("key, sdxl, index", [
    ("lora_unet_down_blocks_0_attentions_0_proj_in", False, 1),
    ("lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn1_to_q", False, 5),
    ("lora_unet_down_blocks_2_downsamplers_0_conv", False, 9),
    ("lora_unet_mid_block_attentions_0_proj_out", False, 12),
    ("lora_unet_up_blocks_1_attentions_0_proj_in", False, 16),
    ("lora_unet_up_blocks_3_resnets_2_conv1", False, 24),
    ("lora_unet_input_blocks_4_1_proj_in", True, 5),
    ("lora_unet_middle_block_1_proj_in", True, 11),
    ("lora_unet_output_blocks_8_1_proj_out", True, 21),
])
def test_blocks_are_numbered_as_sd_scripts_numbers_them(key, sdxl, index):
    assert block_index(key, sdxl) == index
    assert (block_count(False), block_count(True)) == (25, 23)


def test_lr_weight_presets_padding_and_the_zero_threshold():
    cosine = BlockWeights.parse({"down_lr_weight": "cosine"}, sdxl=False).lr_weights
    assert len(cosine) == 25 and cosine[0] == pytest.approx(1.0) and cosine[11] == pytest.approx(0.0)
    assert cosine[12:] == (1.0,) * 13  # mid and up untouched
    linear = BlockWeights.parse({"up_lr_weight": "linear+0.5"}, sdxl=False).lr_weights
    assert linear[13] == pytest.approx(0.5) and linear[24] == pytest.approx(1.5)
    short = BlockWeights.parse({"down_lr_weight": "0.5,0.5", "block_lr_zero_threshold": "0.6"}, sdxl=False)
    assert short.lr_weights[:3] == (0.0, 0.0, 1.0)  # filled with 1.0; at or below the threshold: 0
    sdxl = BlockWeights.parse({"mid_lr_weight": "0,1,1"}, sdxl=True).lr_weights
    assert len(sdxl) == 23 and sdxl[10] == 0.0 and sdxl[0] == sdxl[22] == 1.0
    assert math.isclose(BlockWeights.parse({"down_lr_weight": "sine"}, sdxl=True).lr_weights[9], 1.0)
    with pytest.raises(ConfigError, match="block_dims needs 25 values .* got 3"):
        BlockWeights.parse({"block_dims": "4,4,4"}, sdxl=False)
    with pytest.raises(ConfigError, match="lr weight preset 'wavy' is not known"):
        BlockWeights.parse({"down_lr_weight": "wavy"}, sdxl=False)


def test_block_dims_alphas_and_lr_weights_reach_the_keys_shapes_and_parameter_groups():
    dims = ["4"] * 25
    dims[1], dims[16] = "2", "6"
    alphas = ["1"] * 25
    alphas[12] = "3"
    up = ",".join(["1"] * 4 + ["0"] + ["1"] * 7)  # up block 17 (up_blocks_1_attentions_1) learns nothing
    spec = LoraSpec(rank=8, alpha=4, block_args=(("block_dims", ",".join(dims)), ("block_alphas", ",".join(alphas)),
                                                   ("down_lr_weight", "1,0.5"), ("up_lr_weight", up)))
    network = create_lora_network(tiny_base_model("sd1"), spec)
    tensors = network.kohya_state_dict(torch.float32)
    q = "transformer_blocks_0_attn1_to_q"
    assert tensors[f"lora_unet_down_blocks_0_attentions_0_{q}.lora_down.weight"].shape[0] == 2  # block 1
    assert tensors[f"lora_unet_up_blocks_1_attentions_0_{q}.lora_down.weight"].shape[0] == 6  # block 16
    assert float(tensors["lora_unet_mid_block_attentions_0_proj_in.alpha"]) == 3.0  # block 12
    assert not any(key.startswith("lora_unet_up_blocks_1_attentions_1_") for key in tensors)  # lr weight 0
    assert tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"].shape[0] == 8
    groups = {g["name"]: g["lr"] for g in network.param_groups(1e-4, 5e-5)}
    assert groups == {"textencoder": 5e-5, "unet_block1": 5e-5, "unet_block12": 1e-4, "unet_block16": 1e-4}
