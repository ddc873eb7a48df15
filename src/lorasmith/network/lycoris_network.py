"""LyCORIS networks (LoHa, LoKr, iA3, GLoRA, LoCon, DoRA) from lycoris-lora, with LoraNetwork's face.

sd-scripts users train these as `network_module = "lycoris.kohya"` with `network_args`
("algo=loha", "preset=full", "factor=8", "dora_wd=True", ...); lycoris-lora builds the modules,
their forward and their tensors. This adapter picks the targets, names every module with
sd-scripts' kohya key (SDXL's UNet in the original layout, text encoders under `text_model.`:
lycoris names modules after the model it is given, which here is diffusers' and transformers
5's), and gives the trainer the same calls as the peft LoRA network.

Two things lycoris-lora keeps as class state are set on every creation: its presets name
sd-scripts' own attention classes (`CrossAttention`), which diffusers calls `Attention`, and a
preset's name/module maps outlive the network that used them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from lorasmith.errors import ConfigError, ModelError
from lorasmith.models.base import BaseModel
from lorasmith.network.kohya_keys import UNET, component_module, component_names, kohya_key

LYCORIS_MODULE = "lycoris.kohya"
TRAINED_ALGOS = ("lora", "locon", "loha", "lokr", "ia3", "glora")
# network_args lycoris.kohya reads (sd-scripts passes them on as keyword arguments)
LYCORIS_ARGS = frozenset({
    "algo", "preset", "conv_dim", "conv_alpha", "dropout", "rank_dropout", "module_dropout", "use_tucker",
    "use_cp", "use_conv_cp", "disable_conv_cp", "use_scalar", "block_size", "train_norm", "constraint",
    "constrain", "rescaled", "dora_wd", "wd_on_output", "full_matrix", "bypass_mode", "rs_lora",
    "unbalanced_factorization", "factor", "decompose_both", "rank_dropout_scale", "train_on_input",
    "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
})
# Arguments that make sd-scripts' networks.lora go through this path (lycoris' algo=lora, same targets).
PLAIN_VIA_LYCORIS = frozenset({"dora_wd", "rank_dropout", "module_dropout"})
# The layers networks.lora wraps, as a lycoris preset (without and with conv_dim).
_NETWORKS_LORA_PRESET = {"enable_conv": False, "unet_target_module": ["Transformer2DModel"], "unet_target_name": [],
                         "text_encoder_target_module": ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"],
                         "text_encoder_target_name": []}
_NETWORKS_LOCON_PRESET = {**_NETWORKS_LORA_PRESET, "enable_conv": True,
                          "unet_target_module": ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]}
_DIFFUSERS_NAMES = {"CrossAttention": "Attention", "SelfAttention": "Attention"}
# diffusers' UNet keeps time_embedding.linear_1/2 (which the presets name) in a TimestepEmbedding, a
# class the presets also list for another model: matched twice, lycoris would refuse the duplicate.
_NOT_IN_SD_UNETS = ("TimestepEmbedding",)
_CREATION = threading.Lock()  # lycoris' presets are class attributes


@dataclass(frozen=True)
class LycorisSpec:
    """A LyCORIS network: sd-scripts' network_dim/alpha, conv_dim/alpha and its network_args."""

    algo: str
    rank: int
    alpha: float
    args: tuple = ()  # (name, value) of the other network_args, as text
    conv_rank: int = 0
    conv_alpha: float = 0
    dropout: float = 0.0
    train_unet: bool = True
    train_text_encoder: bool = True
    plain_targets: bool = False  # networks.lora's layers (DoRA / rank dropout on a plain LoRA)

    def __post_init__(self) -> None:
        if self.algo not in TRAINED_ALGOS:
            raise ConfigError(f"LyCORIS algo={self.algo} is not trained by lorasmith; use one of: "
                              f"{', '.join(TRAINED_ALGOS)}")
        if not self.train_unet and not self.train_text_encoder:
            raise ConfigError("network_train_unet_only and network_train_text_encoder_only are both on; turn one off")

    @classmethod
    def from_config(cls, config: Any) -> "LycorisSpec":
        args = network_args_of(config)
        plain = config.network_module.strip() != LYCORIS_MODULE
        return cls(
            algo="lora" if plain else args.pop("algo", "lora").lower(), rank=config.network_dim,
            alpha=config.network_alpha, args=tuple(sorted((k, v) for k, v in args.items() if k != "algo")),
            conv_rank=config.conv_dim, conv_alpha=config.conv_alpha, dropout=config.network_dropout,
            train_unet=not config.network_train_text_encoder_only,
            train_text_encoder=not config.network_train_unet_only, plain_targets=plain,
        )


