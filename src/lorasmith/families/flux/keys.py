"""The Flux.1 transformer's state dict between BFL names (the single files users have) and diffusers names.

BFL fuses what diffusers keeps apart: a double block's `img_attn.qkv` is diffusers' `to_q`, `to_k`,
`to_v` stacked by rows, a single block's `linear1` is `to_q`, `to_k`, `to_v` and `proj_mlp` (the MLP
is always 4 x the width in diffusers' single blocks, so the rows split 1:1:1:4), and
`final_layer.adaLN_modulation.1` holds (shift, scale) where diffusers' `norm_out.linear` holds
(scale, shift). Everything else is a rename.

diffusers ships the forward direction (`convert_flux_transformer_checkpoint_to_diffusers`), but it
fixes the width at 3072 (the tiny test models are 32 wide) and pops keys from a mutable dict, so the
table here serves both directions instead. BFL -> diffusers gives row views of the fused tensors
(no copy); diffusers -> BFL concatenates (new tensors). Nothing here imports torch at import time:
the family detector reads this module for its markers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# ComfyUI finds Flux by this tensor plus img_in.weight under any prefix (comfy/model_detection.py).
TRANSFORMER_MARKER = "double_blocks.0.img_attn.norm.key_norm.scale"
GUIDANCE_KEY = "guidance_in.in_layer.weight"
MLP_RATIO = 4  # diffusers' FluxSingleTransformerBlock always has a 4x MLP

_PARAMS = ("weight", "bias")

# module renames (weight and bias)
_TOP = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
_SWAPPED = {"final_layer.adaLN_modulation.1": "norm_out.linear"}  # (shift, scale) <-> (scale, shift)
_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
_DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE = {"modulation.lin": "norm.linear", "linear2": "proj_out"}
_SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}
_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}

_BLOCKS = (("double_blocks.", "transformer_blocks."), ("single_blocks.", "single_transformer_blocks."))
# the transformer's top-level modules: what else sits under the same prefix (an AE, text encoders) is not its
_BFL_ROOTS = ("double_blocks.", "single_blocks.", "img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.",
              "final_layer.")


def _with_params(modules: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for old, new in modules.items():
        for param in _PARAMS:
            out[f"{old}.{param}"] = tuple(f"{n}.{param}" for n in new) if isinstance(new, tuple) else f"{new}.{param}"
    return out


# per parameter: BFL suffix -> diffusers suffix (plain) or tuple of suffixes (fused, in row order)
_TOP_PARAMS = _with_params(_TOP)
_SWAPPED_PARAMS = _with_params(_SWAPPED)
_BLOCK_PARAMS = (
    {**_with_params(_DOUBLE), **_DOUBLE_NORMS, **_with_params(_DOUBLE_FUSED)},
    {**_with_params(_SINGLE), **_SINGLE_NORMS, **_with_params(_SINGLE_FUSED)},
)


def transformer_prefix(keys: Iterable[str]) -> str | None:
    """What comes before the BFL names ("" or e.g. "model.diffusion_model."); None when no Flux transformer."""
    names = set(keys)
    for key in names:
        if key.endswith(TRANSFORMER_MARKER):
            prefix = key[: -len(TRANSFORMER_MARKER)]
            if prefix + "img_in.weight" in names:
                return prefix
    return None


def strip_prefix(keys: Iterable[str]) -> dict[str, str]:
    """{BFL name: the file's name} for the transformer's tensors, ComfyUI's `model.diffusion_model.` (or any
    other prefix) stripped; tensors outside the transformer (an all-in-one file's `vae.`, ...) are left out."""
    names = list(keys)
    prefix = transformer_prefix(names)
    if prefix is None:
        return {}
    return {key[len(prefix):]: key for key in names
            if key.startswith(prefix) and key[len(prefix):].startswith(_BFL_ROOTS)}


def _split_block(name: str, bfl: bool) -> tuple[int, int, str] | None:
    """(kind 0 double / 1 single, index, rest) of a block parameter name, or None."""
    for kind, prefixes in enumerate(_BLOCKS):
        prefix = prefixes[0 if bfl else 1]
        if name.startswith(prefix):
            index, _, rest = name[len(prefix):].partition(".")
            return kind, int(index), rest
    return None


def _bfl_target(name: str) -> tuple[str, Any]:
    """("plain" | "swap" | "fused", diffusers name or names) for one BFL parameter name."""
    block = _split_block(name, bfl=True)
    if block is not None:
        kind, index, rest = block
        target = _BLOCK_PARAMS[kind].get(rest)
        prefix = f"{_BLOCKS[kind][1]}{index}."
    else:
        target, prefix = _TOP_PARAMS.get(name), ""
        if name in _SWAPPED_PARAMS:
            return "swap", _SWAPPED_PARAMS[name]
    if target is None:
        raise KeyError(f"'{name}' is not a Flux.1 transformer tensor")
    if isinstance(target, tuple):
        return "fused", tuple(prefix + t for t in target)
    return "plain", prefix + target


def _fused_rows(total: int, parts: int) -> list[int]:
    if parts == 3:  # q, k, v
        return [total // 3] * 3
    width = total // (3 + MLP_RATIO)  # q, k, v, then the MLP
    return [width, width, width, total - 3 * width]


def _swap_halves(tensor: Any) -> Any:
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def iter_bfl_to_diffusers(tensors: Mapping) -> Iterator[tuple[str, Any]]:
    """(diffusers name, tensor) for each transformer tensor of `tensors` (BFL names, any prefix), reading
    each source tensor once, when its turn comes: a lazy file mapping stays lazy."""
    names = strip_prefix(tensors.keys()) or {key: key for key in tensors.keys()}
    for name, file_name in names.items():
        kind, target = _bfl_target(name)
        tensor = tensors[file_name]
        if kind == "plain":
            yield target, tensor
        elif kind == "swap":
            yield target, _swap_halves(tensor)
        else:
            yield from zip(target, tensor.split(_fused_rows(tensor.shape[0], len(target)), dim=0), strict=True)


def bfl_to_diffusers(tensors: Mapping) -> dict:
    """The transformer's tensors under diffusers `FluxTransformer2DModel` names; fused tensors become row
    views (no copy), only final_layer's swapped modulation is new."""
    return dict(iter_bfl_to_diffusers(tensors))


def _diffusers_source(name: str) -> tuple[str, str, int, int]:
    """(kind, BFL name, position, parts) for one diffusers parameter name."""
    block = _split_block(name, bfl=False)
    if block is not None:
        kind, index, rest = block
        table, prefix = _BLOCK_PARAMS[kind], f"{_BLOCKS[kind][0]}{index}."
    else:
        table, prefix = {**_TOP_PARAMS, **_SWAPPED_PARAMS}, ""
        rest = name
    for old, new in table.items():
        if new == rest:
            return ("swap" if old in _SWAPPED_PARAMS else "plain"), prefix + old, 0, 1
        if isinstance(new, tuple) and rest in new:
            return "fused", prefix + old, new.index(rest), len(new)
    raise KeyError(f"'{name}' is not a diffusers FluxTransformer2DModel tensor")


def diffusers_to_bfl(state: Mapping) -> dict:
    """The inverse of `bfl_to_diffusers`: BFL names without prefix; q, k, v (and the single blocks' MLP)
    concatenated into new tensors, final_layer's (scale, shift) put back as (shift, scale)."""
    import torch

    out: dict[str, Any] = {}
    fused: dict[str, list] = {}
    for name in state.keys():
        kind, bfl_name, position, parts = _diffusers_source(name)
        if kind == "plain":
            out[bfl_name] = state[name]
        elif kind == "swap":
            out[bfl_name] = _swap_halves(state[name])
        else:
            fused.setdefault(bfl_name, [None] * parts)[position] = state[name]
    for bfl_name, pieces in fused.items():
        if any(piece is None for piece in pieces):
            raise KeyError(f"'{bfl_name}' lacks some of its fused parts in the diffusers state dict")
        out[bfl_name] = torch.cat(pieces, dim=0)
    return out
