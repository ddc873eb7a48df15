"""The command line of the foundation: help, config files, plan; user mistakes are one line, no traceback."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from lorasmith.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorasmith", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("plan", "config", "train", "demo"):
        assert command in result.stdout


def test_output_cut_short_by_head_is_no_traceback():
    import os

    # `| head` closes the pipe while a command still prints; here it is closed before the first line.
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "lorasmith", "config", "keys"], stdout=write,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_config_new_writes_a_commented_preset_and_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "mychar.toml"
    assert main(["config", "new", "--preset", "8gb", str(path), "--network_dim", "64"]) == 0
    text = path.read_text()
    assert "# Network rank" in text and "8gb preset" in text
    values = tomllib.loads(text)
    assert values["network_dim"] == 64 and values["optimizer_type"] == "AdamW8bit"
    before = path.read_bytes()
    assert main(["config", "new", "--preset", "12gb", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_plan_prints_the_calculation_and_ends_with_total_steps(make_dataset, tmp_path):
    root = make_dataset({"10_mychar": 3, "5_extra": 2})
    result = run_cli("plan", "--train_data_dir", str(root), "--train_batch_size", "2", "--max_train_epochs", "3",
                     "--resolution", "64", "--min_bucket_reso", "64", "--network_dim", "32", "--network_alpha", "16")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "10_mychar: 3 images x 10 repeats = 30" in result.stdout
    assert "steps per epoch: 20" in result.stdout
    assert "LoRA file: about" in result.stdout
    assert lines[-1] == "total steps: 60"


@pytest.mark.parametrize("args,message", [
    (["--network_dimm", "32"], "unknown configuration key 'network_dimm' on the command line; did you mean 'network_dim'?"),
    (["--learning_rate", "-1"], "learning_rate must be greater than 0"),
    (["--bucket_reso_steps", "1"], "bucket_reso_steps 1 does not fit"),
    (["--resolution", "big"], "resolution must be 'width,height' or one number"),
])
def test_user_mistakes_are_one_line_without_traceback(make_dataset, args, message):
    root = make_dataset({"10_mychar": 1})
    result = run_cli("plan", "--train_data_dir", str(root), *args)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {message}" or message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_folder_without_repeats_prefix_is_explained(make_dataset):
    root = make_dataset({"mychar": 1})
    result = run_cli("plan", "--train_data_dir", str(root))
    assert result.returncode == 2 and "must be named '<repeats>_<name>', e.g. '10_mychar'" in result.stderr
    assert "Traceback" not in result.stderr
