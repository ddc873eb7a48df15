"""A loaded base model: the pieces training and generation need, whatever file they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorasmith.models.families import Family


@dataclass
class BaseModel:
    family: Family
    v_prediction: bool
    unet: Any  # the denoiser: diffusers UNet2DConditionModel, or FluxTransformer2DModel (Flux)
    vae: Any  # diffusers AutoencoderKL (Flux: the 16-channel AE, with shift_factor)
    # transformers CLIPTextModel (SD1/2), [CLIPTextModel, CLIPTextModelWithProjection] (SDXL),
    # [CLIPTextModel (CLIP-L), T5EncoderModel (T5-XXL)] (Flux)
    text_encoders: list
    tokenizers: list  # one tokenizer per text encoder (CLIPTokenizer; Flux's second is T5's)
    noise_scheduler: Any  # the training schedule: DDPMScheduler (SD), FlowMatchEulerDiscreteScheduler (Flux)
    name: str = ""  # file or folder name, for ss_sd_model_name
    source: str = ""  # path it was loaded from ("" for in-memory models)
    info: dict = field(default_factory=dict)  # e.g. {"sd_model_hash": ..., "layout": "single_file"}

    @property
    def denoiser(self) -> Any:
        """The network that predicts noise or velocity: a UNet or a diffusion transformer."""
        return self.unet
