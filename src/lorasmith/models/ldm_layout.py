"""Names in the original ("LDM"/"sgm") layout of a Stable Diffusion checkpoint, from diffusers names.

Single-file checkpoints (A1111, ComfyUI, model sites) keep the layout of the original
CompVis/Stability code; diffusers renames every module. This module maps diffusers names to
the original ones, driven by the model's config (number of levels, layers per block, which
blocks have attention) so that it serves the tiny test models and the real ones alike.
sd-scripts names SDXL UNet LoRA modules this way, which is why the LoRA code needs it too.

The reverse direction (original -> diffusers) is diffusers' own converter; `convert.py` wraps
it and pins that the two are exact inverses.
"""

from __future__ import annotations

import re

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# Top-level UNet modules whose names are simply different.
_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

# Inside a UNet resnet block (ResBlock in the original code).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.*))?$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")


def _layers_per_block(unet_config: dict, level: int) -> int:
    layers = unet_config.get("layers_per_block", 2)
    return int(layers[level] if isinstance(layers, (list, tuple)) else layers)


def _join(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def _resnet_tail(tail: str | None) -> str | None:
    """Rename the first component of a path inside a resnet (norm1 -> in_layers.0, ...)."""
    if not tail:
        return tail
    head, _, rest = tail.partition(".")
    return _join(_UNET_RESNET.get(head, head), rest)


def _input_block_index(unet_config: dict, level: int, layer: int) -> int:
    # input_blocks.0 is conv_in; each level then has its layers, plus one downsampler
    # block for every level but the last.
    index = 1
    for previous in range(level):
        index += _layers_per_block(unet_config, previous) + 1
    return index + layer


def _output_block_index(unet_config: dict, level: int, layer: int) -> int:
    # Up blocks have one more layer than down blocks (they also take the skip of the downsampler);
    # up level i mirrors down level (n - 1 - i).
    levels = len(unet_config["up_block_types"])
    index = 0
    for previous in range(level):
        index += _layers_per_block(unet_config, levels - 1 - previous) + 1
    return index + layer


def _up_block_has_attention(unet_config: dict, level: int) -> bool:
    return "CrossAttn" in unet_config["up_block_types"][level]


def _down_block_name(unet_config: dict, level: int, kind: str, index: int, tail: str | None) -> str:
    layers = _layers_per_block(unet_config, level)
    if kind == "resnets":
        return _join(f"input_blocks.{_input_block_index(unet_config, level, index)}.0", _resnet_tail(tail))
    if kind == "attentions":
        return _join(f"input_blocks.{_input_block_index(unet_config, level, index)}.1", tail)
    # downsamplers.0.conv -> input_blocks.N.0.op
    block = _input_block_index(unet_config, level, layers)
    return _join(f"input_blocks.{block}.0.op", tail.partition(".")[2] if tail else None)


def _up_block_name(unet_config: dict, level: int, kind: str, index: int, tail: str | None) -> str:
    levels = len(unet_config["up_block_types"])
    layers = _layers_per_block(unet_config, levels - 1 - level) + 1
    if kind == "resnets":
        return _join(f"output_blocks.{_output_block_index(unet_config, level, index)}.0", _resnet_tail(tail))
    if kind == "attentions":
        return _join(f"output_blocks.{_output_block_index(unet_config, level, index)}.1", tail)
    # upsamplers.0.conv -> output_blocks.N.{1|2}.conv: after the attention if the block has one.
    block = _output_block_index(unet_config, level, layers - 1)
    slot = 2 if _up_block_has_attention(unet_config, level) else 1
    return _join(f"output_blocks.{block}.{slot}", tail)


def unet_module_name_to_ldm(diffusers_module_path: str, unet_config: dict) -> str:
    """The original-layout path of a diffusers UNet module (or parameter) path.

    Works for modules and parameters alike ("...to_q" or "...to_q.weight"); the result has no
    "model.diffusion_model." prefix. Paths inside transformer blocks keep their names.
    Raises ValueError for a path that is not part of an SD UNet.
    """
    path = diffusers_module_path
    for name, ldm in _UNET_TOP.items():
        if path == name or path.startswith(name + "."):
            return ldm + path[len(name):]
    match = _BLOCK.match(path)
    if match:
        side, level, kind, index, tail = match.groups()
        build = _down_block_name if side == "down_blocks" else _up_block_name
        return build(unet_config, int(level), kind, int(index), tail)
    match = _MID.match(path)
    if match:
        kind, index, tail = match.groups()
        if kind == "resnets":
            return _join(f"middle_block.{2 * int(index)}", _resnet_tail(tail))
        return _join(f"middle_block.{2 * int(index) + 1}", tail)
    raise ValueError(f"'{diffusers_module_path}' is not a module path of a Stable Diffusion UNet")


# --- VAE -------------------------------------------------------------------------------------

_VAE_TOP = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_BLOCK = re.compile(r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)$")
_VAE_MID = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)$")


