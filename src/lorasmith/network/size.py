"""How big a LoRA file will be, before training: counted from the architecture, no weights.

The UNet and text encoders are built on the meta device (no memory, no download) from the
configs the checkpoint carries (a diffusers folder, or a file lorasmith wrote, such as the
demo's tiny model) or else from those of the family shipped in `lorasmith/models/configs/`,
and the sd-scripts target layers are read off them. The file is the 8-byte length, the JSON
header (one entry per tensor, which we size exactly, plus the metadata, which we estimate) and
the tensor bytes.
The tutorial's rule of thumb, ~1.125 MB per unit of rank for SD1.5, falls out of this.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from lorasmith.errors import ConfigError
from lorasmith.models.families import get_family
from lorasmith.network.targets import Target, lora_targets

# The metadata part of sd-scripts' header (ss_* keys with tag frequencies, bucket info and
# dataset folders for a typical character dataset, modelspec keys, hashes). Measured from
# the reference SD1.5 files: their headers minus the exact tensor index leave 3,156 bytes.
METADATA_BYTES_ESTIMATE = 3_150

_DTYPE_BYTES = {"fp16": 2, "bf16": 2, "float": 4}
_DTYPE_NAMES = {"fp16": "F16", "bf16": "BF16", "float": "F32"}


def _config(family: str, name: str) -> dict:
    text = resources.files("lorasmith.models").joinpath("configs", family, f"{name}.json").read_text("utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def meta_components(family_name: str, configs: dict | None = None) -> tuple[Any, list]:
    """(unet, text_encoders) on the meta device: from `configs` (part -> config) or the family's real ones."""
    from lorasmith.models.empty import empty_weights
    from lorasmith.models.load import diffusers_model_from_config, text_model_from_config

    parts = ["text_encoder", "text_encoder_2"][: 2 if family_name == "sdxl" else 1]
    configs = configs or {part: _config(family_name, part) for part in ("unet", *parts)}
    with empty_weights():
        unet = diffusers_model_from_config("UNet2DConditionModel", configs["unet"])
        encoders = [text_model_from_config(configs[part], index) for index, part in enumerate(parts)]
    return unet, encoders


@lru_cache(maxsize=8)
def family_targets(family_name: str, conv: bool, train_unet: bool, train_text_encoder: bool,
                   configs_json: str | None = None) -> tuple[Target, ...]:
    """The target layers of the architecture (cached: building SDXL takes a moment).

    `configs_json`: the checkpoint's own architecture configs as JSON (hashable, for the cache).
    """
    family = get_family(family_name)
    unet, encoders = meta_components(family_name, json.loads(configs_json) if configs_json else None)
    return tuple(lora_targets(family, unet, encoders, train_unet=train_unet,
                              train_text_encoder=train_text_encoder, conv=conv))


def lora_tensor_shapes(targets: tuple[Target, ...], rank: int, conv_rank: int = 0) -> dict[str, tuple[int, ...]]:
    """kohya key -> shape of every tensor of a LoRA over `targets`."""
    shapes: dict[str, tuple[int, ...]] = {}
    for target in targets:
        r = conv_rank if target.uses_conv_rank else rank
        down, up = target.lora_shapes(r)
        shapes[f"{target.ref.key}.lora_down.weight"] = down
        shapes[f"{target.ref.key}.lora_up.weight"] = up
        shapes[f"{target.ref.key}.alpha"] = ()
    return shapes


def tensor_index_bytes(shapes: dict[str, tuple[int, ...]], save_precision: str) -> int:
    """Size of the safetensors header's tensor entries (compact JSON, as safetensors writes it)."""
    size, offset, entries = _DTYPE_BYTES[save_precision], 0, {}
    for key in sorted(shapes):
        count = 1
        for dim in shapes[key]:
            count *= dim
        entries[key] = {"dtype": _DTYPE_NAMES[save_precision], "shape": list(shapes[key]),
                        "data_offsets": [offset, offset + count * size]}
        offset += count * size
    return len(json.dumps(entries, separators=(",", ":")))


def estimate_lora_bytes(family_name: str, rank: int, conv_rank: int = 0, train_unet: bool = True,
                        train_text_encoder: bool = True, save_precision: str = "fp16",
                        configs: dict | None = None) -> int:
    """Estimated size in bytes of the LoRA file sd-scripts (and lorasmith) would write.

    `configs`: the checkpoint's architecture (part -> config), when it carries one; else the family's.
    """
    if save_precision not in _DTYPE_BYTES:
        raise ConfigError(f"save_precision must be one of {', '.join(_DTYPE_BYTES)}, got {save_precision!r}")
    if rank < 1 or conv_rank < 0:
        raise ConfigError(f"network_dim must be at least 1 and conv_dim 0 or more, got {rank} and {conv_rank}")
    configs_json = json.dumps(configs, sort_keys=True) if configs else None
    targets = family_targets(family_name, conv_rank > 0, train_unet, train_text_encoder, configs_json)
    return file_bytes(lora_tensor_shapes(targets, rank, conv_rank), save_precision)


def file_bytes(shapes: dict[str, tuple[int, ...]], save_precision: str) -> int:
    """The size of a LoRA file holding tensors of `shapes`: length, header (metadata estimated), data."""
    elements = 0
    for shape in shapes.values():
        count = 1
        for dim in shape:
            count *= dim
        elements += count
    header = tensor_index_bytes(shapes, save_precision) + METADATA_BYTES_ESTIMATE
    return 8 + header + elements * _DTYPE_BYTES[save_precision]
