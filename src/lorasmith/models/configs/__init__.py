"""Diffusers/transformers configs of the real architectures, written by lorasmith (nothing is fetched).

One folder per family, one JSON file per part: unet, vae, text_encoder (and text_encoder_2 for SDXL);
Flux has transformer, vae (the 16-channel AE), text_encoder (CLIP-L), text_encoder_2 (T5-XXL) and scheduler.
SD2's text encoder is OpenCLIP ViT-H as a CLIPTextModel with 23 layers, as diffusers ships SD2
(the 24th layer is never used: SD2 conditions on the penultimate layer).
"""

from __future__ import annotations

import json
from importlib import resources

PARTS = {
    "sd1": ("unet", "vae", "text_encoder"),
    "sd2": ("unet", "vae", "text_encoder"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2"),
    # Flux.1-dev (schnell: guidance_embeds false); text_encoder is CLIP-L, text_encoder_2 T5 v1.1 XXL
    "flux": ("transformer", "vae", "text_encoder", "text_encoder_2", "scheduler"),
}


def shipped_config(family: str, part: str) -> dict:
    """The config of `part` ("unet", "vae", "text_encoder", "text_encoder_2") of a real `family` model."""
    if part not in PARTS.get(family, ()):
        raise ValueError(f"no shipped config for {family}/{part}")
    text = resources.files(__name__).joinpath(f"{family}/{part}.json").read_text("utf-8")
    return json.loads(text)
