"""Starting configurations for the user's VRAM, shipped in the package (`presets/*.toml`)."""

from __future__ import annotations

from importlib import resources

import tomllib

from lorasmith.config.schema import TrainConfig, from_dict
from lorasmith.errors import ConfigError

PRESETS = {
    "8gb": "Medium VRAM (~8 GB): batch 1, gradient checkpointing, cached latents, 8-bit AdamW, 512 px",
    "12gb": "High VRAM (12 GB+): batch 4, 768 px, gradient checkpointing",
    "flux-8gb": "Flux.1-dev, 8 GB: fp8 base and T5, 32 blocks swapped, batch 1, 8-bit AdamW, 1024 px, cached "
                "latents, text",
    "flux-12gb": "Flux.1-dev, 12 GB: fp8 base, 16 blocks swapped, batch 1, 8-bit AdamW, 1024 px, cached latents, text",
    "flux-16gb": "Flux.1-dev, 16 GB: fp8 base, 8 blocks swapped, batch 1, 8-bit AdamW, 1024 px, cached latents, text",
    "flux-24gb": "Flux.1-dev, 24 GB: fp8 base, batch 2, 1024 px, cached latents and text, sd-scripts' Flux recipe",
}


def preset_values(name: str) -> dict:
    key = name.lower().replace(" ", "")
    if key not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    text = resources.files("lorasmith.config").joinpath(f"presets/{key}.toml").read_text("utf-8")
    return tomllib.loads(text)


def load_preset(name: str) -> TrainConfig:
    return from_dict(preset_values(name), where=f" in preset {name}")
