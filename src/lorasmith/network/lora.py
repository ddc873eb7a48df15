"""The trainable LoRA network: peft LoRA layers injected into a base model, kohya-compatible.

peft does the layer work (injection, forward, the conv variants); this module decides which
layers (sd-scripts' targets), sets ranks/alphas and initialisation as sd-scripts does, and
converts to and from kohya's tensor names:

    kohya `<name>.lora_down.weight` = peft `lora_A` weight  [rank, in] / [rank, in, kh, kw]
    kohya `<name>.lora_up.weight`   = peft `lora_B` weight  [out, rank] / [out, rank, 1, 1]
    kohya `<name>.alpha`            = peft `lora_alpha`, so the scale is alpha / rank in both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lorasmith.errors import ConfigError, ModelError
from lorasmith.models.base import BaseModel
from lorasmith.network.kohya_keys import UNET, component_module, component_names
from lorasmith.network.kohya_tensors import apply_max_norm, group_lora_tensors, lora_state_dict
from lorasmith.network.targets import Target, lora_targets

ADAPTER = "lorasmith"


@dataclass(frozen=True)
class LoraSpec:
    """Shape of the LoRA network; field names follow our LoRA words, sd-scripts' keys in the docs.

    rank: network_dim. alpha: network_alpha (0 means alpha = rank, as in sd-scripts).
    conv_rank/conv_alpha: conv_dim/conv_alpha for 3x3 convolutions (LoCon); 0 leaves them out.
    dropout: network_dropout, applied to the down projection's output while training.
    """

    rank: int
    alpha: float
    conv_rank: int = 0
    conv_alpha: float = 0
    dropout: float = 0.0
    train_unet: bool = True
    train_text_encoder: bool = True
    block_args: tuple = ()  # (name, value) of sd-scripts' block-wise network_args (network/blocks.py)

    def __post_init__(self) -> None:
        _check(isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 1,
               f"rank (network_dim) must be a whole number of at least 1, got {self.rank!r}")
        _check(isinstance(self.conv_rank, int) and not isinstance(self.conv_rank, bool) and self.conv_rank >= 0,
               f"conv_rank (conv_dim) must be a whole number, 0 or more, got {self.conv_rank!r}")
        _check(_number(self.alpha) and self.alpha >= 0, f"alpha (network_alpha) must be 0 or more, got {self.alpha!r}")
        _check(_number(self.conv_alpha) and self.conv_alpha >= 0,
               f"conv_alpha must be 0 or more, got {self.conv_alpha!r}")
        _check(_number(self.dropout) and 0 <= self.dropout < 1,
               f"dropout (network_dropout) must be from 0 up to (not including) 1, got {self.dropout!r}")
        _check(self.train_unet or self.train_text_encoder,
               "train_unet and train_text_encoder are both off (network_train_unet_only and "
               "network_train_text_encoder_only together); turn one of them off")

    @property
    def effective_alpha(self) -> float:
        return float(self.alpha) if self.alpha else float(self.rank)

    @property
    def effective_conv_alpha(self) -> float:
        return float(self.conv_alpha) if self.conv_alpha else float(self.conv_rank)

    @classmethod
    def from_config(cls, config: Any) -> "LoraSpec":
        """The spec of a TrainConfig (sd-scripts' key names)."""
        return cls(
            rank=config.network_dim, alpha=config.network_alpha, conv_rank=config.conv_dim,
            conv_alpha=config.conv_alpha, dropout=config.network_dropout,
            train_unet=not config.network_train_text_encoder_only,
            train_text_encoder=not config.network_train_unet_only, block_args=block_args(config.network_args),
        )


def block_args(network_args: list[str]) -> tuple:
    """The block-wise settings among sd-scripts' network_args, as (name, value) pairs."""
    from lorasmith.network.blocks import BLOCK_ARGS

    pairs = (item.partition("=") for item in network_args)
    return tuple((name.strip(), value.strip()) for name, _, value in pairs if name.strip() in BLOCK_ARGS)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class LoraModule:
    """One wrapped layer: where it is, its kohya name, and the peft layer holding its weights."""

    target: Target
    layer: Any  # peft.tuners.lora.LoraLayer
    alpha: float

    @property
    def key(self) -> str:
        return self.target.ref.key

    @property
    def down(self) -> Any:
        return self.layer.lora_A[ADAPTER].weight

    @property
    def up(self) -> Any:
        return self.layer.lora_B[ADAPTER].weight


@dataclass
class LoraNetwork:
    """The LoRA layers injected into a base model's UNet and text encoders."""

    base: BaseModel
    spec: LoraSpec
    modules: list[LoraModule]
    blocks: Any = None  # network.blocks.BlockWeights, with block-wise settings
    multiplier: float = 1.0
    _hooks: list = field(default_factory=list, repr=False)

    def modules_count(self) -> int:
        return len(self.modules)

    def trainable_parameters(self) -> list:
        return [p for m in self.modules for p in (m.down, m.up)]

    def param_groups(self, unet_lr: float, text_encoder_lr: float) -> list[dict]:
        """Optimizer groups, text encoders first as in sd-scripts; a part whose lr is 0 is left out."""
        groups = []
        for name, lr, is_unet in (("textencoder", text_encoder_lr, False), ("unet", unet_lr, True)):
            mine = [m for m in self.modules if (m.target.ref.component == UNET) == is_unet]
            if is_unet and self.blocks is not None and self.blocks.lr_weights is not None:
                groups += self._block_groups(mine, lr)  # sd-scripts: one group per UNet block
            elif mine and lr:
                groups.append({"params": [p for m in mine for p in (m.down, m.up)], "lr": lr, "name": name})
        return groups

    def _block_groups(self, modules: list, lr: float) -> list[dict]:
        from lorasmith.network.blocks import block_index

        by_block: dict[int, list] = {}
        sdxl = self.base.family.name == "sdxl"
        for m in modules:
            by_block.setdefault(block_index(m.key, sdxl), []).append(m)
        return [{"params": [p for m in found for p in (m.down, m.up)], "lr": lr * self.blocks.lr_weight(index),
                 "name": f"unet_block{index}"} for index, found in sorted(by_block.items())
                if lr * self.blocks.lr_weight(index)]

    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """scale_weight_norms: see network.kohya_tensors.apply_max_norm."""
        return apply_max_norm(self.modules, max_norm)

    def set_scale(self, multiplier: float) -> None:
        """Scale every LoRA's contribution (1 = as trained, 0 = the base model's output)."""
        self.multiplier = float(multiplier)
        for module in self.modules:
            module.layer.set_scale(ADAPTER, self.multiplier)

    def kohya_state_dict(self, dtype: Any = None) -> dict[str, Any]:
        """The tensors sd-scripts would save: lora_down/lora_up weights and a 0-d alpha each."""
        return lora_state_dict(self.modules, dtype)

    def load_kohya_state_dict(self, tensors: dict[str, Any]) -> None:
        """Load a kohya LoRA's weights and alphas into this network (exact inverse of kohya_state_dict)."""
        import torch

        grouped = group_lora_tensors(tensors)
        ours = {m.key: m for m in self.modules}
        unknown = [name for name in grouped if name not in ours]
        if unknown:
            raise ModelError(f"the LoRA has weights for '{unknown[0]}', which this network does not train; "
                             "use the same conv_dim and UNet/text-encoder-only settings it was trained with")
        missing = [key for key in ours if key not in grouped]
        if missing:
            raise ModelError(f"the LoRA has no weights for '{missing[0]}'; use the same conv_dim and "
                             "UNet/text-encoder-only settings it was trained with")
        for name, found in grouped.items():
            module = ours[name]
            for label, ours_t, theirs in (("lora_down", module.down, found.down), ("lora_up", module.up, found.up)):
                if tuple(ours_t.shape) != tuple(theirs.shape):
                    raise ModelError(f"'{name}.{label}.weight' has shape {list(theirs.shape)} but this network "
                                     f"expects {list(ours_t.shape)}; use the network_dim/conv_dim it was trained with")
        with torch.no_grad():
            for name, found in grouped.items():
                module = ours[name]
                module.down.copy_(found.down)
                module.up.copy_(found.up)
                module.alpha = found.alpha
                module.layer.lora_alpha[ADAPTER] = found.alpha
                module.layer.set_scale(ADAPTER, self.multiplier)

    def remove(self) -> None:
        """Take the LoRA layers out again, leaving the base model as it was before injection."""
        for hook in self._hooks:
            hook.remove()
        roots = {}
        for m in self.modules:
            root = roots.setdefault(m.target.ref.component, component_module(self.base, m.target.ref.component))
            root.set_submodule(m.target.ref.path, m.layer.get_base_layer())
        for root in roots.values():
            if hasattr(root, "peft_config"):  # peft's record of the adapter: a new network would warn of two
                del root.peft_config
        self.modules = []


def create_lora_network(base: BaseModel, spec: LoraSpec) -> LoraNetwork:
    """Inject LoRA layers (peft) into `base` in place; every base weight is frozen."""
    from lorasmith.network.blocks import BlockWeights

    blocks = BlockWeights.parse(dict(spec.block_args), base.family.name == "sdxl")
    targets = lora_targets(
        base.family, base.unet, base.text_encoders,
        train_unet=spec.train_unet, train_text_encoder=spec.train_text_encoder,
        conv=spec.conv_rank > 0 or (blocks is not None and blocks.conv_dims is not None),
    )
    shapes = {t.ref.key: _rank_and_alpha(t, spec, blocks, base.family.name == "sdxl") for t in targets}
    targets = [t for t in targets if shapes[t.ref.key][0] > 0]  # a block at rank 0 gets no LoRA
    components = component_names(base.family)[1:] + [UNET]  # text encoders first, as sd-scripts
    for component in components:
        component_module(base, component).requires_grad_(False)
    modules: list[LoraModule] = []
    for component in components:
        mine = [t for t in targets if t.ref.component == component]
        if mine:
            modules += _inject(component_module(base, component), mine, spec, shapes)
    network = LoraNetwork(base=base, spec=spec, modules=modules, blocks=blocks)
    if spec.dropout:
        network._hooks = [_add_dropout(m, spec.dropout) for m in modules]
    return network


def _rank_and_alpha(target: Target, spec: LoraSpec, blocks, sdxl: bool) -> tuple[int, float]:
    """A module's rank and alpha: the conv or network ones, or its UNet block's (block_dims ...)."""
    conv = target.uses_conv_rank
    rank, alpha = (spec.conv_rank, spec.effective_conv_alpha) if conv else (spec.rank, spec.effective_alpha)
    if blocks is None or target.ref.component != UNET:
        return rank, alpha
    from lorasmith.network.blocks import block_index

    rank, alpha = blocks.rank_and_alpha(block_index(target.ref.key, sdxl), conv, rank, alpha)
    return rank, (float(alpha) if alpha else float(rank))  # alpha 0 means alpha = rank, as in sd-scripts


def _inject(root: Any, targets: list[Target], spec: LoraSpec, shapes: dict) -> list[LoraModule]:
    """One peft adapter over `targets`; a module whose rank or alpha is not the network's (3x3 convolutions
    at conv_dim, block-wise dims) gets its own through rank_pattern / alpha_pattern."""
    from peft import LoraConfig, inject_adapter_in_model

    own = {re.escape(t.ref.path): shapes[t.ref.key] for t in targets
           if shapes[t.ref.key] != (spec.rank, spec.effective_alpha)}
    config = LoraConfig(
        r=spec.rank, lora_alpha=spec.effective_alpha, target_modules=[t.ref.path for t in targets],
        rank_pattern={p: rank for p, (rank, _) in own.items()}, alpha_pattern={p: a for p, (_, a) in own.items()},
        lora_dropout=0.0, init_lora_weights=True, bias="none",
    )
    # sd-scripts' init: lora_down kaiming-uniform (a=sqrt(5)), lora_up zeros, which is peft's
    # default; an untrained LoRA therefore changes nothing.
    inject_adapter_in_model(config, root, adapter_name=ADAPTER)
    modules = []
    for target in targets:
        layer = root.get_submodule(target.ref.path)
        if ADAPTER not in getattr(layer, "lora_A", {}):
            raise RuntimeError(f"peft did not wrap {target.ref.path}")
        alpha = shapes[target.ref.key][1]
        for part in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]):
            # peft gives the LoRA the base layer's dtype; over an fp16/bf16 base (mixed precision)
            # it is trained in fp32, as sd-scripts does (fp16 weights cannot take GradScaler's steps)
            part.float()
            part.weight.requires_grad_(True)
        modules.append(LoraModule(target=target, layer=layer, alpha=alpha))
    return modules


def _add_dropout(module: LoraModule, p: float) -> Any:
    """sd-scripts' network_dropout drops the down projection's output (peft's lora_dropout drops its
    input instead), so it is a forward hook on lora_A rather than peft's option."""
    import torch.nn.functional as F

    def hook(layer: Any, inputs: Any, output: Any) -> Any:
        return F.dropout(output, p=p, training=layer.training)

    return module.layer.lora_A[ADAPTER].register_forward_hook(hook)
