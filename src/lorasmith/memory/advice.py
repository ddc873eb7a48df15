"""The cheapest changes that make a run fit a card, in the order of what they cost in speed and quality.

    for change in fit_advice(config, "sdxl", gib=8):
        print(change.line(8))

Each change is applied on top of the ones before it, with the estimate it gives; the list stops at the
first that fits. The order: caching (free once done), gradient checkpointing (~20-30 % slower), an 8-bit
optimizer state, fp8 base weights (a little precision), block swap (Flux: slower by the transfers), a
smaller batch, a lower resolution (the last two change what is learnt).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from lorasmith.memory.estimate import GIB, MemoryEstimate, estimate_training_memory

SWAP_STEPS = (4, 8, 12, 16, 20, 24, 28, 32, 35)  # blocks_to_swap tried in turn (sd-scripts' table: 16-28)
LOWEST_RESOLUTION = 512  # lower than this a character LoRA learns little; 256 for the tiny test models
FULL_STATE_OPTIMIZERS = ("adamw", "adam", "lion", "sgdnesterov", "prodigy", "came", "dadaptadam", "dadaptation",
                         "adamwschedulefree", "radamschedulefree")


@dataclass(frozen=True)
class Change:
    """One suggested change: what to set, and the estimate once it (and the ones before it) are set."""

    description: str
    settings: dict
    estimate: MemoryEstimate

    def line(self, gib: float) -> str:
        fits = "fits" if self.estimate.fits(gib) else "does not fit yet"
        shown = ", ".join(f"{key} = {_toml(value)}" for key, value in self.settings.items())
        return f"{self.description} ({shown}): {self.estimate.total / GIB:.2f} GB, {fits} {gib:g} GB"


def _toml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else f'"{value}"' if isinstance(value, str) else str(value)


def fit_advice(config, family: str, gib: float, configs: dict | None = None,
               lowest_resolution: int = LOWEST_RESOLUTION) -> list[Change]:
    """The changes, cheapest first, that bring `config` under `gib` GB (empty when it already fits)."""
    estimate = _estimate(config, family, configs)
    if estimate.fits(gib):
        return []
    changes: list[Change] = []
    for description, proposer in _proposers(family, lowest_resolution):
        options = list(proposer(config))
        if not options:
            continue
        for settings in options:  # the least of this kind of change that fits, else the most of it
            trial = replace(config, **settings)
            estimate = _estimate(trial, family, configs)
            if estimate.fits(gib):
                break
        config = trial
        changes.append(Change(description, settings, estimate))
        if estimate.fits(gib):
            break
    return changes


def _estimate(config, family: str, configs: dict | None) -> MemoryEstimate:
    return estimate_training_memory(config, family, configs)


Proposer = Callable[[object], Iterator[dict]]


def _proposers(family: str, lowest_resolution: int) -> list[tuple[str, Proposer]]:
    out: list[tuple[str, Proposer]] = [
        ("cache latents and text-encoder outputs", _caching),
        ("gradient checkpointing", lambda c: iter([{"gradient_checkpointing": True}] if not c.gradient_checkpointing
                                                  else [])),
        ("an 8-bit optimizer", _optimizer),
        ("fp8 base weights", _fp8),
    ]
    if family == "flux":
        out.append(("block swap", _swap))
    out += [("a smaller batch", _batch), ("a lower resolution", lambda c: _resolution(c, lowest_resolution))]
    return out


def _caching(config) -> Iterator[dict]:
    settings = {}
    if not config.cache_latents:
        settings["cache_latents"] = True
    text_frozen = config.network_train_unet_only and not config.captions_vary
    if text_frozen and not config.cache_text_encoder_outputs:
        settings["cache_text_encoder_outputs"] = True
    if settings:
        yield settings


def _optimizer(config) -> Iterator[dict]:
    if config.optimizer_type.lower() in FULL_STATE_OPTIMIZERS:
        yield {"optimizer_type": "AdamW8bit"}


def _fp8(config) -> Iterator[dict]:
    if not (config.fp8_base or config.fp8_base_unet) and config.mixed_precision in ("fp16", "bf16"):
        yield {"fp8_base": True}


def _swap(config) -> Iterator[dict]:
    for blocks in SWAP_STEPS:
        if blocks > config.blocks_to_swap:
            yield {"blocks_to_swap": blocks}


def _batch(config) -> Iterator[dict]:
    batch = config.train_batch_size
    while batch > 1:
        batch //= 2
        yield {"train_batch_size": max(batch, 1)}


def _resolution(config, lowest: int) -> Iterator[dict]:
    width, height = config.resolution_wh
    step = 128
    while min(width, height) - step >= lowest:
        width, height = width - step, height - step
        yield {"resolution": f"{width},{height}"}
