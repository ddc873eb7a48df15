"""What differs between the model families (SD1.x, SD2.x, SDXL, Flux.1), as data rather than subclasses.

Each row names its behaviour module (`lorasmith.families.<module>`): the code that differs in kind
(loading, text encoding, the training objective, LoRA targets, sampling) lives there behind one
interface, so the trainer never asks which family it trains.

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
    # Per CLIP text encoder: its pad token.
    pad_tokens: tuple[str, ...]
    behaviour: str = "unet"  # the module in lorasmith.families that does this family's work
    latent_shift: float = 0.0  # subtracted from VAE latents before scaling (Flux's AE)
    latent_channels: int = 4
    bucket_multiple: int = 8  # image sides must be multiples of this (Flux packs 2x2 latents: 16)


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

# Flux.1 dev and schnell: a diffusion transformer over 2x2-packed 16-channel latents, conditioned on
# CLIP-L's pooled output and T5-XXL's states; LoRA prefixes as sd-scripts' networks.lora_flux.
FLUX = Family(
    name="flux", title="Flux.1", latent_scale=0.3611,
    text_encoder_prefixes=("lora_te1", "lora_te3"), native_resolution=1024,
    base_model_version="flux1", modelspec_architecture="flux-1-dev/lora",
    unet_keys_in_ldm_layout=False, pad_tokens=("<|endoftext|>",),
    behaviour="flux", latent_shift=0.1159, latent_channels=16, bucket_multiple=16,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (SD1, SD2, SDXL, FLUX)}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family '{name}'; use one of: {', '.join(FAMILIES)}") from None


def modelspec_architecture(family: Family, v_prediction: bool) -> str:
    if family.name == "sd2" and v_prediction:
        return "stable-diffusion-v2-768-v/lora"
    return family.modelspec_architecture
