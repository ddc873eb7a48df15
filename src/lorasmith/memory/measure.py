"""The planner's measurements on meta models, each cached by the settings that change it.

Measuring a step takes seconds (SDXL's forward, recomputation and backward are some 60,000 operator
calls), so each result is kept, in this process and on disk (`disk_cache.py`): a GUI that changes the
learning rate, the optimizer or the epochs asks again at no cost, and a new process asking what an earlier
one measured reads it back. An SD step is measured once at prime batch and bucket sides and read off for
any batch and bucket (`scaling.py`): changing the batch or the resolution measures nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from functools import lru_cache

from lorasmith.memory.activations import EncodeMeasure, StepMeasure, inject_network, tracked_encode, tracked_step
from lorasmith.memory.disk_cache import forget, on_disk
from lorasmith.memory.meta_ops import MetaOpCache
from lorasmith.memory.scaling import (
    MEASURED_SIDE_PX,
    SizeClasses,
    architecture_numbers,
    scalable,
    scale_primes,
)
from lorasmith.memory.weights import PartBytes, meta_base, meta_module, module_bytes, text_parts

# Operators' outputs by signature: they hold for any model and setting, so one cache serves all.
_META_OPS = MetaOpCache()
# A prepared model is reused by the steps that differ only in batch, bucket, precision of the compute,
# text caching or loss: one measurement at a time runs on it.
_ONE_AT_A_TIME = threading.Lock()
# What prepare_base_for_training and create_network read: a change here builds the model again.
MODEL_FIELDS = ("network_dim", "network_alpha", "conv_dim", "conv_alpha", "network_dropout", "network_module",
                "network_args", "network_train_unet_only", "network_train_text_encoder_only",
                "gradient_checkpointing", "sdpa", "zero_terminal_snr")


# The UNet's and text encoders' bytes of each meta base `_prepared` built, counted before its network went in:
# `weights` reads them rather than building SDXL on meta a second time (over a second).
_COUNTED: dict[tuple, tuple[PartBytes, ...]] = {}


@lru_cache(maxsize=16)
@on_disk
def weights(family: str, configs_json: str | None, base_dtype: str) -> tuple[PartBytes, ...]:
    """UNet, text encoder(s) and VAE, in that order, as the GPU holds them in `base_dtype`."""
    counted = _COUNTED.get((family, configs_json, base_dtype))
    if counted is None:
        counted = _part_bytes(meta_base(family, configs_json, base_dtype, with_vae=False))
    vae = meta_module(family, configs_json, "vae", base_dtype)
    return (*counted, module_bytes("vae", vae))


def _part_bytes(base) -> tuple[PartBytes, ...]:
    encoders = zip(text_parts(base.family.name), base.text_encoders)
    return (module_bytes("unet", base.unet), *(module_bytes(part, encoder) for part, encoder in encoders))


@lru_cache(maxsize=64)
@on_disk
def step(family: str, configs_json: str | None, base_dtype: str, bucket: tuple[int, int],
         key: tuple) -> StepMeasure:
    """A training step of the config `key` stands for (see estimate.STEP_FIELDS) at `bucket`."""
    from lorasmith.memory.estimate import config_from_key

    config = config_from_key(key)
    batch, (width, height) = config.train_batch_size, bucket
    if scalable(family, bucket, batch):  # read off the one measurement that stands for every batch and bucket
        any_size = tuple(item for item in key if item[0] != "train_batch_size")
        scaled = _scaled_step(family, configs_json, base_dtype, any_size)
        if scaled is not None:
            measured, profile = scaled
            return dataclasses.replace(measured, peak=profile.peak_at(batch, height // 8, width // 8))
    return _measured_step(family, configs_json, base_dtype, bucket, key)


def _measured_step(family: str, configs_json: str | None, base_dtype: str, bucket: tuple[int, int], key: tuple,
                   classes: SizeClasses | None = None) -> StepMeasure:
    from lorasmith.memory.estimate import config_from_key

    config = config_from_key(key)
    model_key = tuple((name, value) for name, value in key if name in MODEL_FIELDS)
    with _ONE_AT_A_TIME:
        base, network, v_prediction = _prepared(family, configs_json, base_dtype, model_key)
        base.v_prediction = config.v_parameterization or v_prediction
        return tracked_step(base, network, config, bucket, run=_META_OPS, classes=classes)


@lru_cache(maxsize=8)
def _scaled_step(family: str, configs_json: str | None, base_dtype: str, key: tuple):
    """(the step measured at prime batch and sides, its ScaledPeak), or None where scaling cannot be trusted
    (no free primes, a size with a higher power, or a profile that misses the measured peak itself)."""
    primes = scale_primes(architecture_numbers(family, configs_json, key))
    if primes is None:
        return None
    batch, rows, columns = primes
    classes = SizeClasses(primes)
    bucket = (MEASURED_SIDE_PX * columns, MEASURED_SIDE_PX * rows)
    measured = _measured_step(family, configs_json, base_dtype, bucket, (*key, ("train_batch_size", batch)),
                              classes)
    profile = classes.profile((batch, MEASURED_SIDE_PX // 8 * rows, MEASURED_SIDE_PX // 8 * columns))
    if not classes.usable or profile.peak_at(*profile.measured) != measured.peak:
        return None
    return measured, profile


@lru_cache(maxsize=2)
def _prepared(family: str, configs_json: str | None, base_dtype: str, model_key: tuple):
    """(base, network, the base's own v_prediction): the meta model prepared and with its network, as the
    trainer's setup leaves it (SDXL's takes seconds: peft wraps some 1,000 layers)."""
    from lorasmith.memory.estimate import config_from_key

    config = config_from_key(model_key)
    base = meta_base(family, configs_json, base_dtype, with_vae=False)
    _COUNTED[(family, configs_json, base_dtype)] = _part_bytes(base)
    return base, inject_network(base, config), base.v_prediction


@lru_cache(maxsize=64)
@on_disk
def encode(family: str, configs_json: str | None, vae_dtype: str, bucket: tuple[int, int],
           batch: int) -> EncodeMeasure:
    """The VAE's encoding of `batch` images at `bucket`."""
    from lorasmith.models.families import get_family

    vae = meta_module(family, configs_json, "vae", vae_dtype)
    return tracked_encode(vae, bucket, batch, get_family(family).latent_scale, run=_META_OPS)


