"""What differs between SD1.x, SD2.x and SDXL, as data rather than subclasses.

Everything here is pinned by golden tests: the kohya key prefixes and metadata strings must
match what sd-scripts writes so that AUTOMATIC1111, ComfyUI and model sites read our files.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorasmith.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str  # "sd1" | "sd2" | "sdxl"
    title: str
    latent_scale: float  # VAE latents are multiplied by this before the UNet sees them
    text_encoder_prefixes: tuple[str, ...]  # kohya key prefix of each text encoder, in order
    native_resolution: int
    base_model_version: str  # ss_base_model_version (sd-scripts' wording)
    modelspec_architecture: str  # modelspec.architecture of a LoRA for this family (epsilon)
    unet_keys_in_ldm_layout: bool  # sd-scripts names SDXL UNet LoRA modules by the original layout
    # Per text encoder: (CLIP pad token, whether the pooled output comes from a projection).
    pad_tokens: tuple[str, ...]


SD1 = Family(
    name="sd1", title="Stable Diffusion 1.x", latent_scale=0.18215,
    text_encoder_prefixes=("lora_te",), native_resolution=512,
    base_model_version="sd_v1", modelspec_architecture="stable-diffusion-v1/lora",
    unet_keys_in_ldm_layout=False, pad_tokens=("<|endoftext|>",),
)
SD2 = Family(
    name="sd2", title="Stable Diffusion 2.x", latent_scale=0.18215,
    text_encoder_prefixes=("lora_te",), native_resolution=768,
    base_model_version="sd_v2", modelspec_architecture="stable-diffusion-v2-512/lora",
    unet_keys_in_ldm_layout=False, pad_tokens=("!",),
)
SDXL = Family(
    name="sdxl", title="Stable Diffusion XL", latent_scale=0.13025,
    text_encoder_prefixes=("lora_te1", "lora_te2"), native_resolution=1024,
    base_model_version="sdxl_base_v1-0", modelspec_architecture="stable-diffusion-xl-v1-base/lora",
    unet_keys_in_ldm_layout=True, pad_tokens=("<|endoftext|>", "!"),
)

FAMILIES: dict[str, Family] = {f.name: f for f in (SD1, SD2, SDXL)}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family '{name}'; use one of: {', '.join(FAMILIES)}") from None


def modelspec_architecture(family: Family, v_prediction: bool) -> str:
    if family.name == "sd2" and v_prediction:
        return "stable-diffusion-v2-768-v/lora"
    return family.modelspec_architecture
