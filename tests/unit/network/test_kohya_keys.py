"""Golden tests: kohya key names per family, and the real SD1.5 architecture against the reference file."""

from __future__ import annotations

import pytest

from lorasmith.models.families import SD1, SD2, SDXL
from lorasmith.network.kohya_keys import key_table, kohya_key
from lorasmith.network.targets import lora_targets

SDXL_CONFIG = {"layers_per_block": 2, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}


@pytest.mark.parametrize("family, component, path, key", [
    (SD1, "unet", "down_blocks.0.attentions.0.proj_in", "lora_unet_down_blocks_0_attentions_0_proj_in"),
    (SD1, "unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
     "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj"),
    (SD2, "unet", "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0",
     "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_out_0"),
    (SD1, "text_encoder", "encoder.layers.0.self_attn.q_proj", "lora_te_text_model_encoder_layers_0_self_attn_q_proj"),
    (SD1, "text_encoder", "text_model.encoder.layers.0.mlp.fc1", "lora_te_text_model_encoder_layers_0_mlp_fc1"),
    (SDXL, "text_encoder", "encoder.layers.3.mlp.fc2", "lora_te1_text_model_encoder_layers_3_mlp_fc2"),
    (SDXL, "text_encoder_2", "text_model.encoder.layers.31.self_attn.out_proj",
     "lora_te2_text_model_encoder_layers_31_self_attn_out_proj"),
    (SDXL, "unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
     "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
    (SDXL, "unet", "mid_block.attentions.0.proj_in", "lora_unet_middle_block_1_proj_in"),
    (SDXL, "unet", "up_blocks.1.attentions.2.proj_out", "lora_unet_output_blocks_5_1_proj_out"),
    (SDXL, "unet", "down_blocks.0.resnets.1.conv1", "lora_unet_input_blocks_2_0_in_layers_2"),
    (SDXL, "unet", "down_blocks.0.downsamplers.0.conv", "lora_unet_input_blocks_3_0_op"),
])
def test_kohya_key_golden(family, component, path, key):
    assert kohya_key(family, component, path, SDXL_CONFIG) == key


def test_reverse_table_maps_ambiguous_underscores_by_the_models_own_names(tiny):
    base = tiny("sd1")
    table = key_table(base)
    ref = table["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"]
    assert (ref.component, ref.path) == ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0")
    ref = table["lora_te_text_model_encoder_layers_2_self_attn_out_proj"]
    assert ref.component == "text_encoder" and ref.path.endswith("encoder.layers.2.self_attn.out_proj")
    # Every Linear/Conv2d is addressable (LyCORIS-style files may name time_emb_proj etc.).
    assert "lora_unet_down_blocks_0_resnets_0_time_emb_proj" in table
    assert "lora_unet_conv_in" in table


def test_tiny_sdxl_keys_use_the_original_layout_and_two_text_encoders(tiny):
    base = tiny("sdxl")
    keys = {t.ref.key for t in lora_targets(base.family, base.unet, base.text_encoders)}
    assert "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k" in keys
    assert "lora_unet_middle_block_1_proj_out" in keys
    assert "lora_unet_output_blocks_0_1_transformer_blocks_0_ff_net_2" in keys
    assert not any("down_blocks" in k or "mid_block" in k or "up_blocks" in k for k in keys)
    assert {k.split("_text_model")[0] for k in keys if k.startswith("lora_te")} == {"lora_te1", "lora_te2"}


@pytest.fixture(scope="module")
def sd15_meta():
    """The real SD1.5 UNet and CLIP ViT-L/14 text encoder, on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorasmith.models.base import BaseModel

    with init_empty_weights():
        unet = UNet2DConditionModel(cross_attention_dim=768)  # diffusers' defaults are SD1.5's otherwise
        encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                               intermediate_size=3072, hidden_act="quick_gelu"))
    return BaseModel(family=SD1, v_prediction=False, unet=unet, vae=None, text_encoders=[encoder],
                     tokenizers=[], noise_scheduler=None)


def test_acceptance_sd15_rank32_matches_the_reference_sd_scripts_file(sd15_meta):
    from lorasmith.network.lora import LoraSpec, create_lora_network
    from lorasmith.network.size import METADATA_BYTES_ESTIMATE, tensor_index_bytes

    network = create_lora_network(sd15_meta, LoraSpec(rank=32, alpha=16))
    tensors = network.kohya_state_dict()  # meta tensors: shapes and dtypes, no bytes
    assert len(tensors) == 792 and network.modules_count() == 264
    assert sum(k.startswith("lora_unet_") for k in tensors) == 192 * 3
    assert sum(k.startswith("lora_te_") for k in tensors) == 72 * 3
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    assert shapes["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] == (32, 768)
    assert shapes["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] == (3072, 32)
    assert shapes["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"] == (32, 320, 1, 1)
    assert shapes["lora_unet_down_blocks_0_attentions_0_proj_out.lora_up.weight"] == (320, 32, 1, 1)
    assert shapes["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"] == (32, 320)
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_up.weight" in shapes
    assert all(shapes[k] == () for k in tensors if k.endswith(".alpha"))
    assert all(str(v.dtype) == "torch.float16" for v in tensors.values())
    data = sum(v.numel() * v.element_size() for v in tensors.values())
    # 589,824 = sum of (in + out) over the 264 layers; +2 bytes per alpha.
    assert data == 32 * 589_824 * 2 + 264 * 2
    # The reference file is 37,864,328 bytes: 8 + header + data, the header being the tensor
    # index (sized exactly here) plus about 3 KB of sd-scripts metadata.
    header = 37_864_328 - 8 - data
    assert 110_000 < header < 116_000
    index = tensor_index_bytes(shapes, "fp16")
    assert abs(header - index - METADATA_BYTES_ESTIMATE) < 100
