"""A tiny Flux.1 with random weights: every kind of module the real one has, small enough for a CPU.

One double block and two single blocks (so block indices and `train_blocks` mean something), the
16-channel AE with its shift, a CLIP-L-shaped text encoder and a T5 encoder with the real 32,128-row
vocabulary (the shipped T5 tokenizer's ids fit it). `variant` "dev" has the guidance embedding,
"schnell" has none, as the real checkpoints.
"""

from __future__ import annotations

from lorasmith.models.base import BaseModel
from lorasmith.models.families import FLUX
from lorasmith.models.tiny import TEXT_WIDTH, tiny_text_config

T5_WIDTH = 32
HEADS, HEAD_DIM = 2, 16  # inner width 32; rope axes must add up to the head width


def tiny_flux_transformer_config(variant: str = "dev") -> dict:
    return dict(
        patch_size=1, in_channels=4 * FLUX.latent_channels, num_layers=1, num_single_layers=2,
        attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=TEXT_WIDTH, guidance_embeds=variant == "dev", axes_dims_rope=(4, 6, 6),
    )


def tiny_flux_vae_config() -> dict:
    # Four levels, so latents are 1/8 of the image, as the real AE; no quant convs, as the real AE.
    return dict(
        in_channels=3, out_channels=3, latent_channels=FLUX.latent_channels, layers_per_block=1,
        norm_num_groups=8, block_out_channels=(8, 16, 16, 16), sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=FLUX.latent_scale, shift_factor=FLUX.latent_shift, use_quant_conv=False,
        use_post_quant_conv=False,
    )


def tiny_t5_config() -> dict:
    return dict(
        vocab_size=32128, d_model=T5_WIDTH, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
        tie_word_embeddings=False,
    )


def tiny_flux_base_model(variant: str = "dev", seed: int = 0) -> BaseModel:
    """A `BaseModel` of the Flux family with random weights drawn from `seed`."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lorasmith.models.configs import shipped_config
    from lorasmith.models.tokenizer import clip_tokenizer, t5_tokenizer

    if variant not in ("dev", "schnell"):
        raise ValueError(f"variant must be dev or schnell, not {variant!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**tiny_flux_transformer_config(variant))
        vae = AutoencoderKL(**tiny_flux_vae_config())
        clip = CLIPTextModel(CLIPTextConfig(**tiny_text_config("sd1", 0)))
        t5 = T5EncoderModel(T5Config(**tiny_t5_config()))
    for module in (transformer, vae, clip, t5):
        module.eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(shipped_config("flux", "scheduler"))
    return BaseModel(
        family=FLUX, v_prediction=False, unet=transformer, vae=vae, text_encoders=[clip, t5],
        tokenizers=[clip_tokenizer(FLUX.pad_tokens[0]), t5_tokenizer()], noise_scheduler=scheduler,
        name=f"tiny-flux-{variant}", source="", info={"layout": "memory", "flux_variant": variant},
    )