@lru_cache(maxsize=16)
@on_disk
def fp8_part(family: str, configs_json: str | None, base_dtype: str, part: str) -> tuple[PartBytes, int]:
    """A part's bytes with its layers stored in fp8, and one layer's upcast copy (see weights.fp8_part_bytes)."""
    from lorasmith.memory.weights import fp8_part_bytes

    return fp8_part_bytes(family, configs_json, base_dtype, part)


@lru_cache(maxsize=64)
@on_disk
def encode_flux(configs_json: str | None, dtype: str, bucket: tuple[int, int], batch: int) -> EncodeMeasure:
    """Flux's AE encoding `batch` images at `bucket`."""
    import json

    from diffusers import AutoencoderKL

    from lorasmith.families.flux.meta import flux_part_config
    from lorasmith.memory.weights import DTYPES, quiet_diffusers
    from lorasmith.models.empty import empty_weights
    from lorasmith.models.families import FLUX

    with quiet_diffusers(), empty_weights():
        config = flux_part_config("vae", json.loads(configs_json) if configs_json else None)
        vae = AutoencoderKL.from_config(config)
        vae = vae.to(device="meta", dtype=DTYPES[dtype])
    return tracked_encode(vae, bucket, batch, FLUX.latent_scale, run=_META_OPS)


def clear() -> None:
    """Forget every measurement, in this process and on disk (tests that time a measurement from scratch)."""
    forget()
    forget_in_memory()


def forget_in_memory() -> None:
    """Forget what this process measured, as a new process would start (the disk's measurements stay)."""
    from lorasmith.memory import flux

    _COUNTED.clear()
    for cached in (weights, step, encode, _prepared, _scaled_step, encode_flux, fp8_part, flux.flux_weights,
                   flux.measured_point, flux.text_caching_bytes):
        cached.cache_clear()
