"""The generate / grid / evaluate commands from the command line, on a tiny model file."""

import json

import pytest
from PIL import Image

from lorasmith.cli import main
from lorasmith.cli.testing_commands import parse_lora_option
from lorasmith.sampling.pnginfo import read_parameters


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from lorasmith.models.single_file import save_single_file
    from lorasmith.models.tiny import tiny_base_model

    path = tmp_path_factory.mktemp("model") / "tiny-sd1.safetensors"
    save_single_file(tiny_base_model("sd1", seed=0), str(path))
    return path


def test_lora_option_parsing():
    assert parse_lora_option("a/b.safetensors:0.6") == ("a/b.safetensors", 0.6)
    assert parse_lora_option("a/b.safetensors") == ("a/b.safetensors", 1.0)
    assert parse_lora_option(r"C:\loras\b.safetensors") == (r"C:\loras\b.safetensors", 1.0)


def test_generate_writes_pngs_with_parameters(model_file, run_dir, tmp_path, capsys):
    code = main(["generate", "--model", str(model_file), "--prompt", "mychar <lora:mychar-000002:0.5>",
                 "--lora_dir", str(run_dir), "--lora", f"{run_dir / 'mychar.safetensors'}:0.8", "--steps", "2",
                 "--width", "64", "--height", "64", "--seed", "11", "--batch_size", "2", "--sampler", "ddim",
                 "--output_dir", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    files = sorted((tmp_path / "out").glob("*.png"))
    assert len(files) == 2
    params = read_parameters(files[1])
    assert (params.prompt, params.seed, params.sampler, params.model) == ("mychar", 12, "DDIM", "tiny-sd1")
    assert set(params.lora_hashes) == {"mychar", "mychar-000002"}


def test_generate_user_mistake_is_one_line(model_file, tmp_path, capsys):
    code = main(["generate", "--model", str(model_file), "--prompt", "x <lora:nobody:1>", "--steps", "1",
                 "--width", "64", "--height", "64", "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no LoRA file named 'nobody'") and err.count("\n") == 1
    assert "--lora_dir" in err  # what to do: no folder was given to look in


def test_generate_and_grid_check_before_loading_the_model(run_dir, tmp_path, capsys):
    # The model path does not exist: reaching the settings' error proves they are checked first.
    for options, message in ((["--width", "100"], "width must be a multiple of 8"),
                             (["--prompt", "x <lora:nobody:1>"], "no LoRA file named 'nobody'")):
        code = main(["generate", "--model", str(tmp_path / "missing.safetensors"), "--output_dir", str(tmp_path),
                     *options])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1
    code = main(["grid", "--run_dir", str(run_dir), "--model", str(tmp_path / "missing.safetensors"),
                 "--width", "100"])
    err = capsys.readouterr().err
    assert code == 2 and "width must be a multiple of 8" in err and err.count("\n") == 1


def test_grid_and_evaluate_from_a_run_folder(model_file, run_dir, tmp_path, capsys):
    from tests.conftest import write_image

    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("mychar-000001.safetensors", "mychar-000002.safetensors", "mychar.safetensors"):
        (folder / name).write_bytes((run_dir / name).read_bytes())
    held_out = [str(write_image(tmp_path / "val" / f"{i}.png", seed=i)) for i in range(2)]
    record = {"output_dir": str(folder), "output_name": "mychar", "base_model": str(model_file),
              "config": {"resolution": "64,64", "clip_skip": 1}, "validation_images": held_out,
              "files": [], "status": "finished"}
    (folder / "mychar_run.json").write_text(json.dumps(record))
    assert main(["grid", "--run_dir", str(folder), "--prompt", "mychar", "--weights", "0.5,1", "--steps", "2"]) == 0
    grid = Image.open(folder / "grids" / "xy_grid.png")
    assert grid.width > 2 * 64 and grid.height > 3 * 64
    assert (folder / "grids" / "xy_grid.html").is_file()
    out = capsys.readouterr().out
    assert out.count("xy_grid.png") == 1 and out.count("xy_grid.html") == 1  # each file named once
    assert main(["evaluate", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "held-out validation images" in out and "recommended: epoch" in out
    assert out.count("recommended: epoch") == 1 and out.count("validation_loss.png") == 1
    assert (folder / "evaluation" / "validation_loss.png").is_file()
