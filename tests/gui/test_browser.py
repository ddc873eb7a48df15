"""The issue's acceptance, driven in real headless Chromium: the page, presets, save, bad input,
the demo run from Start to its LoRA file, and the Utilities and Testing tabs."""

from __future__ import annotations

import re
import tomllib

import pytest
from playwright.sync_api import expect

from tests.gui.conftest import screenshot

pytestmark = pytest.mark.browser
# The first step plan imports torch (seconds on a shared CPU) while keystrokes queue behind it.
expect.set_options(timeout=30_000)


def _open_section(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def _field(page, key: str):
    """The input of the widget for configuration key `key` (form.FieldWidget.elem_id)."""
    return page.locator(f"#cfg-{key} input, #cfg-{key} textarea").first


def _type(page, key: str, text: str) -> None:
    """Type as a user does who pastes and then types the last key (Gradio's `input` event follows keystrokes,
    not fill(); one keystroke at the end, not one per character: each asks the server for a plan)."""
    field = _field(page, key)
    field.fill(text[:-1])
    field.press_sequentially(text[-1:])
    field.press("Tab")


def test_preset_rank_and_save_write_the_file(page, gui_dirs):
    page.locator("#preset input").click()
    page.get_by_role("option", name=re.compile("Medium VRAM")).click()
    expect(page.locator("#config-status")).to_contain_text("Preset applied: Medium VRAM")
    # no image folder yet: the plan says what to set, '<repeats>_<name>' not eaten as HTML tags
    expect(page.locator("#step-plan")).to_contain_text("the folder holding '<repeats>_<name>' folders")
    _open_section(page, "Parameters")
    expect(_field(page, "optimizer_type")).to_have_value("AdamW8bit")
    _type(page, "network_dim", "48")
    screenshot(page, "training-parameters")

    target = gui_dirs["root"] / "configs" / "mychar.toml"
    page.locator("#config-path textarea, #config-path input").first.fill(str(target))
    page.locator("#config-save").click()
    expect(page.locator("#config-status")).to_contain_text(f"Saved {target}")
    saved = tomllib.loads(target.read_text(encoding="utf-8"))
    assert saved["network_dim"] == 48
    assert saved["optimizer_type"] == "AdamW8bit" and saved["gradient_checkpointing"] is True

    for section in ("Source model", "Folders", "Dataset preparation"):
        _open_section(page, section)
        screenshot(page, "training-" + section.lower().replace(" ", "-"))


def test_live_plan_and_bad_input_show_readable_messages(page, gui_dirs, make_dataset):
    plan = page.locator("#step-plan")
    _open_section(page, "Folders")
    _type(page, "train_data_dir", str(gui_dirs["root"] / "no-such-folder"))
    expect(plan).to_contain_text("train_data_dir", timeout=60_000)
    expect(plan).to_contain_text("does not exist")

    _type(page, "train_data_dir", str(make_dataset({"10_mychar": 3})))
    expect(plan).to_contain_text("Total steps: 300")  # 3 images x 10 repeats x 10 epochs, batch 1
    _open_section(page, "Parameters")
    _type(page, "max_train_epochs", "5")
    expect(plan).to_contain_text("Total steps: 150")  # the plan follows the parameters live
    _type(page, "network_dim", "0")
    expect(plan).to_contain_text("network_dim must be at least 1, got 0")

    page.locator("#start-training").click()
    expect(page.locator("#run-status")).to_contain_text("network_dim must be at least 1")
    screenshot(page, "training-bad-input")
    assert "Traceback" not in page.content()


def _explorer_item(explorer, name: str, inside: str | None = None):
    """The row of `name` in a Gradio FileExplorer (within the folder `inside`, when given)."""
    scope = f"//li[span//span[contains(@class,'item-name') and text()='{inside}']]" if inside else ""
    return explorer.locator(f"xpath=.{scope}//span[contains(@class,'wrap')][span[contains(@class,'item-name') "
                            f"and text()='{name}']]").first


def test_the_folder_chooser_fills_the_image_folder(page, gui_dirs, make_dataset):
    dataset = make_dataset({"5_mychar": 2}, root=gui_dirs["browse"] / "chooser" / "img")
    _open_section(page, "Folders")
    page.get_by_text("Browse this computer for the folders").click()
    explorer = page.locator("#browse-folders")
    for folder in ("chooser", "img"):
        _explorer_item(explorer, folder).get_by_role("button", name="expand directory").click()
    _explorer_item(explorer, ".", inside="img").locator("input[type=checkbox]").check()  # img itself
    page.get_by_role("button", name="Use selected path").filter(visible=True).click()
    expect(_field(page, "train_data_dir")).to_have_value(str(dataset))
    expect(page.locator("#step-plan")).to_contain_text("Total steps: 100")  # 2 x 5 repeats x 10 epochs
    screenshot(page, "training-folder-chooser")


def test_the_demo_trains_from_the_page_and_survives_a_reload(page):
    page.locator("#load-demo").click()
    expect(page.locator("#config-status")).to_contain_text("Demo loaded", timeout=30_000)
    expect(page.locator("#step-plan")).to_contain_text("Total steps: 160", timeout=60_000)
    _open_section(page, "Parameters")  # one epoch with a sample keeps the test short on a shared CPU
    _type(page, "max_train_epochs", "1")
    page.get_by_text("Samples and validation").click()
    _type(page, "sample_every_n_epochs", "1")
    expect(page.locator("#step-plan")).to_contain_text("Total steps: 40")
    page.locator("#start-training").click()
    expect(page.locator("#run-status")).to_contain_text("Training started")
    page.locator("#start-training").click()  # a second start while the first runs
    expect(page.locator("#run-status")).to_contain_text("already going")

    page.reload()  # the run belongs to the server, the form to this browser: both survive
    _open_section(page, "Parameters")
    expect(_field(page, "max_train_epochs")).to_have_value("1")
    expect(page.locator("#step-plan")).to_contain_text("Total steps: 40")
    _open_section(page, "Folders")
    expect(_field(page, "output_name")).to_have_value("smithy")
    expect(page.locator("#run-progress")).to_contain_text("Training finished", timeout=150_000)
    expect(page.locator("#run-files")).to_contain_text(re.compile(r"lora: \S*smithy\S*\.safetensors"))
    expect(page.locator("#run-samples img").first).to_be_visible()
    expect(page.locator("#loss-plot canvas, #loss-plot svg").first).to_be_visible()
    screenshot(page, "training-demo-finished")


def test_stop_from_the_page_saves_the_lora_and_ends(page):
    page.locator("#load-demo").click()  # the earlier demo run is replaced
    expect(page.locator("#config-status")).to_contain_text("Demo loaded")
    page.locator("#start-training").click()
    expect(page.locator("#run-progress")).to_contain_text(re.compile(r"train step [1-9]"), timeout=90_000)
    page.locator("#stop-training").click()
    expect(page.locator("#run-status")).to_contain_text("Stop requested")
    expect(page.locator("#run-progress")).to_contain_text("Stopped: the LoRA was saved", timeout=60_000)
    expect(page.locator("#run-files")).to_contain_text(re.compile(r"lora: \S*smithy\S*\.safetensors"))


@pytest.mark.parametrize("tab", ["Utilities", "Testing"])
def test_the_other_tabs_open(page, tab):
    page.get_by_role("tab", name=tab, exact=True).click()
    expect(page.get_by_role("tab", name="Training")).to_be_hidden()
    screenshot(page, tab.lower())


def test_pause_then_resume_from_the_page_after_a_reload(page, gui_dirs):
    page.locator("#load-demo").click()  # the earlier demo run is replaced
    expect(page.locator("#config-status")).to_contain_text("Demo loaded")
    expect(page.locator("#step-plan")).to_contain_text("Total steps: 160", timeout=60_000)
    _open_section(page, "Parameters")  # one epoch: a pause and a resume on a shared CPU in less time
    _type(page, "max_train_epochs", "1")
    expect(page.locator("#step-plan")).to_contain_text("Total steps: 40")
    page.locator("#start-training").click()
    expect(page.locator("#run-status")).to_contain_text("Training started")
    # "Training:" is this run's label (the panel shows the earlier run's last state until this one reports)
    expect(page.locator("#run-progress")).to_contain_text(re.compile(r"Training: train step [1-9]"), timeout=90_000)
    page.locator("#pause-training").click()
    expect(page.locator("#run-status")).to_contain_text("Pause requested")
    expect(page.locator("#run-progress")).to_contain_text("Paused: the LoRA and the training state were saved",
                                                          timeout=60_000)
    page.reload()  # as after a crash or a reboot: the page finds the run and offers to go on
    offer = page.locator("#resume-offer")
    expect(offer).to_contain_text(re.compile(r"was paused at step \d+; its training state smithy-step\d+-state"),
                                  timeout=60_000)
    screenshot(page, "training-paused")
    page.locator("#resume-training").click()
    expect(page.locator("#run-status")).to_contain_text(re.compile(r"Resuming from smithy-step\d+-state"))
    expect(page.locator("#run-progress")).to_contain_text("Training finished", timeout=150_000)
    expect(page.locator("#run-files")).to_contain_text(re.compile(r"lora: \S*smithy\.safetensors"))
    expect(offer).to_be_empty()  # a finished run has nothing to resume
    from lorasmith.network.files import load_lora_file

    from lorasmith.train.run import read_record

    _, metadata = load_lora_file(gui_dirs["demo"] / "output" / "smithy.safetensors")
    assert metadata["ss_steps"] == "40"
    record = read_record(gui_dirs["demo"] / "output")
    # one run went on past the pause: its record keeps the file of the step it paused at
    assert record.status == "finished" and "interrupted" in [f["kind"] for f in record.files]