def _vae_resnet_tail(tail: str) -> str:
    return tail.replace("conv_shortcut", "nin_shortcut", 1) if tail.startswith("conv_shortcut") else tail


def vae_param_name_to_ldm(name: str, vae_config: dict) -> str:
    """The original-layout name of a diffusers AutoencoderKL parameter (no "first_stage_model." prefix)."""
    match = _VAE_BLOCK.match(name)
    if match:
        part, side, level, kind, index, tail = match.groups()
        if side == "up_blocks":  # the original decoder counts its levels from the bottom
            level = str(len(vae_config["up_block_types"]) - 1 - int(level))
            side = "up"
        else:
            side = "down"
        if kind == "resnets":
            return f"{part}.{side}.{level}.block.{index}.{_vae_resnet_tail(tail)}"
        return f"{part}.{side}.{level}.{'downsample' if kind == 'downsamplers' else 'upsample'}.{tail}"
    match = _VAE_MID.match(name)
    if match:
        part, kind, index, tail = match.groups()
        if kind == "resnets":
            return f"{part}.mid.block_{int(index) + 1}.{_vae_resnet_tail(tail)}"
        module, _, param = tail.rpartition(".")
        return f"{part}.mid.attn_{int(index) + 1}.{_VAE_ATTENTION.get(module, module)}.{param}"
    part, _, rest = name.partition(".")
    module, _, param = rest.rpartition(".")
    if module in _VAE_TOP:
        return f"{part}.{_VAE_TOP[module]}.{param}"
    return name


def is_vae_attention_projection(ldm_name: str) -> bool:
    """Whether the original layout stores this VAE weight as a 1x1 convolution (diffusers: linear)."""
    return ".mid.attn_" in ldm_name and ldm_name.rsplit(".", 2)[-2] in ("q", "k", "v", "proj_out") and ldm_name.endswith(
        ".weight"
    )


# --- Text encoders ---------------------------------------------------------------------------

# Where each family keeps its text encoders in a single file; "clip" = transformers' CLIP names
# under the prefix, "open_clip" = OpenCLIP's own names (fused qkv, resblocks).
TEXT_ENCODER_LAYOUT: dict[str, tuple[tuple[str, str], ...]] = {
    "sd1": (("clip", "cond_stage_model.transformer."),),
    "sd2": (("open_clip", "cond_stage_model.model."),),
    "sdxl": (("clip", "conditioner.embedders.0.transformer."), ("open_clip", "conditioner.embedders.1.model.")),
}

_OPEN_CLIP_TOP = {
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",
}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_CLIP_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.*)\.(weight|bias)$")


def open_clip_param_name_to_ldm(name: str) -> str:
    """The OpenCLIP name of a transformers CLIP parameter; q/k/v projections all map to the fused in_proj."""
    if name in _OPEN_CLIP_TOP:
        return _OPEN_CLIP_TOP[name]
    match = _CLIP_LAYER.match(name)
    if not match:
        raise ValueError(f"'{name}' is not a CLIP text encoder parameter")
    layer, module, param = match.groups()
    if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        return f"transformer.resblocks.{layer}.attn.in_proj_{param}"
    return f"transformer.resblocks.{layer}.{_OPEN_CLIP_LAYER[module]}.{param}"
