"""Merge kohya Flux.1 LoRA files (sd-scripts' networks.lora_flux) into a base's diffusers layers, and undo it.

Per module: the fused BFL layer's change is weight * (alpha / rank) * up @ down, [rows of the fused layer,
in]; each diffusers Linear it covers (lora_targets.py) takes its rows. rank is the rows of lora_down, as in
ComfyUI, diffusers and sd-scripts' own loader, so a split_qkv file (down [3r, in], block-diagonal up
[3 * out, 3r]) merges by the same formula, at the strength those give it. Computed in float32, cast back to
the weight's dtype; only touched weights are copied, so `restore()` puts back the very same bits.
"""

from __future__ import annotations

import os
from typing import Any

from lorasmith.errors import ModelError
from lorasmith.families.flux.lora_targets import FluxTarget, flux_targets
from lorasmith.models.base import BaseModel
from lorasmith.network.apply import AppliedLoras
from lorasmith.network.kohya_keys import component_module
from lorasmith.network.kohya_tensors import LoraModuleTensors, group_lora_tensors


def flux_lora_deltas(tensors: dict[str, Any]) -> dict[str, LoraModuleTensors]:
    """kohya module name -> its (down, up, alpha); ModelError naming the first key that is not a plain LoRA's."""
    return group_lora_tensors(tensors)


def flux_key_table(base: BaseModel) -> dict[str, FluxTarget]:
    """Every kohya module a Flux LoRA may hold for `base` (T5 and in_dims ones too) -> its target."""
    return {t.key: t for t in flux_targets(base.unet, list(base.text_encoders))}


def merge_flux_loras(base: BaseModel,
                     loras: list[tuple[str | os.PathLike | dict[str, Any], float]]) -> AppliedLoras:
    """Merge each (file or kohya tensors, weight) into `base`'s weights, in order; checks all before any change."""
    import torch

    table = flux_key_table(base)
    grouped = [flux_lora_deltas(_tensors(source)) for source, _ in loras]
    for modules in grouped:
        for name, lora in modules.items():
            _check_fits(base, table, name, lora)
    applied = AppliedLoras(base)
    with torch.no_grad():
        for modules, (_, weight) in zip(grouped, loras):
            for name, lora in modules.items():
                target = table[name]
                root = component_module(base, target.ref.component)
                params = [root.get_submodule(split.path).weight for split in target.splits]
                device = params[0].device  # on the model's device: a CPU matmul per module is slow at Flux's size
                delta = (lora.up.to(device).float() @ lora.down.to(device).float()) * (float(weight) * lora.scale)
                for split, param in zip(target.splits, params):
                    slot = f"{target.ref.component}:{split.path}"
                    if slot not in applied.originals:
                        applied.originals[slot] = (param, param.detach().clone())
                    param.copy_((param.float() + delta[split.start:split.stop]).to(param.dtype))
        applied.modules_touched = len({name for modules in grouped for name in modules})
    return applied


def _check_fits(base: BaseModel, table: dict[str, FluxTarget], name: str, lora: LoraModuleTensors) -> None:
    target = table.get(name)
    if target is None:
        raise ModelError(f"LoRA module '{name}' matches no layer of this {base.family.title} model; is the LoRA for "
                         "another model family (or a schnell model without guidance_in)?")
    found = (int(lora.up.shape[0]), int(lora.down.shape[1])) if lora.down.dim() == 2 and lora.up.dim() == 2 else None
    if found != (target.out_features, target.in_features):
        shape = [int(lora.up.shape[0]), *(int(d) for d in lora.down.shape[1:])]
        raise ModelError(f"LoRA module '{name}' has the shape {shape} but the model's layer is "
                         f"{[target.out_features, target.in_features]}; is the LoRA for another model?")


def _tensors(source: Any) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    from lorasmith.network.files import load_lora_file

    return load_lora_file(source)[0]
