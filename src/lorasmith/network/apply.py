"""Merge kohya LoRA files into a base model's weights, each at its own weight, and undo it exactly.

For every module: W += weight * (alpha / rank) * (up @ down), with the delta of a 1x1
convolution computed on the squeezed matrices and that of a 3x3 convolution as the
composition of the two convolutions (down's kernel followed by up's 1x1), as sd-scripts does.
The merge is computed in float32 and cast back to the weight's dtype. Only touched weights
are copied, so `restore()` puts back the very same bits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from lorasmith.errors import ModelError
from lorasmith.models.base import BaseModel
from lorasmith.network.deltas import ModuleDelta, module_deltas
from lorasmith.network.files import load_lora_file
from lorasmith.network.kohya_keys import key_table, resolve_module
from lorasmith.network.kohya_tensors import LoraModuleTensors


@dataclass
class AppliedLoras:
    """LoRAs merged into a base model; `restore()` gives the original weights back, bit for bit."""

    base: BaseModel
    originals: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # 'module.weight' -> (param, copy)
    modules_touched: int = 0

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for weight, original in self.originals.values():
                weight.copy_(original)
        self.originals.clear()

    def __enter__(self) -> "AppliedLoras":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()


def lora_delta(lora: LoraModuleTensors, shape: tuple[int, ...]) -> Any:
    """(alpha / rank) * up @ down in float32, shaped like a weight of `shape`."""
    import torch

    down, up = lora.down.float(), lora.up.float()
    if down.dim() == 2:
        delta = up @ down
    elif tuple(down.shape[2:]) == (1, 1):
        delta = (up.flatten(1) @ down.flatten(1))[:, :, None, None]
    else:
        delta = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    return delta.reshape(shape) * lora.scale


def delta_shape(lora: LoraModuleTensors) -> tuple[int, ...]:
    """The shape of the weight a LoRA module adds to: [out, in] or [out, in, kh, kw]."""
    return (int(lora.up.shape[0]), int(lora.down.shape[1]), *(int(d) for d in lora.down.shape[2:]))


def apply_loras(base: BaseModel, loras: list[tuple[str | os.PathLike | dict[str, Any], float]]) -> Any:
    """Merge each (file or kohya tensors, weight) into `base`'s weights, in order, the family's way;
    the result's `restore()` undoes it."""
    from lorasmith.families import family_behaviour

    return family_behaviour(base.family).apply_loras(base, loras)


def apply_kohya_loras(base: BaseModel, loras: list[tuple[str | os.PathLike | dict[str, Any], float]]) -> AppliedLoras:
    """Merge each (file or kohya tensors, weight) into a UNet family's weights, in order.

    Any network type a kohya-named file holds (LoRA, LoCon, LyCORIS, DoRA) merges through its
    ModuleDelta; LyCORIS norm modules (train_norm) change the norm layers' weight and bias.
    """
    import torch

    table = key_table(base, norms=True)
    grouped = [module_deltas(_tensors(source)) for source, _ in loras]
    for modules in grouped:  # check everything before touching a weight
        _check_fits(base, table, modules)
    applied = AppliedLoras(base)
    with torch.no_grad():
        for modules, (_, weight) in zip(grouped, loras):
            for name, module in modules.items():
                layer = resolve_module(base, table[name])
                for kind, param in (("weight", layer.weight), ("bias", getattr(layer, "bias", None))):
                    if param is None or (kind == "bias" and not module.changes_bias):
                        continue
                    key = f"{name}.{kind}"
                    if key not in applied.originals:
                        applied.originals[key] = (param, param.detach().clone())
                    merged = module.merged(param, float(weight)) if kind == "weight" else \
                        module.merged_bias(layer.weight, param, float(weight))
                    param.copy_(merged.to(param.device, param.dtype))
        applied.modules_touched = len({key.rpartition(".")[0] for key in applied.originals})
    return applied


def _check_fits(base: BaseModel, table: dict, modules: dict[str, ModuleDelta]) -> None:
    for name, module in modules.items():
        if name not in table:
            raise ModelError(f"LoRA module '{name}' matches no layer of this {base.family.title} model; "
                             "is the LoRA for another model family?")
        shape = tuple(resolve_module(base, table[name]).weight.shape)
        found = module.weight_shape()
        if found is not None and found != shape:
            raise ModelError(f"LoRA module '{name}' has the shape {list(found)} but the model's layer is "
                             f"{list(shape)}; is the LoRA for another model family?")


def _tensors(source: Any) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    return load_lora_file(source)[0]
