"""The modules of sd-scripts' networks.lora_flux on a Flux.1 base, and the diffusers layers each one covers.

sd-scripts trains Black Forest Labs' layout and names every module after a BFL layer; we train diffusers'
FluxTransformer2DModel, which splits some of those layers. So a kohya module covers one or more diffusers
Linears, each taking a row slice of the fused layer's output (rows by the layers' own widths):

    double_blocks.N.img_attn.qkv   -> transformer_blocks.N.attn.to_q | to_k | to_v
    double_blocks.N.txt_attn.qkv   -> transformer_blocks.N.attn.add_q_proj | add_k_proj | add_v_proj
    double_blocks.N.img_attn.proj  -> attn.to_out.0           txt_attn.proj -> attn.to_add_out
    double_blocks.N.img_mlp.0 / .2 -> ff.net.0.proj / ff.net.2 (txt_mlp: ff_context.*)
    double_blocks.N.img_mod.lin    -> norm1.linear            txt_mod.lin   -> norm1_context.linear
    single_blocks.N.linear1        -> single_transformer_blocks.N.attn.to_q | to_k | to_v | proj_mlp
    single_blocks.N.linear2        -> proj_out                modulation.lin -> norm.linear
    img_in, txt_in                 -> x_embedder, context_embedder
    {time,vector,guidance}_in.{in,out}_layer -> time_text_embed.{timestep,text,guidance}_embedder.linear_{1,2}

CLIP-L modules are sd-scripts' networks.lora ones (`lora_te1_text_model_...`); T5-XXL's (`lora_te3_` + the
T5EncoderModel path) are trained only with train_t5xxl. The network_args of networks.lora_flux that pick
modules and ranks are parsed here (`FluxArgs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorasmith.errors import ConfigError, ModelError
from lorasmith.models.families import FLUX
from lorasmith.network.kohya_keys import UNET, ModuleRef, text_encoder_component
from lorasmith.network.targets import lora_targets

CLIP, T5 = text_encoder_component(0), text_encoder_component(1)
# (BFL path inside the block, kind for the per-type dims, diffusers paths inside the block); sd-scripts' order
DOUBLE = (
    ("img_mod.lin", "img_mod", ("norm1.linear",)),
    ("img_attn.qkv", "img_attn", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("img_attn.proj", "img_attn", ("attn.to_out.0",)),
    ("img_mlp.0", "img_mlp", ("ff.net.0.proj",)),
    ("img_mlp.2", "img_mlp", ("ff.net.2",)),
    ("txt_mod.lin", "txt_mod", ("norm1_context.linear",)),
    ("txt_attn.qkv", "txt_attn", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("txt_attn.proj", "txt_attn", ("attn.to_add_out",)),
    ("txt_mlp.0", "txt_mlp", ("ff_context.net.0.proj",)),
    ("txt_mlp.2", "txt_mlp", ("ff_context.net.2",)),
)
SINGLE = (
    ("linear1", "single", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    ("linear2", "single", ("proj_out",)),
    ("modulation.lin", "single_mod", ("norm.linear",)),
)
# in_dims order (img, time, vector, guidance, txt): (BFL path, kind, diffusers path)
EMBEDDERS = (
    ("img_in", "img_in", "x_embedder"),
    ("time_in.in_layer", "time_in", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_in", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "vector_in", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "vector_in", "time_text_embed.text_embedder.linear_2"),
    ("guidance_in.in_layer", "guidance_in", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "guidance_in", "time_text_embed.guidance_embedder.linear_2"),
    ("txt_in", "txt_in", "context_embedder"),
)
IN_KINDS = ("img_in", "time_in", "vector_in", "guidance_in", "txt_in")
TYPE_DIMS = {"img_attn_dim": "img_attn", "txt_attn_dim": "txt_attn", "img_mlp_dim": "img_mlp",
             "txt_mlp_dim": "txt_mlp", "img_mod_dim": "img_mod", "txt_mod_dim": "txt_mod", "single_dim": "single",
             "single_mod_dim": "single_mod"}
T5_TARGET_CLASSES = ("T5Attention", "T5DenseGatedActDense", "T5DenseActDense")


@dataclass(frozen=True)
class Split:
    """One diffusers Linear a kohya module covers, and the rows of the fused output it computes."""

    path: str  # inside the component, e.g. "transformer_blocks.0.attn.to_k"
    start: int
    stop: int


@dataclass(frozen=True)
class FluxTarget:
    """A kohya module of networks.lora_flux: its name, the BFL (or HF) layer it names, the layers it covers."""

    ref: ModuleRef  # key, component, and the path of the named layer (BFL layout for the transformer)
    in_features: int
    splits: tuple[Split, ...]
    kind: str  # "img_attn", ..., "single_mod", an in_dims kind, or "te1" / "te3"
    block: int | None = None  # the double or single block's index

    @property
    def key(self) -> str:
        return self.ref.key

    @property
    def out_features(self) -> int:
        return self.splits[-1].stop


def flux_targets(transformer: Any, text_encoders: list) -> list[FluxTarget]:
    """Every module networks.lora_flux can train on this base, text encoders first (sd-scripts' order)."""
    targets = [FluxTarget(t.ref, t.in_features, (Split(t.ref.path, 0, t.out_features),), "te1")
               for t in lora_targets(FLUX, None, text_encoders[:1], train_unet=False)]
    if len(text_encoders) > 1:
        targets += _t5_targets(text_encoders[1])
    return targets + _transformer_targets(transformer)


def _transformer_targets(transformer: Any) -> list[FluxTarget]:
    targets = []
    for kind, table, blocks in (("double", DOUBLE, "transformer_blocks"),
                                ("single", SINGLE, "single_transformer_blocks")):
        for index in range(len(getattr(transformer, blocks, ()))):
            for bfl, type_kind, paths in table:
                targets.append(_target(transformer, f"{kind}_blocks.{index}.{bfl}", type_kind,
                                       [f"{blocks}.{index}.{p}" for p in paths], index))
    for bfl, kind, path in EMBEDDERS:
        if kind != "guidance_in" or hasattr(transformer.time_text_embed, "guidance_embedder"):  # dev only
            targets.append(_target(transformer, bfl, kind, [path], None))
    return targets


def _target(transformer: Any, bfl: str, kind: str, paths: list[str], block: int | None) -> FluxTarget:
    import torch

    key = f"lora_unet_{bfl.replace('.', '_')}"
    splits, start, widths = [], 0, set()
    for path in paths:
        try:
            layer = transformer.get_submodule(path)
        except AttributeError:
            layer = None
        if type(layer) is not torch.nn.Linear:
            raise ModelError(f"the Flux transformer has no Linear '{path}' (for {key}); load a Flux.1 dev or "
                             "schnell model (diffusers FluxTransformer2DModel)")
        splits.append(Split(path, start, start + layer.out_features))
        start += layer.out_features
        widths.add(layer.in_features)
    if len(widths) != 1:
        raise ModelError(f"the layers of {key} ({', '.join(paths)}) take inputs of different widths; load a Flux.1 "
                         "dev or schnell model")
    return FluxTarget(ModuleRef(key, UNET, bfl), widths.pop(), tuple(splits), kind, block)


def _t5_targets(t5: Any) -> list[FluxTarget]:
    import torch

    found: dict[str, Any] = {}
    for name, module in t5.named_modules():
        if type(module).__name__ in T5_TARGET_CLASSES:
            for child_name, child in module.named_modules():
                if type(child) is torch.nn.Linear and child_name:
                    found.setdefault(f"{name}.{child_name}", child)
    return [FluxTarget(ModuleRef(f"{FLUX.text_encoder_prefixes[1]}_{path.replace('.', '_')}", T5, path),
                       layer.in_features, (Split(path, 0, layer.out_features),), "te3")
            for path, layer in found.items()]


@dataclass(frozen=True)
class FluxArgs:
    """The network_args of sd-scripts' networks.lora_flux that lorasmith trains (their names there).

    train_blocks: all, single or double. double_blocks / single_blocks: train_double_block_indices /
    train_single_block_indices as (first, last) ranges, 0-based; None trains all. type_dims: (kind, dim) of
    img_attn_dim ... single_mod_dim given (0 drops the module). in_dims: img, time, vector, guidance, txt.
    """

    train_blocks: str = "all"
    double_blocks: tuple[tuple[int, int], ...] | None = None
    single_blocks: tuple[tuple[int, int], ...] | None = None
    type_dims: tuple[tuple[str, int], ...] = ()
    in_dims: tuple[int, ...] | None = None
    train_t5xxl: bool = False

    @classmethod
    def parse(cls, network_args: list[str]) -> "FluxArgs":
        values: dict[str, Any] = {}
        type_dims = []
        for item in network_args:
            name, sep, value = (part.strip() for part in item.partition("="))
            if not sep:
                raise ConfigError(f"network_args '{item}' is not name=value; write it as e.g. train_blocks=single")
            if name in TYPE_DIMS:
                type_dims.append((TYPE_DIMS[name], _whole(name, value)))
            elif name == "train_blocks":
                if value not in ("all", "single", "double"):
                    raise ConfigError(f"network_args train_blocks must be all, single or double, got {value!r}")
                values["train_blocks"] = value
            elif name in ("train_double_block_indices", "train_single_block_indices"):
                values[name.split("_")[1] + "_blocks"] = _selection(name, value)
            elif name == "in_dims":
                values["in_dims"] = _in_dims(value)
            elif name == "train_t5xxl":
                values["train_t5xxl"] = _switch(name, value)
            elif name == "split_qkv":
                if _switch(name, value):
                    raise ConfigError("network_args split_qkv=True is not trained by lorasmith: its files load at 1/3 "
                                      "of the trained strength (linear1 1/4) in ComfyUI, diffusers and sd-scripts "
                                      "(kohya-ss/sd-scripts#2204), and sd-scripts crashes with it on double blocks; "
                                      "remove it")
            elif name not in _IGNORED:
                raise ConfigError(_unknown(name))
        return cls(**values, type_dims=tuple(type_dims))

    def rank(self, target: FluxTarget, rank: int, double_count: int, single_count: int) -> int:
        """The rank networks.lora_flux gives `target` (0: no module), `rank` being network_dim."""
        if target.kind in ("te1", "te3"):
            return rank
        if target.kind in IN_KINDS:
            return self.in_dims[IN_KINDS.index(target.kind)] if self.in_dims else 0
        double = target.ref.path.startswith("double_blocks.")
        if self.train_blocks == ("single" if double else "double"):
            return 0
        rank = dict(self.type_dims).get(target.kind, rank)
        selection = self.double_blocks if double else self.single_blocks
        if rank and selection is not None:
            name, count = ("train_double_block_indices", double_count) if double else \
                ("train_single_block_indices", single_count)
            if any(last >= count for _, last in selection):
                raise ConfigError(f"network_args {name} names block {max(last for _, last in selection)}, but this "
                                  f"Flux model has {count} ({'double' if double else 'single'} blocks 0-{count - 1})")
            if not any(first <= target.block <= last for first, last in selection):
                return 0
        return rank


def unknown_flux_args(args: dict[str, str]) -> list[str]:
    """One line per network_args entry the Flux LoRA cannot train as asked (unknown, not yet, a bad value)."""
    lines = []
    for name, value in args.items():
        try:
            FluxArgs.parse([f"{name}={value}"])
        except ConfigError as error:
            lines.append(str(error))
    return lines


# verbose only prints the module list in sd-scripts; dropout is networks.lora's, which ignores it (config/losing.py)
_IGNORED = ("verbose", "dropout")
_NOT_YET = ("rank_dropout", "module_dropout", "network_reg_dims", "network_reg_lrs", "ggpo_beta", "ggpo_sigma",
            "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")


def _unknown(name: str) -> str:
    if name in _NOT_YET:
        return f"network_args {name} is not trained by lorasmith's Flux.1 LoRA yet (sd-scripts' networks.lora_flux " \
               "reads it); remove it to train without it"
    known = ["train_blocks", "train_double_block_indices", "train_single_block_indices", *TYPE_DIMS, "in_dims",
             "train_t5xxl"]
    return f"network_args {name} is not read by sd-scripts' networks.lora_flux (a typo?); it reads: {', '.join(known)}"


def _whole(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ConfigError(f"network_args {name} must be a whole number, 0 or more (0 drops the module), got {value!r}")
    return number


def _switch(name: str, value: str) -> bool:
    # sd-scripts reads only the exact text True as on: anything else ("true", "1") would silently train without it
    if value not in ("True", "False"):
        raise ConfigError(f"network_args {name} must be True or False (sd-scripts reads only 'True' as on), got "
                          f"{value!r}")
    return value == "True"


def _in_dims(value: str) -> tuple[int, ...]:
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 5:
        raise ConfigError(f"network_args in_dims needs 5 ranks (img, time, vector, guidance, txt), such as "
                          f"[4,2,2,2,4]; got {value!r}")
    return tuple(_whole("in_dims", p) for p in parts)


def _selection(name: str, value: str) -> tuple[tuple[int, int], ...] | None:
    """`0,1,4-5` -> ((0, 0), (1, 1), (4, 5)); `all` -> None; `none` or nothing -> ()."""
    if value == "all":
        return None
    if value in ("none", ""):
        return ()
    ranges = []
    for part in value.split(","):
        first, _, last = (p.strip() for p in part.partition("-"))
        try:
            first_index, last_index = int(first), int(last or first)
        except ValueError:
            first_index, last_index = -1, -1
        if first_index < 0 or last_index < first_index:
            raise ConfigError(f"network_args {name} must be all, none or 0-based indices and ranges such as 0,1,4-5; "
                              f"got {value!r}")
        ranges.append((first_index, last_index))
    return tuple(ranges)
