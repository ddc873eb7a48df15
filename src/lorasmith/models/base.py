"""A loaded base model: the pieces training and generation need, whatever file they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorasmith.models.families import Family


@dataclass
class BaseModel:
    family: Family
    v_prediction: bool
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL
    text_encoders: list  # transformers CLIPTextModel (SD1/2) or [CLIPTextModel, CLIPTextModelWithProjection] (SDXL)
    tokenizers: list  # one CLIPTokenizer per text encoder
    noise_scheduler: Any  # diffusers DDPMScheduler with the base model's training schedule
    name: str = ""  # file or folder name, for ss_sd_model_name
    source: str = ""  # path it was loaded from ("" for in-memory models)
    info: dict = field(default_factory=dict)  # e.g. {"sd_model_hash": ..., "layout": "single_file"}
