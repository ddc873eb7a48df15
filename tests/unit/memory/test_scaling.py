"""One SD step measured at prime sizes gives the peak at any batch and bucket: as a direct measurement would."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lorasmith.memory import estimate_training_memory, measure
from lorasmith.memory.estimate import STEP_FIELDS, _frozen
from lorasmith.memory.scaling import SizeClasses, numbers_in, scalable, scale_primes

from .conftest import tiny_config, tiny_configs


def key_of(config) -> tuple:
    return tuple((name, _frozen(getattr(config, name))) for name in STEP_FIELDS)


def test_the_primes_divide_no_size_of_the_model_or_settings():
    numbers = numbers_in({"block_out_channels": [320, 640, 1280], "dim": 23 * 4, "nested": [{"x": 58}], "flag": True})
    assert numbers == {320, 640, 1280, 92, 58}
    assert scale_primes(numbers) == (31, 37, 41)  # 23 divides 92 and 29 divides 58
    assert scale_primes(set(range(2, 200))) is None


def test_each_allocation_is_classed_by_the_powers_it_carries():
    classes = SizeClasses((23, 29, 31))
    assert classes.powers(2 * 23 * 320 * (29 * 8) * (31 * 8)) == (1, 1, 1)  # fp16 B x C x h x w
    assert classes.powers(4 * 23 * 1280) == (1, 0, 0)  # B x C
    assert classes.powers(2 * 23 * 10 * (29 * 31 * 64) ** 2) == (1, 2, 2)  # a math kernel's scores
    columns = [classes.column(powers) for powers in ((1, 1, 1), (1, 0, 0), (0, 0, 0), (1, 1, 1))]
    assert columns == [1, 2, 0, 1] and classes.usable
    classes.powers(29 ** 3 * 4)
    assert not classes.usable  # a power the scaling does not model: the step is measured instead


def test_scaling_applies_to_sd_buckets_of_whole_64_px_only():
    assert scalable("sdxl", (1024, 768), 4) and scalable("sd1", (512, 512), 1)
    assert not scalable("sd1", (544, 512), 1)  # a level would not halve exactly
    assert not scalable("flux", (512, 512), 1)  # joint attention: text + image tokens, a sum
    assert not scalable("sd1", (512, 512), 64)


CASES = [
    ("sd1", {}),
    ("sd1", {"gradient_checkpointing": True, "mixed_precision": "fp16"}),
    ("sdxl", {"mixed_precision": "bf16", "cache_text_encoder_outputs": True, "network_train_unet_only": True}),
    ("sdxl", {"gradient_checkpointing": True, "mixed_precision": "fp16", "network_dim": 8}),
]


@pytest.mark.parametrize(("family", "settings"), CASES, ids=["sd1-fp32", "sd1-fp16-ckpt", "sdxl-bf16-cached",
                                                              "sdxl-fp16-ckpt"])
def test_the_scaled_peak_is_the_directly_measured_one_within_1_percent(family, settings):
    configs_json = json.dumps(tiny_configs(family), sort_keys=True, default=list)
    dtype = {"fp16": "fp16", "bf16": "bf16"}.get(settings.get("mixed_precision"), "fp32")
    for batch, bucket in ((1, (128, 128)), (3, (192, 128)), (2, (256, 320))):
        key = key_of(tiny_config(train_batch_size=batch, **settings))
        scaled = measure.step.__wrapped__.__wrapped__(family, configs_json, dtype, bucket, key)  # no cache
        direct = measure._measured_step(family, configs_json, dtype, bucket, key)
        assert scaled.peak == pytest.approx(direct.peak, rel=0.01), (batch, bucket)
        assert scaled.gradient_bytes == direct.gradient_bytes and scaled.trainable_shapes == direct.trainable_shapes


def test_another_batch_or_bucket_is_read_off_without_measuring(monkeypatch):
    config = tiny_config(train_batch_size=2, resolution="128,128", network_dim=6)
    first = estimate_training_memory(config, "sd1", configs=tiny_configs("sd1"))

    def measured_again(*args, **kwargs):
        raise AssertionError("the step was measured again")

    monkeypatch.setattr(measure, "tracked_step", measured_again)
    monkeypatch.setattr(measure, "tracked_encode", lambda *args, **kwargs: measure.EncodeMeasure(0, False))
    bigger = estimate_training_memory(replace(config, train_batch_size=5, resolution="256,192"), "sd1",
                                      configs=tiny_configs("sd1"))
    assert bigger.bytes_of("activations") > 2 * first.bytes_of("activations")
