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


def lora_state_dict(modules: list, dtype: Any = None) -> dict[str, Any]:
    """The tensors sd-scripts saves for LoRA modules (each with `key`, `down`, `up`, `alpha`): lora_down /
    lora_up weights and a 0-d alpha each, in `dtype` (fp16 by default)."""
    import torch

    dtype = dtype or torch.float16
    tensors = {}
    for m in modules:
        tensors[f"{m.key}.{DOWN}"] = m.down.detach().to(dtype=dtype, copy=True).contiguous()
        tensors[f"{m.key}.{UP}"] = m.up.detach().to(dtype=dtype, copy=True).contiguous()
        tensors[f"{m.key}.{ALPHA}"] = torch.tensor(m.alpha, dtype=dtype)
    return tensors


def apply_max_norm(modules: list, max_norm: float) -> tuple[int, float, float]:
    """scale_weight_norms (sd-scripts' max-norm regularisation): scale each module's down and up alike so that
    the norm of the weight change it makes, (alpha / rank) up @ down, stays at most `max_norm`.

    Returns (modules scaled, mean norm, largest norm) after scaling, for the progress line.
    """
    import torch

    scaled, norms = 0, []
    with torch.no_grad():
        for module in modules:
            up, down = module.up.flatten(1).float(), module.down.flatten(1).float()
            # |up @ down|_F^2 = sum((up^T up) * (down down^T)): rank x rank products, no full delta
            squared = ((up.T @ up) * (down @ down.T)).sum().clamp(min=0)
            norm = float(squared.sqrt()) * module.alpha / module.down.shape[0]
            if norm > max_norm:
                root = (max_norm / norm) ** 0.5
                module.down.mul_(root)
                module.up.mul_(root)
                scaled, norm = scaled + 1, max_norm
            norms.append(norm)
    return scaled, sum(norms) / max(len(norms), 1), max(norms, default=0.0)
