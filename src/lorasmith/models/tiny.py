"""Tiny models of each family, built from configs with random weights.

They have every kind of module the real architectures have (cross-attention transformer
blocks, 1x1 proj_in/proj_out in SD1.x, linear projections in SD2.x/SDXL, SDXL's two text
encoders and micro-conditioning) at a size that trains on a CPU in seconds. The demo trains
one; the tests build them in-process. The tokenizer is the real CLIP tokenizer.
"""

from __future__ import annotations

from lorasmith.models.base import BaseModel
from lorasmith.models.families import get_family
from lorasmith.models.tokenizer import clip_tokenizer

TEXT_WIDTH = 32


def tiny_unet_config(family: str) -> dict:
    common = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8,
    )
    if family == "sd1":
        return dict(common, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                    cross_attention_dim=TEXT_WIDTH, attention_head_dim=8)
    if family == "sd2":
        return dict(common, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                    cross_attention_dim=TEXT_WIDTH, attention_head_dim=(2, 4), use_linear_projection=True)
    if family == "sdxl":
        return dict(common, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                    cross_attention_dim=2 * TEXT_WIDTH, attention_head_dim=(2, 4), use_linear_projection=True,
                    transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTH)
    raise ValueError(family)


def tiny_vae_config() -> dict:
    # Four levels, so latents are 1/8 of the image as in the real VAE.
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16), sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def tiny_text_config(family: str, index: int = 0) -> dict:
    act = "quick_gelu" if family == "sd1" or (family == "sdxl" and index == 0) else "gelu"
    config = dict(
        vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=3, max_position_embeddings=77, hidden_act=act,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407 if act == "quick_gelu" else 0,
    )
    if family == "sdxl" and index == 1:
        config["projection_dim"] = TEXT_WIDTH
    return config


def noise_scheduler_config(v_prediction: bool) -> dict:
    """The DDPM schedule every SD family was trained with."""
    return dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, steps_offset=1, prediction_type="v_prediction" if v_prediction else "epsilon",
    )


def tiny_base_model(family: str = "sd1", v_prediction: bool = False, seed: int = 0) -> BaseModel:
    """A `BaseModel` of `family` with random weights drawn from `seed`."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    fam = get_family(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config(family))
        vae = AutoencoderKL(**tiny_vae_config())
        encoders = [CLIPTextModel(CLIPTextConfig(**tiny_text_config(family, 0)))]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**tiny_text_config(family, 1))))
    for module in (unet, vae, *encoders):
        module.eval()
    return BaseModel(
        family=fam, v_prediction=v_prediction, unet=unet, vae=vae, text_encoders=encoders,
        tokenizers=[clip_tokenizer(pad) for pad in fam.pad_tokens],
        noise_scheduler=DDPMScheduler(**noise_scheduler_config(v_prediction)),
        name=f"tiny-{family}", source="", info={"layout": "memory"},
    )
