"""X/Y grids: rows of epoch files in training order, columns of weights, labelled PNG and HTML page."""

import json

import numpy as np
from PIL import Image

from lorasmith import api
from lorasmith.sampling.grid import label_margins, make_grid
from lorasmith.sampling.pnginfo import read_parameters
from lorasmith.sampling.runs import run_loras, unique_epochs

from .conftest import write_lora

SMALL = dict(steps=2, width=64, height=64)


def test_run_files_in_training_order_final_last(run_dir):
    found = run_loras(run_dir)
    assert [(f.path.name, f.epoch, f.is_final) for f in found] == [
        ("mychar-000001.safetensors", 1, False), ("mychar-000002.safetensors", 2, False),
        ("mychar.safetensors", 3, True)]
    assert found[2].label == "mychar (final, epoch 3)"


def test_final_file_of_an_epoch_already_saved_is_one_epoch(tmp_path):
    write_lora(tmp_path / "a-000010.safetensors", epoch=10)
    write_lora(tmp_path / "a-000002.safetensors", epoch=2)
    write_lora(tmp_path / "a.safetensors", epoch=10)
    (tmp_path / "a-step00000005.safetensors").write_bytes(b"")  # a stopped run's file is not an epoch
    assert [f.epoch for f in run_loras(tmp_path)] == [2, 10, 10]
    assert [f.path.name for f in unique_epochs(run_loras(tmp_path))] == ["a-000002.safetensors", "a-000010.safetensors"]


def test_grid_size_labels_and_page(sd1, run_dir, tmp_path):
    loras = [f.path for f in run_loras(run_dir)]
    result = make_grid(sd1, "mychar, 1girl", 5, [0.0, 0.5, 1.0], y_loras=loras, output_dir=tmp_path, **SMALL)
    left, top = result.margins
    assert (left, top) == label_margins(result.x_labels, result.y_labels) and left > 0 and top > 0
    grid = Image.open(result.path)
    assert grid.size == (left + 3 * 64, top + 3 * 64)
    page = result.html_path.read_text(encoding="utf-8")
    for label in ["weight 0", "weight 0.5", "weight 1", "mychar-000001", "mychar-000002", "mychar"]:
        assert f">{label}<" in page
    for row in result.cells:
        for cell in row:
            assert f'src="xy_grid_cells/{cell.name}"' in page
    cells = [[np.asarray(Image.open(p)) for p in row] for row in result.cells]
    # weight 0 is the base model in every row; the epochs differ at full weight; the grid holds the cells
    assert np.array_equal(cells[0][0], cells[1][0]) and np.array_equal(cells[0][0], cells[2][0])
    assert not np.array_equal(cells[0][2], cells[1][2])
    assert np.array_equal(np.asarray(grid.convert("RGB"))[top + 64:top + 128, left + 128:left + 192], cells[1][2])
    assert read_parameters(result.path).seed == 5 and read_parameters(result.cells[1][2]).seed == 5


def test_grid_of_prompts_with_one_lora(sd1, run_dir, tmp_path):
    result = make_grid(sd1, "", 1, [1.0], y_prompts=["mychar, smiling", "mychar, angry"],
                       lora=run_dir / "mychar.safetensors", output_dir=tmp_path, name="prompts", **SMALL)
    assert result.y_labels == ["mychar, smiling", "mychar, angry"] and result.path.name == "prompts.png"
    assert Image.open(result.path).size == (result.margins[0] + 64, result.margins[1] + 2 * 64)


def test_api_grid_reads_the_run_record(sd1, run_dir, tmp_path):
    record = {"output_dir": str(run_dir), "output_name": "mychar", "base_model": "unused.safetensors",
              "config": {"resolution": "64,64", "clip_skip": 2}, "validation_images": [], "files": [],
              "status": "finished"}
    folder = tmp_path / "run"
    folder.mkdir()
    for f in run_loras(run_dir):
        (folder / f.path.name).write_bytes(f.path.read_bytes())
    (folder / "mychar_run.json").write_text(json.dumps(record))
    events = []
    first = api.grid(str(folder), "mychar", weights=[1.0], seed=3, steps=2, base=sd1, events=events.append)
    second = api.grid(str(folder), "mychar", weights=[1.0], seed=3, steps=2, base=sd1)
    assert first.path == folder / "grids" / "xy_grid.png" and second.path.name == "xy_grid_001.png"  # never overwrites
    assert Image.open(first.path).size == (first.margins[0] + 64, first.margins[1] + 3 * 64)
    assert first.y_labels[-1] == "mychar (final, epoch 3)"
    assert read_parameters(first.cells[0][0]).clip_skip == 2
    assert {e.path for e in events if getattr(e, "kind", "") == "grid"} == {str(first.path), str(first.html_path)}
