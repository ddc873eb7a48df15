"""Flux.1's real architecture on the meta device: shapes without weights, for the file-size estimate,
the planner and the topology tests."""

from __future__ import annotations

from lorasmith.models.base import BaseModel


def flux_part_config(part: str, configs: dict | None = None, variant: str = "dev") -> dict:
    """A part's config: the checkpoint's own when given, else the shipped Flux.1 one (schnell: no guidance)."""
    from lorasmith.models.configs import shipped_config

    config = dict((configs or {}).get(part) or shipped_config("flux", part))
    if part == "transformer" and not (configs or {}).get(part):
        config["guidance_embeds"] = variant == "dev"
    return {key: value for key, value in config.items() if not key.startswith("_")}


def t5_config(config: dict):
    from transformers import T5Config

    return T5Config(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})


def meta_flux_base(configs: dict | None = None, variant: str = "dev", t5: bool = True) -> BaseModel:
    """A BaseModel whose transformer, CLIP-L and (with `t5`) T5-XXL live on the meta device; no VAE."""
    from diffusers import FluxTransformer2DModel
    from transformers import T5EncoderModel

    from lorasmith.models.empty import empty_weights
    from lorasmith.models.families import FLUX
    from lorasmith.models.load import text_model_from_config

    with empty_weights():
        transformer = FluxTransformer2DModel.from_config(flux_part_config("transformer", configs, variant))
        encoders = [text_model_from_config(flux_part_config("text_encoder", configs), 0)]
        if t5:
            encoders.append(T5EncoderModel(t5_config(flux_part_config("text_encoder_2", configs))))
    variant = "dev" if transformer.config.guidance_embeds else "schnell"
    return BaseModel(family=FLUX, v_prediction=False, unet=transformer, vae=None, text_encoders=encoders,
                     tokenizers=[], noise_scheduler=None, name=f"flux-1-{variant}", source="",
                     info={"layout": "meta", "flux_variant": variant})
