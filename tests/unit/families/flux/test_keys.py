"""Flux.1 state-dict names and detection, pinned on the real topology (meta device) and the tiny model."""

from __future__ import annotations

import pytest
import torch

from lorasmith.errors import ModelError
from lorasmith.families.flux import detect
from lorasmith.families.flux.keys import bfl_to_diffusers, diffusers_to_bfl, strip_prefix, transformer_prefix
from lorasmith.models.configs import shipped_config


def _shapes(state) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _plain(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def real():
    """The real Flux.1-dev and -schnell transformers, AE, CLIP-L and T5-XXL on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    def text(part):
        return {k: v for k, v in shipped_config("flux", part).items() if k not in ("architectures", "model_type")}

    with init_empty_weights():
        config = shipped_config("flux", "transformer")
        dev = FluxTransformer2DModel.from_config(config)
        schnell = FluxTransformer2DModel.from_config({**config, "guidance_embeds": False})
        vae = AutoencoderKL.from_config(shipped_config("flux", "vae"))
        clip = CLIPTextModel(CLIPTextConfig(**text("text_encoder")))
        t5 = T5EncoderModel(T5Config(**text("text_encoder_2")))
    return {"dev": dev.state_dict(), "schnell": schnell.state_dict(), "vae": vae, "clip": clip, "t5": t5}


@pytest.fixture(scope="module")
def tiny():
    from lorasmith.families.flux.tiny import tiny_flux_base_model

    return tiny_flux_base_model("dev", seed=3)


def test_the_real_dev_transformer_has_the_reference_names_shapes_and_size(real):
    bfl = diffusers_to_bfl(real["dev"])
    assert len(bfl) == 780
    assert sum(t.numel() for t in bfl.values()) == 11_901_408_320
    expected = {
        "double_blocks.0.img_attn.qkv.weight": (9216, 3072), "double_blocks.18.txt_attn.qkv.bias": (9216,),
        "double_blocks.0.img_attn.norm.key_norm.scale": (128,), "double_blocks.0.img_mod.lin.weight": (18432, 3072),
        "double_blocks.0.txt_mlp.2.weight": (3072, 12288), "single_blocks.37.linear1.weight": (21504, 3072),
        "single_blocks.0.linear2.weight": (3072, 15360), "single_blocks.0.modulation.lin.weight": (9216, 3072),
        "img_in.weight": (3072, 64), "txt_in.weight": (3072, 4096), "final_layer.linear.weight": (64, 3072),
        "final_layer.adaLN_modulation.1.weight": (6144, 3072), "guidance_in.out_layer.bias": (3072,),
        "vector_in.in_layer.weight": (3072, 768), "time_in.in_layer.weight": (3072, 256),
    }
    assert {k: tuple(bfl[k].shape) for k in expected} == expected
    back = bfl_to_diffusers(bfl)
    assert len(back) == 1160 and _shapes(back) == _shapes(real["dev"])


def test_schnell_has_no_guidance_embedding(real):
    bfl = diffusers_to_bfl(real["schnell"])
    assert len(bfl) == 776 and not any(k.startswith("guidance_in.") for k in bfl)
    assert detect.flux_layout(_shapes(bfl)).variant == "schnell"
    assert detect.flux_layout(_shapes(diffusers_to_bfl(real["dev"]))).variant == "dev"


def test_real_shapes_give_exactly_the_shipped_configs(real):
    from lorasmith.models.convert import text_encoder_state_dict, vae_to_ldm
    from lorasmith.models.ldm_layout import VAE_PREFIX

    for variant, guidance in (("dev", True), ("schnell", False)):
        config = detect.transformer_config(_shapes(diffusers_to_bfl(real[variant])))
        assert config == {**_plain(shipped_config("flux", "transformer")), "guidance_embeds": guidance}
    vae = real["vae"]
    ldm = {k.removeprefix(VAE_PREFIX): v for k, v in vae_to_ldm(vae.state_dict(), dict(vae.config)).items()}
    assert len(ldm) == 244 and sum(t.numel() for t in ldm.values()) == 83_819_683
    assert detect.ae_config(_shapes(ldm)) == _plain(shipped_config("flux", "vae"))
    assert detect.ae_config(_shapes(vae.state_dict())) == _plain(shipped_config("flux", "vae"))  # diffusers names
    clip = {k.removeprefix("text_model."): v for k, v in text_encoder_state_dict(real["clip"]).items()}
    assert len(clip) == 196 and sum(t.numel() for t in clip.values()) == 123_060_480
    assert detect.clip_config(_shapes(clip)) == shipped_config("flux", "text_encoder")
    t5 = real["t5"].state_dict()
    assert len(t5) == 220 and sum(t.numel() for t in t5.values()) == 4_893_906_944
    assert detect.t5_config(_shapes(t5)) == shipped_config("flux", "text_encoder_2")


def test_tiny_shapes_give_the_tiny_configs(tiny):
    config = detect.transformer_config(_shapes(diffusers_to_bfl(tiny.unet.state_dict())))
    model = tiny.unet.config
    for key in ("in_channels", "num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
                "joint_attention_dim", "pooled_projection_dim", "guidance_embeds"):
        assert config[key] == model[key], key
    assert tuple(config["axes_dims_rope"]) == tuple(model["axes_dims_rope"])
    t5 = detect.t5_config(_shapes(tiny.text_encoders[1].state_dict()))
    for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
        assert t5[key] == getattr(tiny.text_encoders[1].config, key), key
    ae = detect.ae_config(_shapes(tiny.vae.state_dict()))
    assert tuple(ae["block_out_channels"]) == tuple(tiny.vae.config["block_out_channels"])
    for key in ("layers_per_block", "latent_channels", "norm_num_groups", "use_quant_conv", "use_post_quant_conv"):
        assert ae[key] == tiny.vae.config[key], key


def test_bfl_round_trip_is_exact_and_splits_are_views(tiny):
    state = tiny.unet.state_dict()
    bfl = diffusers_to_bfl(state)
    shift, scale = bfl["final_layer.adaLN_modulation.1.weight"].chunk(2)
    assert torch.equal(scale, state["norm_out.linear.weight"][: len(scale)])  # diffusers holds (scale, shift)
    assert torch.equal(bfl["double_blocks.0.img_attn.qkv.weight"],
                       torch.cat([state[f"transformer_blocks.0.attn.to_{n}.weight"] for n in "qkv"]))
    back = bfl_to_diffusers(bfl)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    fused = bfl["single_blocks.1.linear1.weight"]
    mlp = back["single_transformer_blocks.1.proj_mlp.weight"]
    assert mlp.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()  # a view, not a copy
    assert mlp.shape[0] == 4 * fused.shape[1]


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "some.merge."])
def test_any_prefix_before_the_bfl_names_is_found_and_stripped(tiny, prefix):
    bfl = {prefix + k: v for k, v in diffusers_to_bfl(tiny.unet.state_dict()).items()}
    others = {"vae.encoder.conv_in.weight": torch.zeros(1)}
    assert transformer_prefix({**bfl, **others}) == prefix
    names = strip_prefix({**bfl, **others})
    assert set(names) == {k[len(prefix):] for k in bfl} and names["img_in.weight"] == prefix + "img_in.weight"
    assert bfl_to_diffusers(bfl).keys() == tiny.unet.state_dict().keys()
    assert strip_prefix(["img_in.weight", "encoder.conv_in.weight"]) == {}


def test_layout_tells_float8_and_refuses_e5m2(tiny):
    bfl = _shapes(diffusers_to_bfl(tiny.unet.state_dict()))
    fp8 = {k: torch.float8_e4m3fn if len(s) == 2 else torch.bfloat16 for k, s in bfl.items()}
    assert detect.flux_layout(bfl, fp8).float8 and not detect.flux_layout(bfl, dict.fromkeys(bfl, "BF16")).float8
    for dtype in (torch.float8_e5m2, "F8_E5M2", torch.float8_e4m3fnuz):
        with pytest.raises(ModelError, match="(?i)e5m2|fnuz") as error:
            detect.flux_layout(bfl, {**fp8, "img_in.weight": dtype}, "x.safetensors")
        assert "pretrained_model_name_or_path" in str(error.value) and "\n" not in str(error.value)


def test_an_all_in_one_file_shows_its_ae_and_text_encoders(tiny):
    from lorasmith.families.flux.tiny_files import _ae_tensors
    from lorasmith.models.convert import text_encoder_state_dict

    shapes = {"model.diffusion_model." + k: s for k, s in _shapes(diffusers_to_bfl(tiny.unet.state_dict())).items()}
    shapes.update({"vae." + k: s for k, s in _shapes(_ae_tensors(tiny.vae)).items()})
    shapes.update({"text_encoders.clip_l.transformer." + k: s
                   for k, s in _shapes(text_encoder_state_dict(tiny.text_encoders[0])).items()})
    shapes.update({"text_encoders.t5xxl.transformer." + k: s
                   for k, s in _shapes(tiny.text_encoders[1].state_dict()).items()})
    layout = detect.flux_layout(shapes)
    assert layout.prefix == "model.diffusion_model." and (layout.num_layers, layout.num_single_layers) == (1, 2)
    assert layout.parts == {"ae": "vae.", "clip_l": "text_encoders.clip_l.transformer.text_model.",
                            "t5xxl": "text_encoders.t5xxl.transformer."}


def test_non_flux_shapes_are_none_and_described():
    assert detect.flux_layout({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}) is None
    assert detect.describe({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}) == \
        "a Stable Diffusion checkpoint"
    assert detect.describe({"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (9216, 16)}) == "a LoRA"
    sd_vae = {"encoder.down.0.block.0.conv1.weight": (8, 8, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}
    assert detect.describe(sd_vae) == "a Stable Diffusion VAE"