def network_args_of(config: Any) -> dict[str, str]:
    pairs = (item.partition("=") for item in config.network_args)
    return {name.strip(): value.strip() for name, _, value in pairs}


def uses_lycoris(config: Any) -> bool:
    """Whether this config's network is built by lycoris-lora."""
    module = config.network_module.strip()
    if module == LYCORIS_MODULE:
        return True
    return module == "networks.lora" and bool(PLAIN_VIA_LYCORIS & set(network_args_of(config)))


@dataclass
class LycorisNetwork:
    """The lycoris-lora network over a base model, with the calls the trainer makes of a LoRA network."""

    base: BaseModel
    spec: LycorisSpec
    network: Any  # lycoris.kohya.LycorisNetworkKohya
    multiplier: float = 1.0
    blocks: Any = None  # block-wise settings are networks.lora's only
    modules: list = field(default_factory=list)  # the lycoris modules, text encoders first

    def modules_count(self) -> int:
        return len(self.modules)

    def trainable_parameters(self) -> list:
        return [p for p in self.network.parameters() if p.requires_grad]

    def param_groups(self, unet_lr: float, text_encoder_lr: float) -> list[dict]:
        """Groups as lycoris makes them (LoRA+ ratios included), text encoders first; lr 0 leaves a part out."""
        params, names = self.network.prepare_optimizer_params(text_encoder_lr, unet_lr, unet_lr)
        return [{**group, "params": list(group["params"]), "name": name} for group, name in zip(params, names)]

    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        scaled, mean, largest = self.network.apply_max_norm_regularization(max_norm, None)
        return int(scaled), float(mean), float(largest)

    def set_scale(self, multiplier: float) -> None:
        self.multiplier = float(multiplier)
        for module in self.modules:
            module.multiplier = self.multiplier

    def kohya_state_dict(self, dtype: Any = None) -> dict[str, Any]:
        """The tensors lycoris writes (hada_w1_a, lokr_w1, dora_scale, ...), under kohya module names."""
        import torch

        dtype = dtype or torch.float16
        return {key: value.detach().to(dtype=dtype, copy=True).contiguous() if value.is_floating_point()
                else value.detach().clone() for key, value in self.network.state_dict().items()}

    def load_kohya_state_dict(self, tensors: dict[str, Any]) -> None:
        """Load a file this network type wrote (network_weights, resume), naming what does not fit."""
        ours = self.network.state_dict()
        unknown = [k for k in tensors if k not in ours]
        if unknown:
            raise ModelError(f"the LoRA has '{unknown[0]}', which this {self.spec.algo} network does not have; "
                             "use the network_module, network_args and dims it was trained with")
        missing = [k for k in ours if k not in tensors]
        if missing:
            raise ModelError(f"the LoRA has no '{missing[0]}'; use the network_module, network_args and dims "
                             "it was trained with")
        for key, value in tensors.items():
            if tuple(value.shape) != tuple(ours[key].shape):
                raise ModelError(f"'{key}' has shape {list(value.shape)} but this network expects "
                                 f"{list(ours[key].shape)}; use the network_dim/conv_dim/factor it was trained with")
        self.network.load_state_dict(tensors, strict=False)  # the modules' own hooks read their custom keys
        self.set_scale(self.multiplier)

    def remove(self) -> None:
        for module in self.modules:
            module.restore()
        self.modules = []


