"""The trainable Flux.1 LoRA: sd-scripts' networks.lora_flux over diffusers' FluxTransformer2DModel.

One kohya module holds one `lora_down` [rank, in] and one `lora_up` [rows of the fused BFL layer, rank],
exactly the tensors sd-scripts saves. Where diffusers splits that layer (qkv, linear1), every covered
Linear gets a forward hook adding `scale * multiplier * up[its rows] @ dropout(down @ x)` to its output,
which is the fused layer's LoRA output cut into the same rows. The modules live inside the base's
components (as a child of the first layer they cover), so moving or preparing the base moves them;
`remove()` takes the hooks and children out again and leaves the base as it was.

sd-scripts' choices kept: down kaiming-uniform (a=sqrt(5)), up zeros (an untrained LoRA changes nothing);
alpha 0 means alpha = rank; scale = alpha / rank, alpha being network_alpha for every module (the per-type
and in_dims ranks too); LoRA weights in fp32 over a bf16/fp16 base; network_dropout on the down output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lorasmith.errors import ConfigError, ModelError
from lorasmith.families.flux.lora_targets import FluxArgs, FluxTarget, flux_targets
from lorasmith.models.base import BaseModel
from lorasmith.network.kohya_keys import UNET, component_module
from lorasmith.network.kohya_tensors import apply_max_norm, group_lora_tensors, lora_state_dict

CHILD = "lorasmith_flux_lora"  # the attribute a module takes on the first layer it covers


@dataclass(frozen=True)
class FluxLoraSpec:
    """Shape of the Flux LoRA (sd-scripts' keys: network_dim, network_alpha, network_dropout, network_args)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    train_unet: bool = True
    train_text_encoder: bool = True
    args: FluxArgs = FluxArgs()

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        number = (int, float)
        check(type(self.rank) is int and self.rank >= 1,
              f"rank (network_dim) must be a whole number of at least 1, got {self.rank!r}")
        check(isinstance(self.alpha, number) and not isinstance(self.alpha, bool) and self.alpha >= 0,
              f"alpha (network_alpha) must be 0 or more, got {self.alpha!r}")
        check(isinstance(self.dropout, number) and not isinstance(self.dropout, bool) and 0 <= self.dropout < 1,
              f"dropout (network_dropout) must be from 0 up to (not including) 1, got {self.dropout!r}")
        check(self.train_unet or self.train_text_encoder,
              "network_train_unet_only and network_train_text_encoder_only are both on; turn one of them off")

    @property
    def train_t5xxl(self) -> bool:
        return self.args.train_t5xxl

    def effective_alpha(self, rank: int) -> float:
        return float(self.alpha) if self.alpha else float(rank)

    @classmethod
    def from_config(cls, config: Any) -> "FluxLoraSpec":
        """The spec of a TrainConfig (sd-scripts' key names)."""
        return cls(rank=config.network_dim, alpha=config.network_alpha, dropout=config.network_dropout,
                   train_unet=not config.network_train_text_encoder_only,
                   train_text_encoder=not config.network_train_unet_only, args=FluxArgs.parse(config.network_args))


@dataclass
class FluxLoraModule:
    """One kohya module: its down/up weights and alpha, over the diffusers layers its target covers."""

    target: FluxTarget
    weights: Any  # torch.nn.ModuleDict of lora_down / lora_up (Linear), a child of the first covered layer
    alpha: float
    dropout: float = 0.0
    multiplier: float = 1.0

    @property
    def key(self) -> str:
        return self.target.key

    @property
    def down(self) -> Any:
        return self.weights["lora_down"].weight

    @property
    def up(self) -> Any:
        return self.weights["lora_up"].weight

    @property
    def scale(self) -> float:
        return self.alpha / self.down.shape[0]

    def rows_output(self, x: Any, start: int, stop: int) -> Any:
        """This module's contribution to rows start:stop of the fused layer's output for input `x`."""
        import torch.nn.functional as F

        # The weights (rank x in) take the input's dtype rather than the input fp32: a copy of a [B, 4096, 3072]
        # activation per covered layer would cost more than the LoRA; under autocast both end in half precision.
        hidden = F.linear(x, self.down.to(x.dtype))
        if self.dropout and self.weights.training:
            hidden = F.dropout(hidden, p=self.dropout)
        return F.linear(hidden, self.up[start:stop].to(x.dtype)) * (self.scale * self.multiplier)


def _weights(target: FluxTarget, rank: int, device: Any) -> Any:
    """sd-scripts' init: down kaiming-uniform (a=sqrt(5)), up zeros; fp32 whatever the base's dtype."""
    import torch

    down = torch.nn.Linear(target.in_features, rank, bias=False, device=device, dtype=torch.float32)
    up = torch.nn.Linear(rank, target.out_features, bias=False, device=device, dtype=torch.float32)
    torch.nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
    torch.nn.init.zeros_(up.weight)
    return torch.nn.ModuleDict({"lora_down": down, "lora_up": up})


@dataclass
class FluxLoraNetwork:
    """The Flux LoRA modules hooked into a base model's transformer and text encoders."""

    base: BaseModel
    spec: FluxLoraSpec
    modules: list[FluxLoraModule]
    blocks: Any = None  # SD's block-wise settings; Flux selects blocks through network_args instead
    multiplier: float = 1.0
    _hooks: list = field(default_factory=list, repr=False)

    def modules_count(self) -> int:
        return len(self.modules)

    def trainable_parameters(self) -> list:
        return [p for m in self.modules for p in (m.down, m.up)]

    def param_groups(self, unet_lr: float, text_encoder_lr: float) -> list[dict]:
        """Optimizer groups, text encoders first as in sd-scripts; a part whose lr is 0 is left out.

        CLIP-L and T5 share text_encoder_lr, as sd-scripts does when given one value."""
        groups = []
        for name, lr, is_unet in (("textencoder", text_encoder_lr, False), ("unet", unet_lr, True)):
            mine = [m for m in self.modules if (m.target.ref.component == UNET) == is_unet]
            if mine and lr:
                groups.append({"params": [p for m in mine for p in (m.down, m.up)], "lr": lr, "name": name})
        return groups

    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """scale_weight_norms on each module's whole (fused) weight change, as sd-scripts does."""
        return apply_max_norm(self.modules, max_norm)

    def set_scale(self, multiplier: float) -> None:
        """Scale every LoRA's contribution (1 = as trained, 0 = the base model's output)."""
        self.multiplier = float(multiplier)
        for module in self.modules:
            module.multiplier = self.multiplier

    def kohya_state_dict(self, dtype: Any = None) -> dict[str, Any]:
        """The tensors sd-scripts' networks.lora_flux saves: lora_down/lora_up weights and a 0-d alpha each."""
        return lora_state_dict(self.modules, dtype)

    def load_kohya_state_dict(self, tensors: dict[str, Any]) -> None:
        """Load a networks.lora_flux file's weights and alphas (the exact inverse of kohya_state_dict)."""
        import torch

        grouped = group_lora_tensors(tensors)
        ours = {m.key: m for m in self.modules}
        unknown = [name for name in grouped if name not in ours]
        if unknown:
            raise ModelError(f"the LoRA has weights for '{unknown[0]}', which this network does not train; use the "
                             "network_args (train_blocks, *_dim, in_dims, train_t5xxl) and UNet/text-encoder-only "
                             "settings it was trained with")
        missing = [key for key in ours if key not in grouped]
        if missing:
            raise ModelError(f"the LoRA has no weights for '{missing[0]}'; use the network_args and "
                             "UNet/text-encoder-only settings it was trained with")
        for name, found in grouped.items():
            module = ours[name]
            for label, mine, theirs in (("lora_down", module.down, found.down), ("lora_up", module.up, found.up)):
                if tuple(mine.shape) != tuple(theirs.shape):
                    raise ModelError(f"'{name}.{label}.weight' has shape {list(theirs.shape)} but this network "
                                     f"expects {list(mine.shape)}; use the network_dim and *_dim network_args it was "
                                     "trained with (a split_qkv file cannot be trained on)")
        with torch.no_grad():
            for name, found in grouped.items():
                module = ours[name]
                module.down.copy_(found.down)
                module.up.copy_(found.up)
                module.alpha = found.alpha

    def remove(self) -> None:
        """Take the hooks and the LoRA modules out again, leaving the base model as it was."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for module in self.modules:
            owner = component_module(self.base, module.target.ref.component).get_submodule(module.target.splits[0].path)
            delattr(owner, CHILD)
        self.modules = []


def create_flux_lora_network(base: BaseModel, spec: FluxLoraSpec) -> FluxLoraNetwork:
    """Hook the LoRA modules `spec` asks for into `base` (in place); every base weight is frozen.

    Works on a meta-device base too (the LoRA weights are then meta: shapes only)."""
    transformer, encoders = base.unet, list(base.text_encoders)
    if spec.train_t5xxl and spec.train_text_encoder and len(encoders) < 2:
        raise ModelError("network_args train_t5xxl=True, but this Flux model was loaded without its T5 text encoder; "
                         "load it with T5-XXL or remove train_t5xxl")
    targets = flux_targets(transformer, encoders[: 2 if spec.args.train_t5xxl else 1])
    counts = (len(transformer.transformer_blocks), len(transformer.single_transformer_blocks))
    chosen = []
    for target in targets:
        if (target.ref.component == UNET and not spec.train_unet) or \
                (target.ref.component != UNET and not spec.train_text_encoder):
            continue
        rank = spec.args.rank(target, spec.rank, *counts)
        if rank:  # rank 0 (a per-type dim or in_dims of 0, an unselected block): no module, as sd-scripts
            chosen.append((target, rank))
    for part in [transformer, *encoders]:
        part.requires_grad_(False)
    network = FluxLoraNetwork(base=base, spec=spec, modules=[])
    for target, rank in chosen:
        root = component_module(base, target.ref.component)
        layers = [root.get_submodule(split.path) for split in target.splits]
        weights = _weights(target, rank, layers[0].weight.device).train(layers[0].training)
        layers[0].add_module(CHILD, weights)  # inside the component: moved and prepared with it
        module = FluxLoraModule(target, weights, spec.effective_alpha(rank), spec.dropout)
        for layer, split in zip(layers, target.splits):
            network._hooks.append(layer.register_forward_hook(_hook(module, split.start, split.stop)))
        network.modules.append(module)
    return network


def _hook(module: FluxLoraModule, start: int, stop: int) -> Any:
    def add_lora(layer: Any, args: tuple, output: Any) -> Any:
        return output + module.rows_output(args[0], start, stop).to(output.dtype)

    return add_lora
