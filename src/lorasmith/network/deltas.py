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
from lorasmith.network.kohya_tensors import ALPHA, DOWN, UP, LoraModuleTensors, check_plain_module

PLAIN_SUFFIXES = (DOWN, UP, ALPHA)
# Tensor name endings that only LoRA/LyCORIS modules have: how a LoRA file is told from a checkpoint.
MODULE_MARKERS = (".lora_down.weight", ".lora_up.weight", ".hada_w1_a", ".lokr_w1", ".lokr_w1_a", ".on_input",
                  ".a1.weight", ".w_norm", ".diff", ".oft_blocks", ".oft_diag")
BIAS_ALGOS = ("NormModule", "FullModule")  # LyCORIS kinds that change a layer's bias as well


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

    @property
    def changes_bias(self) -> bool:
        return self.algo in BIAS_ALGOS

    def weight_shape(self) -> tuple[int, ...] | None:
        """The shape of the weight a plain module adds to (None for LyCORIS: its kind decides)."""
        plain = self.plain
        if plain is None:
            return None
        from lorasmith.network.apply import delta_shape

        return delta_shape(plain)

    def delta(self, weight: Any, multiplier: float = 1.0) -> Any:
        """merged(weight, m) - weight, in float32."""
        return self.merged(weight, multiplier) - weight.float()

    def merged(self, weight: Any, multiplier: float = 1.0, bias: Any = None) -> Any:
        """`weight` (of a Linear, Conv2d or norm layer) with this module applied at `multiplier`, in float32."""
        plain = self.plain
        if plain is not None:
            from lorasmith.network.apply import lora_delta

            return weight.float() + float(multiplier) * lora_delta(plain, tuple(weight.shape)).to(weight.device)
        return _lycoris_merged(self, weight, bias, float(multiplier))[0]

    def merged_bias(self, weight: Any, bias: Any, multiplier: float = 1.0) -> Any:
        """The layer's bias with this module applied (unchanged unless its kind changes biases), float32."""
        if not self.changes_bias or bias is None:
            return bias
        found = _lycoris_merged(self, weight, bias, float(multiplier))[1]
        return bias.float() if found is None else found.float().reshape(bias.shape)


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
        check_plain_module(name, module_tensors)
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


def _lycoris_merged(delta: ModuleDelta, weight: Any, bias: Any, multiplier: float) -> tuple[Any, Any]:
    """Rebuild the module with lycoris-lora over a stand-in layer holding `weight`, and merge it."""
    import torch
    from lycoris.modules import MODULE_LIST, make_module

    module_class = next(c for c in MODULE_LIST if c.__name__ == delta.algo)
    keyed = {f"{delta.name}.{suffix}": t.float() for suffix, t in delta.tensors.items()}
    dora = keyed.get(f"{delta.name}.dora_scale")
    # lycoris-lora rebuilds DoRA only in its default (out, 1) layout; the (1, in) one A1111 and ComfyUI read
    # (and we write) is rebuilt without it and given its scale and side afterwards
    params = [None if k == "dora_scale" else keyed.get(f"{delta.name}.{k}") for k in module_class.weight_list]
    host = _stand_in_layer(weight.float(), None if bias is None else bias.float())
    try:
        module = _ia3_module(module_class, keyed, delta.name, host) if delta.algo == "IA3Module" else \
            make_module(module_class, params, delta.name, host)
        if module is None:
            raise ValueError("not rebuildable")
        if dora is not None:
            module.wd, module.wd_on_out = True, dora.shape[0] != 1 or weight.shape[0] == 1
            module.dora_scale = torch.nn.Parameter(dora, requires_grad=False)
        with torch.no_grad():
            merged, new_bias = _merged_as_forward(module, delta.algo, weight.float(), multiplier)
    except (RuntimeError, ValueError, TypeError, AttributeError) as error:
        raise ModelError(f"LyCORIS module '{delta.name}' ({delta.algo}) does not fit a layer of shape "
                         f"{list(weight.shape)} ({type(error).__name__}); is the LoRA for another model?") from None
    return merged.float().reshape(weight.shape), new_bias


def _ia3_module(module_class: Any, keyed: dict, name: str, host: Any) -> Any:
    """lycoris-lora 4.1.3 rebuilds iA3 from `weight` alone (dropping `on_input`, which decides the side)."""
    import torch

    module = module_class(name, host, 1, train_on_input=bool(int(keyed[f"{name}.on_input"])))
    with torch.no_grad():
        module.weight.copy_(keyed[f"{name}.weight"])
    return module


# lycoris-lora 4.1.3's get_diff_weight for these applies alpha/rank a second time on top of get_weight's,
# unlike their own forward (and A1111's and ComfyUI's LyCORIS code): the merge follows the forward.
_SCALED_IN_GET_WEIGHT = ("LohaModule", "LokrModule")


def _merged_as_forward(module: Any, algo: str, weight: Any, multiplier: float) -> tuple[Any, Any]:
    """The weight (and bias) the module's forward computes with, at `multiplier`."""
    shape = tuple(weight.shape)
    if algo not in _SCALED_IN_GET_WEIGHT:
        return module.get_merged_weight(multiplier, shape, weight.device)
    diff = module.get_weight(shape).reshape(shape) * module.scalar
    if module.wd:
        return module.apply_weight_decompose(weight + diff, multiplier), None
    return weight + diff * multiplier, None


def _stand_in_layer(weight: Any, bias: Any = None) -> Any:
    """A Linear/Conv2d/LayerNorm built on the meta device whose weight is `weight` (no copy)."""
    import torch

    if weight.dim() == 1:
        layer = torch.nn.LayerNorm(weight.shape[0], device="meta")
        layer.bias = torch.nn.Parameter(bias if bias is not None else torch.zeros_like(weight), requires_grad=False)
    elif weight.dim() == 2:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    elif weight.dim() == 4:
        layer = torch.nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), bias=False, device="meta")
    else:
        raise ModelError(f"a LyCORIS module on a {weight.dim()}-d weight cannot be merged; only Linear, Conv2d, norms")
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    return layer
