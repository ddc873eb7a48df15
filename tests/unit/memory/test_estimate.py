"""The estimate's breakdown: parts that follow the settings, and the LoRA parts a real step allocates."""

from __future__ import annotations

import pytest

from lorasmith.errors import ConfigError
from lorasmith.memory import estimate_training_memory, largest_bucket
from lorasmith.memory.estimate import PART_NAMES

from .conftest import real_tiny, tiny_config, tiny_configs


def estimate(family="sd1", **settings):
    return estimate_training_memory(tiny_config(**settings), family, configs=tiny_configs(family))


def part(parts, name: str) -> int:
    return next(p.bytes for p in parts if p.name == name)


def test_parts_come_in_a_fixed_order_and_add_up():
    result = estimate()
    assert [p.name for p in result.parts] == list(PART_NAMES)
    assert result.peak == sum(p.bytes for p in result.parts[:7])
    assert result.total == result.peak + result.bytes_of("CUDA context") + result.bytes_of("allocator reserve")
    assert result.fits(result.total / 2**30) and not result.fits(result.total / 2**30 - 0.01)
    text = "\n".join(result.lines())
    assert all(name in text for name in PART_NAMES) and "= total" in text
    assert result.fit_lines((8, 24)) == ["fits 8 GB: yes", "fits 24 GB: yes"]


def test_lora_parts_are_what_a_real_adamw_step_allocates():
    from lorasmith.memory.activations import _backward, _forward, inject_network
    from lorasmith.train.optim import build_optimizer

    config = tiny_config(optimizer_type="AdamW", cache_latents=False)
    planned = estimate_training_memory(config, "sd1", configs=tiny_configs("sd1")).training
    network = inject_network(real_tiny("sd1"), config)
    _backward(_forward(network.base, config, (128, 128), "trained"))
    params = network.trainable_parameters()
    optimizer = build_optimizer("AdamW", network.param_groups(1e-4, 5e-5), 1e-4, [])
    optimizer.step()
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for k, v in s.items() if k != "step")
    assert part(planned, "LoRA weights") == sum(p.numel() * p.element_size() for p in params)
    assert part(planned, "LoRA gradients") == sum(p.grad.numel() * p.grad.element_size() for p in params)
    assert part(planned, "optimizer state") == state > 0


def test_caching_latents_takes_the_vae_off_the_gpu_for_training():
    uncached, cached = estimate(cache_latents=False), estimate(cache_latents=True)
    assert part(cached.training, "VAE") == 0
    vae = sum(p.numel() * p.element_size() for p in real_tiny("sd1").vae.parameters())
    assert part(uncached.training, "VAE") == vae
    assert uncached.caching is None
    assert part(cached.caching, "VAE") > 0  # ... but it is there while the latents are cached


def test_caching_text_outputs_takes_the_text_encoders_off_the_gpu():
    trained = estimate(network_train_unet_only=True)
    cached = estimate(network_train_unet_only=True, cache_text_encoder_outputs=True)
    encoders = sum(p.numel() * p.element_size() for e in real_tiny("sd1").text_encoders for p in e.parameters())
    assert part(trained.training, "text encoders") >= encoders
    assert part(cached.training, "text encoders") == 0
    shuffled = estimate(network_train_unet_only=True, cache_text_encoder_outputs=True, shuffle_caption=True)
    assert part(shuffled.training, "text encoders") > 0  # captions that change cannot be cached (the trainer's rule)


def test_checkpointing_and_precision_change_the_activations():
    plain = part(estimate().training, "activations")
    assert part(estimate(gradient_checkpointing=True).training, "activations") < plain
    half = estimate(mixed_precision="fp16")
    assert part(half.training, "activations") != plain
    assert part(half.training, "UNet") * 2 == part(estimate().training, "UNet")


def test_settings_that_change_nothing_measured_are_not_measured_again(monkeypatch):
    from lorasmith.memory import measure

    config = tiny_config(learning_rate=3e-4)
    first = estimate_training_memory(config, "sdxl", configs=tiny_configs("sdxl"))

    def measured_again(*args, **kwargs):
        raise AssertionError("the step was measured again")

    monkeypatch.setattr(measure, "tracked_step", measured_again)
    monkeypatch.setattr(measure, "tracked_encode", measured_again)
    again = estimate_training_memory(tiny_config(learning_rate=1e-5, max_train_epochs=3), "sdxl",
                                     configs=tiny_configs("sdxl"))
    assert again.parts == first.parts and again.seconds >= 0


def test_largest_bucket():
    assert largest_bucket(tiny_config(resolution="512,512")) == (512, 512)
    assert largest_bucket(tiny_config(resolution="768,512")) == (768, 512)
    assert largest_bucket(tiny_config(resolution="1000", enable_bucket=False)) == (1000, 1000)


def test_bad_family_and_dtype_are_errors():
    with pytest.raises(ConfigError, match="family"):
        estimate_training_memory(tiny_config(), "auto")
    with pytest.raises(ConfigError, match="base_dtype"):
        estimate_training_memory(tiny_config(), "sd1", base_dtype="fp64")


def test_importing_the_planner_loads_no_torch():
    import subprocess
    import sys

    code = "import sys, lorasmith.memory; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
