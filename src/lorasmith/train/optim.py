"""Optimizers and learning-rate schedulers by name: a small table, as the config names them."""

from __future__ import annotations

import ast

import torch

from lorasmith.errors import ConfigError, TrainingError


def parse_optimizer_args(items: list[str]) -> dict:
    """['weight_decay=0.01', 'betas=0.9,0.99'] -> {'weight_decay': 0.01, 'betas': (0.9, 0.99)}."""
    kwargs = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"optimizer_args entries must look like name=value, got {item!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = text.strip()  # e.g. a plain word
    return kwargs


def check_optimizer_available(name: str) -> None:
    """Raise now, before a model loads, for an optimizer this machine cannot run (the 8gb preset's AdamW8bit)."""
    if name != "AdamW8bit":
        return
    if not torch.cuda.is_available():
        raise TrainingError("optimizer_type AdamW8bit needs a CUDA GPU (bitsandbytes); use AdamW on this machine")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TrainingError("AdamW8bit needs bitsandbytes: pip install 'lorasmith[cuda]'") from None


def _adamw8bit(groups, lr, **kwargs):
    check_optimizer_available("AdamW8bit")
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(groups, lr=lr, **kwargs)


def _lion(groups, lr, **kwargs):
    from lion_pytorch import Lion

    return Lion(groups, lr=lr, **kwargs)


def _prodigy(groups, lr, **kwargs):
    from prodigyopt import Prodigy

    return Prodigy(groups, lr=lr, **kwargs)


def _adafactor(groups, lr, **kwargs):
    from transformers.optimization import Adafactor

    # Fixed learning rate, as sd-scripts configures it for LoRA training.
    options = {"scale_parameter": False, "relative_step": False, "warmup_init": False, **kwargs}
    return Adafactor(groups, lr=lr, **options)


OPTIMIZERS = {
    "AdamW": lambda groups, lr, **kw: torch.optim.AdamW(groups, lr=lr, **kw),
    "AdamW8bit": _adamw8bit,
    "Lion": _lion,
    "Prodigy": _prodigy,
    "Adafactor": _adafactor,
}


def build_optimizer(name: str, param_groups: list[dict], lr: float, args: list[str]):
    try:
        builder = OPTIMIZERS[name]
    except KeyError:
        raise ConfigError(f"optimizer_type must be one of {', '.join(OPTIMIZERS)}, got {name!r}") from None
    try:
        return builder(param_groups, lr, **parse_optimizer_args(args))
    except TypeError as error:  # an optimizer_args name the optimizer does not take
        raise ConfigError(f"optimizer_args do not fit {name}: {error}") from None


def warmup_step_count(warmup_steps: float, total_steps: int) -> int:
    """lr_warmup_steps as sd-scripts reads it: a count of steps, or below 1 a fraction of the total."""
    return round(warmup_steps * total_steps) if 0 < warmup_steps < 1 else int(warmup_steps)


def build_scheduler(name: str, optimizer, warmup_steps: float, total_steps: int, num_cycles: int = 1):
    from diffusers.optimization import get_scheduler

    kwargs = {"num_warmup_steps": warmup_step_count(warmup_steps, total_steps)} if name != "constant" else {}
    if name in ("linear", "cosine", "cosine_with_restarts"):
        kwargs["num_training_steps"] = total_steps
    if name == "cosine_with_restarts":
        kwargs["num_cycles"] = num_cycles
    return get_scheduler(name, optimizer, **kwargs)
