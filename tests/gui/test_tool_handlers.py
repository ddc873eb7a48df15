"""Utilities, Dataset preparation and Testing handlers on real small folders: what the page shows."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from lorasmith import api
from lorasmith.gui import prepare_tab, testing_tab, utilities_tab
from tests.conftest import write_image

# The handlers also pop their mistakes up as Gradio toasts, which outside a page are UserWarnings.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")


def test_prepare_lays_out_the_kohya_project_and_fills_the_folders(tmp_path):
    for index in range(3):
        write_image(tmp_path / "raw" / f"pic{index}.png", seed=index)
    status, train, reg, output, logs = prepare_tab.prepare(
        "mychar", "girl", str(tmp_path / "raw"), 10, "", 1, str(tmp_path / "project"), progress=None)
    assert train == str(tmp_path / "project" / "img") and reg == ""
    assert (output, logs) == (str(tmp_path / "project" / "model"), str(tmp_path / "project" / "log"))
    assert len(list((tmp_path / "project" / "img" / "10_mychar girl").glob("*.png"))) == 3
    assert "3 images x 10 repeats" in status


def test_prepare_without_a_trigger_word_says_what_is_missing(tmp_path):
    status, *folders = prepare_tab.prepare("", "", str(tmp_path), 10, "", 1, str(tmp_path / "p"), progress=None)
    assert status.startswith("⚠️ give the trigger word") and folders == [gr.skip()] * 4


def test_tag_table_and_edits(make_dataset):
    folder = str(make_dataset({"10_mychar": 3}))
    status, rows = utilities_tab.tag_table(folder, ".txt")
    assert ["mychar", 3] in rows and ["1girl", 3] in rows and status == "5 different tags."
    report, rows = utilities_tab.edit_tags(folder, ".txt", "smiling", "1girl", "tag0", "tag zero")
    assert "changed 3 caption(s)" in report
    assert ["smiling", 3] in rows and ["tag zero", 1] in rows and all(tag != "1girl" for tag, _ in rows)


def test_basic_captions_and_the_doctor(make_dataset):
    folder = make_dataset({"5_mychar": 2}, captions=False)
    report = utilities_tab.caption_basic(str(folder), "1girl", "", "", "mychar", ".txt", "Keep them", progress=None)
    assert "wrote 2 caption(s)" in report
    assert (folder / "5_mychar" / "img00.txt").read_text().startswith("mychar")
    utilities_tab.caption_basic(str(folder), "solo", "", "", "", ".txt", "Keep them", progress=None)
    assert "solo" not in (folder / "5_mychar" / "img00.txt").read_text()  # kept as they were
    utilities_tab.caption_basic(str(folder), "solo", "", "", "", ".txt", "Overwrite them", progress=None)
    assert (folder / "5_mychar" / "img00.txt").read_text() == "solo"
    assert utilities_tab._existing("Add the new tags to them") == {"overwrite": False, "append": True}
    assert "```text" in utilities_tab.doctor(str(folder), ".txt", "512,512", progress=None)


def test_tool_mistakes_are_readable_lines(tmp_path):
    assert utilities_tab.tag_table("", ".txt")[0] == "⚠️ choose the image folder first"
    assert utilities_tab.caption_wd14(str(tmp_path), "", 0.35, 0.85, "", "", ".txt", "Keep them", progress=None) \
        .startswith("⚠️ give the WD14 tagger folder")
    status, grid = testing_tab.grid(str(tmp_path), "", "mychar", "0.5, strong", 1, progress=None)
    assert status.startswith("⚠️ weights must be numbers") and grid == gr.skip()
    report, plot = testing_tab.evaluate(str(tmp_path / "no-run"), "", progress=None)
    assert report.startswith("⚠️ ") and "Traceback" not in report and plot is None


def _checked_fake(monkeypatch, name: str, result, calls: list) -> None:
    """Replace api.<name> by a fake that insists on being called as the real one can be."""
    real = getattr(api, name)

    def fake(*args, **kwargs):
        calls.append(inspect.signature(real).bind(*args, **kwargs).arguments)
        return result

    monkeypatch.setattr(api, name, fake)


def test_testing_handlers_call_the_tools_as_they_are_declared(monkeypatch, tmp_path):
    picture = write_image(tmp_path / "cell.png")
    calls: list = []
    _checked_fake(monkeypatch, "generate", SimpleNamespace(images=[Image.open(picture)], paths=[]), calls)
    _checked_fake(monkeypatch, "grid", SimpleNamespace(path=picture), calls)
    _checked_fake(monkeypatch, "evaluate", SimpleNamespace(lines=lambda: ["recommended: epoch 2"], plot_path=picture),
                  calls)

    status, images = testing_tab.generate("/m.safetensors", "/run/mychar.safetensors", 0.8, "mychar, 1girl", "",
                                          8, 5.0, 1, 128, "euler_a", "", progress=None)
    assert len(images) == 1 and calls[-1]["loras"] == [("/run/mychar.safetensors", 0.8)]
    assert calls[-1]["output_dir"] is None and calls[-1]["width"] == 128
    status, cells = testing_tab.grid("/run", "", "mychar", "0.6, 0.8 1", 7, progress=None)
    assert calls[-1]["weights"] == [0.6, 0.8, 1.0] and calls[-1]["base_model"] is None and len(cells) == 1
    report, plot = testing_tab.evaluate("/run", "", progress=None)
    assert "recommended: epoch 2" in report and plot.size == (64, 64)


def test_a_run_with_a_best_epoch_opens_on_it(tmp_path):
    from lorasmith.gui.testing_tab import open_run
    from lorasmith.train.run import RunRecord

    best = tmp_path / "mychar-000003.safetensors"
    best.write_bytes(b"lora")
    RunRecord(str(tmp_path), "mychar", "base.safetensors", {}, files=[
        {"path": str(tmp_path / "mychar-000002.safetensors"), "epoch": 2, "step": 8, "kind": "epoch"},
        {"path": str(best), "epoch": 3, "step": 12, "kind": "epoch"}], best_epoch=3).write()
    status, lora, tabs = open_run(str(tmp_path))
    assert "**3**" in status and lora == str(best) and tabs.selected == "grid"
    RunRecord(str(tmp_path), "mychar", "base.safetensors", {}).write()  # measured nothing: the tab stays as it is
    assert all(not isinstance(value, str) for value in open_run(str(tmp_path)))
