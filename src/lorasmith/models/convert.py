"""Whole state dicts between the diffusers layout and the original single-file layout.

Original -> diffusers is diffusers' own converter (`diffusers.loaders.single_file_utils`), used
only through its offline parts: it takes any mapping with `keys()`/`get()`/`[]`, so the loader
hands it a lazy view of the file and tensors are read one at a time. Diffusers -> original is
the name tables of `ldm_layout` plus the few value changes (fused OpenCLIP q/k/v, transposed
text projection, VAE attention as 1x1 convolutions); tests pin it as the exact inverse.

Values are returned as views of the inputs wherever the layout allows, so converting a loaded
model for saving costs no second copy (only OpenCLIP's fused q/k/v are new tensors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lorasmith.models.ldm_layout import (
    TEXT_ENCODER_LAYOUT,
    UNET_PREFIX,
    VAE_PREFIX,
    is_vae_attention_projection,
    open_clip_param_name_to_ldm,
    unet_module_name_to_ldm,
    vae_param_name_to_ldm,
)

# SD2 checkpoints carry OpenCLIP's 24th layer and its text projection although SD2 conditions on
# the penultimate layer; diffusers drops them on load (23 layers), other tools expect them.
SD2_OPENCLIP_LAYERS = 24


# --- diffusers -> original -------------------------------------------------------------------


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], unet_config: dict) -> dict[str, torch.Tensor]:
    return {UNET_PREFIX + unet_module_name_to_ldm(k, unet_config): v for k, v in state_dict.items()}


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], vae_config: dict) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        name = vae_param_name_to_ldm(key, vae_config)
        if is_vae_attention_projection(name) and value.dim() == 2:
            value = value[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        out[VAE_PREFIX + name] = value
    return out


def clip_to_ldm(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state_dict.items()}


def open_clip_to_ldm(
    state_dict: Mapping[str, torch.Tensor], prefix: str, *, pad_layers_to: int | None = None
) -> dict[str, torch.Tensor]:
    """transformers CLIP names -> OpenCLIP names; q, k and v fuse into one in_proj (in that order)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        name = open_clip_param_name_to_ldm(key)
        if ".attn.in_proj_" in name:
            fused.setdefault(name, {})[key.rsplit(".", 2)[-2]] = value
        elif name == "text_projection":
            out[prefix + name] = value.T  # OpenCLIP multiplies x @ proj; a Linear stores proj.T
        else:
            out[prefix + name] = value
    for name, parts in fused.items():
        out[prefix + name] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    if pad_layers_to:
        _pad_open_clip(out, prefix, pad_layers_to)
    return out


def _pad_open_clip(out: dict[str, torch.Tensor], prefix: str, layers: int) -> None:
    """Repeat the last layer up to `layers` and add a text projection, as sd-scripts does for SD2."""
    marker = prefix + "transformer.resblocks."
    present = {int(k[len(marker):].split(".")[0]) for k in out if k.startswith(marker)}
    last = max(present)
    for key in [k for k in out if k.startswith(f"{marker}{last}.")]:
        for extra in range(last + 1, layers):
            out[key.replace(f"{marker}{last}.", f"{marker}{extra}.")] = out[key]
    if prefix + "text_projection" not in out:
        width = out[prefix + "ln_final.weight"].shape[0]
        out[prefix + "text_projection"] = torch.eye(width, dtype=out[prefix + "ln_final.weight"].dtype)


def text_encoder_to_ldm(family: str, index: int, text_encoder: Any) -> dict[str, torch.Tensor]:
    """One text encoder (transformers CLIPTextModel[WithProjection]) in the family's single-file layout."""
    kind, prefix = TEXT_ENCODER_LAYOUT[family][index]
    state_dict = text_encoder_state_dict(text_encoder)
    if kind == "clip":
        return clip_to_ldm(state_dict, prefix)
    pad = SD2_OPENCLIP_LAYERS if family == "sd2" and text_encoder.config.num_hidden_layers == 23 else None
    return open_clip_to_ldm(state_dict, prefix, pad_layers_to=pad)


def base_model_to_ldm(base: Any) -> dict[str, torch.Tensor]:
    """Every tensor of a BaseModel under its single-file name (views of the model's own tensors)."""
    out = unet_to_ldm(base.unet.state_dict(), dict(base.unet.config))
    out.update(vae_to_ldm(base.vae.state_dict(), dict(base.vae.config)))
    for index, encoder in enumerate(base.text_encoders):
        out.update(text_encoder_to_ldm(base.family.name, index, encoder))
    return out


def text_encoder_state_dict(text_encoder: Any) -> dict[str, torch.Tensor]:
    """The encoder's tensors under the usual "text_model.*" names.

    transformers 5 flattened CLIPTextModel (its parameters are "embeddings.*", "encoder.*") but
    kept CLIPTextModelWithProjection's "text_model." level; files everywhere use "text_model.*".
    """
    state_dict = text_encoder.state_dict()
    if hasattr(text_encoder, "text_model"):
        return state_dict
    return {"text_model." + k: v for k, v in state_dict.items()}


def text_encoder_model_keys(text_encoder: Any, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `text_encoder_state_dict`: "text_model.*" names as this model spells them."""
    if hasattr(text_encoder, "text_model"):
        return state_dict
    return {k.removeprefix("text_model."): v for k, v in state_dict.items()}


# --- original -> diffusers (diffusers' converters) ---------------------------------------------


def unet_from_ldm(checkpoint: Mapping, unet_config: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(checkpoint, dict(unet_config))


def vae_from_ldm(checkpoint: Mapping, vae_config: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(checkpoint, dict(vae_config))


def text_encoder_from_ldm(checkpoint: Mapping, family: str, index: int, text_encoder: Any) -> dict[str, torch.Tensor]:
    """Text encoder `index` of `family` under "text_model.*" names; `text_encoder` may be on the meta device."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    kind, prefix = TEXT_ENCODER_LAYOUT[family][index]
    if kind == "clip":
        # diffusers strips every known CLIP prefix; keep only this encoder's keys.
        view = _PrefixView(checkpoint, prefix)
        return convert_ldm_clip_checkpoint(view, remove_prefix=prefix)
    return convert_open_clip_checkpoint(text_encoder, _PrefixView(checkpoint, prefix), prefix=prefix)


class _PrefixView(Mapping):
    """The keys of `checkpoint` under `prefix`, without copying (values are read on access)."""

    def __init__(self, checkpoint: Mapping, prefix: str):
        self._checkpoint = checkpoint
        self._keys = [k for k in checkpoint.keys() if k.startswith(prefix)]
        self._key_set = set(self._keys)

    def __getitem__(self, key: str):
        if key not in self._key_set:
            raise KeyError(key)
        return self._checkpoint[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set
