"""Which layers of a base model get a LoRA module: the same ones sd-scripts' networks.lora picks.

sd-scripts walks the model, and inside every module of a target class wraps each plain
`Linear` and `Conv2d`:

- UNet: `Transformer2DModel` (proj_in/proj_out, and attn1/attn2 to_q/to_k/to_v/to_out.0,
  ff.net.0.proj, ff.net.2 of its transformer blocks) at the network rank;
- with `conv_dim` (LoCon) also `ResnetBlock2D`, `Downsample2D`, `Upsample2D`: their 3x3
  convolutions at `conv_dim`, and the Linear/1x1 layers inside them (time_emb_proj,
  conv_shortcut) at the network rank, exactly as sd-scripts does;
- text encoders: `CLIPAttention` (q/k/v/out_proj) and `CLIPMLP` (fc1/fc2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorasmith.models.families import Family
from lorasmith.network.kohya_keys import UNET, ModuleRef, kohya_key, text_encoder_component

UNET_TARGET_CLASSES = ("Transformer2DModel",)
UNET_CONV_TARGET_CLASSES = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
# transformers has renamed its attention classes over time; all are the same layers.
TEXT_ENCODER_TARGET_CLASSES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")


@dataclass(frozen=True)
class Target:
    """A layer that gets a LoRA module, with the shapes its LoRA weights will have."""

    ref: ModuleRef
    in_features: int
    out_features: int
    kernel_size: tuple[int, ...]  # () for Linear

    @property
    def uses_conv_rank(self) -> bool:
        """A convolution larger than 1x1: trained at conv_dim/conv_alpha, not the network rank."""
        return bool(self.kernel_size) and tuple(self.kernel_size) != (1, 1)

    def lora_shapes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of (lora_down, lora_up) at `rank`, as sd-scripts stores them."""
        if not self.kernel_size:
            return (rank, self.in_features), (self.out_features, rank)
        return (rank, self.in_features, *self.kernel_size), (self.out_features, rank, 1, 1)


def _children(root: Any, classes: tuple[str, ...]) -> list[tuple[str, Any]]:
    """(path, layer) of each plain Linear/Conv2d inside a module of one of `classes`."""
    import torch

    found: dict[str, Any] = {}
    for name, module in root.named_modules():
        if type(module).__name__ not in classes:
            continue
        for child_name, child in module.named_modules():
            if type(child) in (torch.nn.Linear, torch.nn.Conv2d) and child_name:
                found.setdefault(f"{name}.{child_name}", child)
    return list(found.items())


def _target(family: Family, component: str, path: str, layer: Any, unet_config: dict | None) -> Target:
    import torch

    ref = ModuleRef(kohya_key(family, component, path, unet_config), component, path)
    if isinstance(layer, torch.nn.Conv2d):
        return Target(ref, layer.in_channels, layer.out_channels, tuple(layer.kernel_size))
    return Target(ref, layer.in_features, layer.out_features, ())


def lora_targets(
    family: Family, unet: Any, text_encoders: list, *,
    train_unet: bool = True, train_text_encoder: bool = True, conv: bool = False,
) -> list[Target]:
    """The layers sd-scripts' networks.lora would wrap, text encoders first, then the UNet."""
    targets: list[Target] = []
    if train_text_encoder:
        for index, encoder in enumerate(text_encoders):
            component = text_encoder_component(index)
            for path, layer in _children(encoder, TEXT_ENCODER_TARGET_CLASSES):
                targets.append(_target(family, component, path, layer, None))
    if train_unet:
        classes = UNET_TARGET_CLASSES + (UNET_CONV_TARGET_CLASSES if conv else ())
        unet_config = dict(unet.config)
        for path, layer in _children(unet, classes):
            target = _target(family, UNET, path, layer, unet_config)
            targets.append(target)
    return targets
