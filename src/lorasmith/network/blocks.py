"""Block-wise weights of sd-scripts' networks.lora: a learning-rate weight, rank and alpha per UNet block.

Blocks are numbered as sd-scripts numbers them from a module's kohya name. SD1/SD2: 25 values, down
blocks 1-11 (three per diffusers down block: its two layers, then its downsampler; 0 holds no LoRA), mid 12,
up blocks 13-24. SDXL (original layout names): 23 values, input_blocks_N at 1 + N, middle_block_N at 10 + N,
output_blocks_N at 13 + N, with 0 and 22 for the embeddings and the output layer.

network_args (sd-scripts' names): `down_lr_weight`, `mid_lr_weight`, `up_lr_weight` (comma lists, or a
preset: cosine, sine, linear, reverse_linear, zeros, each with an optional `+base`), `block_lr_zero_threshold`,
`block_dims`, `block_alphas`, `conv_block_dims`, `conv_block_alphas`. A block whose learning-rate weight is 0
gets no LoRA at all (rank 0), as in sd-scripts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lorasmith.errors import ConfigError

BLOCK_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
              "block_alphas", "conv_block_dims", "conv_block_alphas")
_SD_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")
SD_SIDE, SD_MID = 12, 1
SDXL_SIDE, SDXL_MID = 9, 3


def block_count(sdxl: bool) -> int:
    return 1 + SDXL_SIDE * 2 + SDXL_MID + 1 if sdxl else SD_SIDE * 2 + SD_MID


def block_index(key: str, sdxl: bool) -> int:
    """sd-scripts' block of a UNet LoRA module's kohya name (-1 for one it does not place)."""
    name = key[len("lora_unet_"):] if key.startswith("lora_unet_") else key
    if sdxl:
        for prefix, first in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
            if name.startswith(prefix):
                return first + int(name[len(prefix):].split("_")[0])
        return 0 if name.startswith(("time_embed_", "label_emb_")) else 22 if name.startswith("out_") else -1
    match = _SD_UPDOWN.search(name + "_")
    if match:
        side, outer, kind, inner = match.groups()
        index = 3 * int(outer) + (2 if kind in ("upsamplers", "downsamplers") else int(inner))
        return 1 + index if side == "down" else SD_SIDE + 1 + index
    return SD_SIDE if name.startswith("mid_block_") else -1


def _preset(text: str, length: int) -> list[float]:
    name, _, base = text.partition("+")
    offset = float(base) if base else 0.0
    steps = [i / (length - 1) for i in range(length)]
    curves = {
        "cosine": [math.sin(math.pi * s / 2) + offset for s in reversed(steps)],
        "sine": [math.sin(math.pi * s / 2) + offset for s in steps],
        "linear": [s + offset for s in steps],
        "reverse_linear": [s + offset for s in reversed(steps)],
        "zeros": [offset] * length,
    }
    if name not in curves:
        raise ConfigError(f"lr weight preset '{name}' is not known; use cosine, sine, linear, reverse_linear or zeros "
                          "(with +base), or a comma list of numbers")
    return curves[name]


def _weights(text: str | None, length: int, key: str) -> list[float] | None:
    """A side's weights: a preset or numbers; too long is cut, too short filled with 1.0 (sd-scripts' rule)."""
    if text is None:
        return None
    if any(c.isalpha() for c in text.split("+")[0]):
        return _preset(text, length)
    try:
        numbers = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"network_args {key} must be numbers separated by commas or a preset, got {text!r}") from None
    return (numbers + [1.0] * length)[:length]


def _per_block(text: str | None, key: str, count: int, kind=float) -> list | None:
    if text is None:
        return None
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"network_args {key} must be {count} numbers separated by commas, got {text!r}") from None
    if len(values) != count:
        raise ConfigError(f"network_args {key} needs {count} values (one per block of this model family), got "
                          f"{len(values)}")
    return values


@dataclass(frozen=True)
class BlockWeights:
    lr_weights: tuple | None = None  # per block, or None: every block at the UNet's rate
    dims: tuple | None = None
    alphas: tuple | None = None
    conv_dims: tuple | None = None
    conv_alphas: tuple | None = None

    @classmethod
    def parse(cls, args: dict[str, str], sdxl: bool) -> "BlockWeights | None":
        """From network_args (name -> text); None when none of the block settings is given."""
        if not any(name in args for name in BLOCK_ARGS):
            return None
        count = block_count(sdxl)
        side, mid = (SDXL_SIDE, SDXL_MID) if sdxl else (SD_SIDE, SD_MID)
        lr = None
        if any(args.get(name) is not None for name in ("down_lr_weight", "mid_lr_weight", "up_lr_weight")):
            threshold = float(args.get("block_lr_zero_threshold", 0.0))
            down = _weights(args.get("down_lr_weight"), side, "down_lr_weight") or [1.0] * side
            middle = _weights(args.get("mid_lr_weight"), mid, "mid_lr_weight") or [1.0] * mid
            up = _weights(args.get("up_lr_weight"), side, "up_lr_weight") or [1.0] * side
            lr = [w if w > threshold else 0.0 for w in down + middle + up]
            lr = [1.0] + lr + [1.0] if sdxl else lr
        dims = _per_block(args.get("block_dims"), "block_dims", count, int)
        conv_dims = _per_block(args.get("conv_block_dims"), "conv_block_dims", count, int)
        if lr is not None:  # a block that does not learn gets no LoRA
            dims = [0 if w == 0 else d for w, d in zip(lr, dims)] if dims else None
            conv_dims = [0 if w == 0 else d for w, d in zip(lr, conv_dims)] if conv_dims else None
        return cls(tuple(lr) if lr else None, tuple(dims) if dims else None,
                   _tuple(_per_block(args.get("block_alphas"), "block_alphas", count)), tuple(conv_dims) if
                   conv_dims else None, _tuple(_per_block(args.get("conv_block_alphas"), "conv_block_alphas", count)))

    def lr_weight(self, index: int) -> float:
        return 1.0 if self.lr_weights is None or index < 0 else self.lr_weights[index]

    def rank_and_alpha(self, index: int, conv: bool, rank: int, alpha: float) -> tuple[int, float]:
        """A UNet module's rank and alpha in block `index` (the network's own where no list is given)."""
        if index < 0:
            return rank, alpha
        dims, alphas = (self.conv_dims, self.conv_alphas) if conv else (self.dims, self.alphas)
        if dims is not None:
            rank = dims[index]
        if alphas is not None:
            alpha = alphas[index]
        if self.lr_weight(index) == 0:
            rank = 0
        return rank, alpha


def _tuple(values):
    return tuple(values) if values else None
