"""The weight change each module of a LoRA file makes, whatever network type wrote it.

One face for every consumer that applies a LoRA (our merge, the toolbox, samples, generate):
`module_deltas(tensors)` groups a file's tensors per module and `ModuleDelta.merged(weight, m)`
gives the weight with the module applied at multiplier m. Plain kohya LoRA/LoCon modules are
computed here (exact, and the common case); LyCORIS modules (LoHa, LoKr, iA3, GLoRA, Tucker,
DoRA's `dora_scale`, full `diff`) are rebuilt with lycoris-lora's own module classes, so the
math is the library's, the same as in A1111's and ComfyUI's LyCORIS support.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorasmith.errors import ModelError
from lorasmith.network.kohya_tensors import ALPHA, DOWN, UP, LoraModuleTensors

PLAIN_SUFFIXES = (DOWN, UP, ALPHA)


@dataclass
class ModuleDelta:
    """One module of a LoRA file: its name, network type ("lora" or a LyCORIS class) and tensors."""

    name: str
    algo: str  # "lora" for kohya lora_down/lora_up (LoRA, LoCon), else the LyCORIS module kind
    tensors: dict[str, Any]  # suffix ("lora_down.weight", "hada_w1_a", ...) -> tensor

    @property
    def plain(self) -> LoraModuleTensors | None:
        """The down/up/alpha view of a plain LoRA module (None for other types)."""
        if self.algo != "lora":
            return None
        down, up = self.tensors[DOWN], self.tensors[UP]
        alpha = float(self.tensors[ALPHA].float().item()) if ALPHA in self.tensors else float(down.shape[0])
        return LoraModuleTensors(down, up, alpha)

    def delta(self, weight: Any, multiplier: float = 1.0) -> Any:
        """merged(weight, m) - weight, in float32."""
        return self.merged(weight, multiplier) - weight.float()

    def merged(self, weight: Any, multiplier: float = 1.0) -> Any:
        """`weight` (a Linear/Conv2d weight) with this module applied at `multiplier`, in float32."""
        plain = self.plain
        if plain is not None:
            from lorasmith.network.apply import lora_delta

            return weight.float() + float(multiplier) * lora_delta(plain, tuple(weight.shape)).to(weight.device)
        return _lycoris_merged(self, weight, float(multiplier))


def module_deltas(tensors: dict[str, Any]) -> dict[str, ModuleDelta]:
    """module name -> ModuleDelta; ModelError naming the first module no known network type wrote."""
    parts: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        name, dot, suffix = key.partition(".")
        if not dot:
            raise ModelError(f"'{key}' is not a LoRA tensor (no '<module>.<part>' name); pick a LoRA file")
        parts.setdefault(name, {})[suffix] = tensor
    found = {}
    for name, module_tensors in parts.items():
        found[name] = ModuleDelta(name, _algo(name, module_tensors), module_tensors)
    return found


def _algo(name: str, module_tensors: dict[str, Any]) -> str:
    suffixes = set(module_tensors)
    if suffixes <= set(PLAIN_SUFFIXES):
        if DOWN not in suffixes or UP not in suffixes:
            missing = DOWN if DOWN not in suffixes else UP
            raise ModelError(f"the LoRA has no '{name}.{missing}' (the file is incomplete); save or download it again")
        down, up = module_tensors[DOWN], module_tensors[UP]
        if down.shape[0] != up.shape[1]:
            raise ModelError(f"'{name}' has lora_down rank {down.shape[0]} but lora_up rank {up.shape[1]}; "
                             "the file is damaged, save or download it again")
        return "lora"
    kind = _lycoris_class(name, module_tensors)
    if kind is None:
        odd = sorted(suffixes - set(PLAIN_SUFFIXES))[0]
        raise ModelError(f"'{name}.{odd}' is not a tensor of a LoRA or LyCORIS network lorasmith knows; "
                         "is it a LoRA file at all?")
    return kind.__name__


def _lycoris_class(name: str, module_tensors: dict[str, Any]) -> Any:
    from lycoris.modules import MODULE_LIST

    keyed = {f"{name}.{suffix}": t for suffix, t in module_tensors.items()}
    for module_class in MODULE_LIST:
        if module_class.algo_check(keyed, name):
            return module_class
    return None


def _lycoris_merged(delta: ModuleDelta, weight: Any, multiplier: float) -> Any:
    """Rebuild the module with lycoris-lora over a stand-in layer holding `weight`, and merge it."""
    import torch
    from lycoris.modules import MODULE_LIST, make_module

    module_class = next(c for c in MODULE_LIST if c.__name__ == delta.algo)
    keyed = {f"{delta.name}.{suffix}": t.float() for suffix, t in delta.tensors.items()}
    params = module_class.extract_state_dict(keyed, delta.name)
    host = _stand_in_layer(weight.float())
    module = make_module(module_class, params, delta.name, host)
    if module is None:
        raise ModelError(f"lycoris-lora cannot rebuild '{delta.name}' ({delta.algo}) from its tensors; "
                         "the file may be from a newer LyCORIS")
    with torch.no_grad():
        merged, _ = module.get_merged_weight(multiplier, tuple(weight.shape), weight.device)
    return merged.float().reshape(weight.shape)


def _stand_in_layer(weight: Any) -> Any:
    """A Linear/Conv2d on the meta device whose weight is `weight` (no copy)."""
    import torch

    if weight.dim() == 2:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    elif weight.dim() == 4:
        layer = torch.nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), bias=False, device="meta")
    else:
        raise ModelError(f"a LyCORIS module on a {weight.dim()}-d weight cannot be merged; only Linear and Conv2d")
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    return layer
