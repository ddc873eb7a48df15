"""The live GPU memory estimate beside the step plan, driven in real headless Chromium: it follows the preset
and the settings as the step plan does, with no model file and no image folder."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.gui.conftest import screenshot

pytestmark = pytest.mark.browser
expect.set_options(timeout=120_000)  # a first estimate imports diffusers and builds the model on meta


def _preset(page, pattern: str) -> None:
    page.locator("#preset input").click()
    page.get_by_role("option", name=re.compile(pattern)).click()


def test_the_estimate_follows_the_preset_and_the_settings(page):
    memory = page.locator("#memory-estimate")
    _preset(page, "Medium VRAM")
    _preset(page, "High VRAM")  # picked while the first preset's estimate still runs: the newest must arrive
    expect(memory).to_contain_text("largest bucket 768x768, batch 4")
    expect(memory).to_contain_text("fits 8 GB: yes")
    expect(memory).to_contain_text("UNet")
    screenshot(page, "training-memory-estimate")

    _preset(page, "Flux.1-dev, 12 GB")
    expect(memory).to_contain_text("transformer")
    expect(memory).to_contain_text("16 single blocks on the CPU")
    expect(memory).to_contain_text("fits 12 GB: yes")

    page.get_by_role("tab", name="Parameters", exact=True).click()
    field = page.locator("#cfg-train_batch_size input").first
    field.fill("")
    field.press_sequentially("4")
    field.press("Tab")
    expect(memory).to_contain_text("batch 4")  # follows the settings live, like the step plan
    expect(memory).to_contain_text("fits 12 GB: no")
    assert "Traceback" not in page.content()
