"""The tensors of a kohya LoRA file, grouped per module, with clear words for what we cannot use.

A kohya LoRA holds, per module name (no dots in it), `<name>.lora_down.weight`,
`<name>.lora_up.weight` and usually `<name>.alpha` (old files lack it: alpha = rank then).
Other suffixes come from LyCORIS or DoRA networks, which a plain LoRA cannot represent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorasmith.errors import ModelError

DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"

# Suffix (or fragment) -> what kind of network wrote it.
_UNSUPPORTED = {
    "dora_scale": "a DoRA LoRA",
    "hada_": "a LyCORIS LoHa",
    "lokr_": "a LyCORIS LoKr",
    "lora_mid": "a LyCORIS LoCon with Tucker decomposition",
    "diff": "a LyCORIS full-weight difference",
    "lora_A": "a diffusers/peft-format LoRA (not kohya's)",
    "lora_B": "a diffusers/peft-format LoRA (not kohya's)",
    "w_norm": "a LyCORIS GLoRA/IA3 network",
    "oft_": "an OFT network",
}


@dataclass
class LoraModuleTensors:
    """The down/up weights of one module and the alpha it was trained with."""

    down: Any  # [rank, in] or [rank, in, kh, kw]
    up: Any  # [out, rank] or [out, rank, 1, 1]
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _unsupported(key: str) -> ModelError:
    suffix = key.partition(".")[2]
    for fragment, kind in _UNSUPPORTED.items():
        if fragment in suffix:
            return ModelError(f"'{key}' belongs to {kind}, which lorasmith cannot load; use a plain kohya LoRA "
                              "(networks.lora)")
    return ModelError(f"'{key}' is not a kohya LoRA tensor (expected <name>.lora_down.weight, .lora_up.weight "
                      "or .alpha); use a plain kohya LoRA (networks.lora)")


def group_lora_tensors(tensors: dict[str, Any]) -> dict[str, LoraModuleTensors]:
    """module name -> its tensors; raises ModelError naming the first key we cannot use."""
    parts: dict[str, dict[str, Any]] = {}
    for key in tensors:
        name, _, suffix = key.partition(".")
        if suffix not in (DOWN, UP, ALPHA):
            raise _unsupported(key)
        parts.setdefault(name, {})[suffix] = tensors[key]
    grouped = {}
    for name, found in parts.items():
        check_plain_module(name, found)
        down, up = found[DOWN], found[UP]
        alpha = float(found[ALPHA].float().item()) if ALPHA in found else float(down.shape[0])
        grouped[name] = LoraModuleTensors(down, up, alpha)
    return grouped


def check_plain_module(name: str, found: dict[str, Any]) -> None:
    """A module's down/up/alpha tensors are complete and of one rank; ModelError saying what to do if not."""
    if DOWN not in found or UP not in found:
        missing = DOWN if DOWN not in found else UP
        raise ModelError(f"the LoRA has no '{name}.{missing}' (the file is incomplete); save or download it again")
    down, up = found[DOWN], found[UP]
    if down.shape[0] != up.shape[1]:
        raise ModelError(f"'{name}' has lora_down rank {down.shape[0]} but lora_up rank {up.shape[1]}; "
                         "the file is damaged, save or download it again")
