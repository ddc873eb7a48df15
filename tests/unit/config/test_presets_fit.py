"""Each VRAM preset fits its card by the planner's estimate (the real architectures on the meta device, no weights):
8gb and 12gb on SD1.5 (the tutorial's model), flux-8gb, flux-12gb, flux-16gb and flux-24gb on Flux.1-dev."""

from __future__ import annotations

import pytest

from lorasmith.config.presets import load_preset
from lorasmith.memory import estimate_training_memory

CARDS = [("8gb", "sd1", 8), ("12gb", "sd1", 12), ("flux-8gb", "flux", 8), ("flux-12gb", "flux", 12), ("flux-16gb", "flux", 16),
         ("flux-24gb", "flux", 24)]


@pytest.mark.parametrize(("preset", "family", "gib"), CARDS)
def test_the_preset_fits_its_card(preset, family, gib):
    config = load_preset(preset)
    estimate = estimate_training_memory(config, family)
    assert estimate.fits(gib), "\n".join(estimate.lines())
    if preset.startswith("flux") and gib > 8:  # and it is no preset for the card below: that one has its own
        assert not estimate.fits({24: 16, 16: 12, 12: 8}[gib]), "\n".join(estimate.lines())