def create_lycoris_network(base: BaseModel, spec: LycorisSpec) -> LycorisNetwork:
    """Build the lycoris-lora network on `base` (base weights frozen) and hook it into the forward."""
    from lycoris import kohya

    components = component_names(base.family)[1:] + [UNET]  # text encoders first, as sd-scripts
    for component in components:
        component_module(base, component).requires_grad_(False)
    encoders = list(base.text_encoders) if spec.train_text_encoder else []
    kwargs = dict(spec.args)
    # DoRA's dora_scale: lycoris' default layout (out, 1) is what A1111 and ComfyUI apply wrongly; both read
    # (1, in), which wd_on_output=False writes (shared/reference/lycoris-and-tools.md)
    kwargs.setdefault("wd_on_output", "False")
    if spec.conv_rank:  # lycoris trains convolutions at network_dim unless conv_dim is given
        kwargs.update(conv_dim=str(spec.conv_rank), conv_alpha=str(spec.conv_alpha or spec.conv_rank))
    with _CREATION, _presets_for_diffusers(kohya, spec), _quiet_lycoris():
        network = kohya.create_network(
            1.0, spec.rank, float(spec.alpha or spec.rank), None, encoders if len(encoders) > 1 else
            (encoders[0] if encoders else None), base.unet if spec.train_unet else _no_unet(), algo=spec.algo,
            dropout=spec.dropout, warn_on_unmatched=False, **kwargs)
    modules = _rename_to_kohya_keys(base, network)
    if not modules:
        raise ConfigError(f"LyCORIS {spec.algo} with these network_args wraps no layer of this model; "
                          "check preset and the parts trained")
    with _quiet_lycoris():
        network.apply_to(None, None, apply_text_encoder=bool(encoders), apply_unet=spec.train_unet)
    network.float()  # trained in fp32 over an fp16/bf16 base, as sd-scripts does
    network.requires_grad_(True)
    return LycorisNetwork(base=base, spec=spec, network=network, modules=list(network.loras))


class _presets_for_diffusers:
    """Within the block, lycoris' presets name diffusers' classes, and no earlier preset's maps remain."""

    def __init__(self, kohya: Any, spec: LycorisSpec):
        self.kohya, self.spec = kohya, spec

    def __enter__(self) -> None:
        cls, presets = self.kohya.LycorisNetworkKohya, self.kohya.PRESET
        self.saved = {name: getattr(cls, name) for name in ("MODULE_ALGO_MAP", "NAME_ALGO_MAP", "USE_FNMATCH",
                                                             "TARGET_EXCLUDE_NAME")}
        cls.MODULE_ALGO_MAP, cls.NAME_ALGO_MAP, cls.USE_FNMATCH, cls.TARGET_EXCLUDE_NAME = {}, {}, False, []
        self.saved_presets = presets
        adjusted = {name: _diffusers_classes(preset) for name, preset in presets.items()}
        if self.spec.plain_targets:
            adjusted["full"] = _NETWORKS_LOCON_PRESET if self.spec.conv_rank else _NETWORKS_LORA_PRESET
        self.kohya.PRESET = adjusted

    def __exit__(self, *exc: Any) -> None:
        self.kohya.PRESET = self.saved_presets
        for name, value in self.saved.items():
            setattr(self.kohya.LycorisNetworkKohya, name, value)


class _quiet_lycoris:
    """lycoris-lora logs a dozen INFO lines per network; our own messages say what matters."""

    def __enter__(self) -> None:
        from lycoris.logging import logger

        self.logger, self.level = logger, logger.level
        logger.setLevel("WARNING")

    def __exit__(self, *exc: Any) -> None:
        self.logger.setLevel(self.level)


def _diffusers_classes(preset: dict) -> dict:
    out = dict(preset)
    for key in ("unet_target_module", "text_encoder_target_module"):
        if key in out:
            names = [n for n in out[key] if n not in _NOT_IN_SD_UNETS]
            out[key] = names + [_DIFFUSERS_NAMES[n] for n in names if n in _DIFFUSERS_NAMES and
                                _DIFFUSERS_NAMES[n] not in names]
    return out


def _no_unet() -> Any:
    import torch

    return torch.nn.Module()  # lycoris walks the UNet it is given; an empty module yields no modules


def _rename_to_kohya_keys(base: BaseModel, network: Any) -> list:
    """Give each lycoris module sd-scripts' key, found from the layer it wraps; drop unnameable ones."""
    names: dict[int, str] = {}
    unet_config = dict(base.unet.config)
    for component in component_names(base.family):
        for path, module in component_module(base, component).named_modules():
            if path:
                try:
                    names[id(module)] = kohya_key(base.family, component, path, unet_config)
                except ValueError:
                    continue  # not nameable in the original layout: no kohya file can address it
    kept = []
    for group in ("text_encoder_loras", "unet_loras"):
        mine = [m for m in getattr(network, group) if id(m.org_module[0]) in names]
        for module in mine:
            module.lora_name = names[id(module.org_module[0])]
        setattr(network, group, mine)
        kept += mine
    network.loras = kept
    return kept
