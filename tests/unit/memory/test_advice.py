"""`plan --vram N`'s advice: the cheapest changes in their stated order, the last one making the run fit."""

from __future__ import annotations

import json
from dataclasses import replace

from lorasmith.memory.advice import fit_advice
from lorasmith.memory.estimate import CUDA_CONTEXT_BYTES, GIB, estimate_training_memory

from .conftest import tiny_config, tiny_configs

ORDER = ["cache latents and text-encoder outputs", "gradient checkpointing", "an 8-bit optimizer", "fp8 base weights",
         "block swap", "a smaller batch", "a lower resolution"]


def test_the_advice_comes_cheapest_first_and_the_last_change_fits():
    configs = json.loads(json.dumps(tiny_configs("sd1")))
    config = tiny_config(resolution="384,384", train_batch_size=8, mixed_precision="fp16", cache_latents=False,
                         optimizer_type="AdamW", network_train_unet_only=True)
    before = estimate_training_memory(config, "sd1", configs)
    # a card that holds the CUDA context and a quarter of this run: several changes are needed
    gib = (CUDA_CONTEXT_BYTES + (before.total - CUDA_CONTEXT_BYTES) / 4) / GIB
    changes = fit_advice(config, "sd1", gib, configs, lowest_resolution=128)
    names = [change.description for change in changes]
    assert len(names) >= 3 and names == sorted(names, key=ORDER.index)
    assert [c.estimate.total for c in changes] == sorted((c.estimate.total for c in changes), reverse=True)
    assert changes[-1].estimate.fits(gib) and not any(c.estimate.fits(gib) for c in changes[:-1])
    applied = config
    for change in changes:  # the last estimate is the config with every change applied
        applied = replace(applied, **change.settings)
    assert estimate_training_memory(applied, "sd1", configs).total == changes[-1].estimate.total <= gib * GIB
    assert "fits" in changes[-1].line(gib)


def test_a_run_that_fits_needs_no_advice():
    assert fit_advice(tiny_config(), "sd1", 24, tiny_configs("sd1")) == []
