"""Training as users run it: the `lorasmith` command in its own process, Ctrl-C, accelerate launch, demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorasmith.network.files import load_lora_file


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from lorasmith.models.single_file import save_single_file
    from lorasmith.models.tiny import tiny_base_model

    path = tmp_path_factory.mktemp("models") / "tiny-sd1.safetensors"
    save_single_file(tiny_base_model("sd1"), str(path))
    return path


def train_args(config, checkpoint: Path) -> list[str]:
    keys = ("train_data_dir", "output_dir", "output_name", "resolution", "min_bucket_reso", "train_batch_size",
            "max_train_epochs", "network_dim", "network_alpha", "learning_rate", "seed")
    args = ["--pretrained_model_name_or_path", str(checkpoint), "--num_cpu_threads_per_process", "1"]
    for key in keys:
        args += [f"--{key}", str(getattr(config, key))]
    return args


def env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def test_ctrl_c_saves_a_loadable_lora_and_exits_cleanly(tiny_train_config, tiny_checkpoint):
    config = tiny_train_config(max_train_epochs=200)
    process = subprocess.Popen([sys.executable, "-m", "lorasmith", "train", *train_args(config, tiny_checkpoint)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    output = []
    deadline = time.time() + 120
    for line in process.stdout:  # wait until training steps are running
        output.append(line)
        if "training" in line and "steps over" in line or time.time() > deadline:
            break
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    text = "".join(output) + rest
    assert process.returncode == 130, text
    assert "Traceback" not in text
    saved = sorted(Path(config.output_dir).glob("mychar-step*.safetensors"))
    assert len(saved) == 1, text
    tensors, metadata = load_lora_file(saved[0])
    assert tensors and int(metadata["ss_steps"]) >= 1


def test_accelerate_launch_two_cpu_processes_trains_and_saves_one_file(tiny_train_config, tiny_checkpoint):
    config = tiny_train_config(max_train_epochs=1)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "lorasmith", "train", *train_args(config, tiny_checkpoint)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    files = sorted(p.name for p in Path(config.output_dir).glob("*.safetensors"))
    assert files == ["mychar.safetensors"]
    tensors, metadata = load_lora_file(Path(config.output_dir) / "mychar.safetensors")
    # 4 images x 2 repeats / batch 2 = 4 batches, shared by 2 processes: 2 optimizer steps each
    assert metadata["ss_steps"] == "2"


def test_readme_demo_command_trains_end_to_end(tmp_path):
    """`lorasmith demo`: plan, progress, LoRA files every epoch, samples, logs, run record."""
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "lorasmith", "demo", "--output_dir", str(out)],
                            capture_output=True, text=True, timeout=600, env=env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "total steps: 160" in result.stdout and "finished 160 steps" in result.stdout
    lora_files = sorted(p.name for p in (out / "output").glob("*.safetensors"))
    assert lora_files == ["smithy-000001.safetensors", "smithy-000002.safetensors", "smithy-000003.safetensors",
                          "smithy.safetensors"]
    assert len(list((out / "output" / "sample").glob("smithy_e*_s*.png"))) == 2
    assert list((out / "output" / "logs").rglob("events.out.tfevents*"))
    tensors, metadata = load_lora_file(out / "output" / "smithy.safetensors")
    assert metadata["ss_sd_model_name"] == "tiny-sd1.safetensors" and metadata["ss_epoch"] == "4"
    import hashlib
    checkpoint = (out / "base" / "tiny-sd1.safetensors").read_bytes()
    assert metadata["ss_new_sd_model_hash"] == hashlib.sha256(checkpoint).hexdigest()
    # the plan sizes the LoRA of the tiny model it trains (not of the real SD1.5 architecture)
    from lorasmith import api
    from lorasmith.config.schema import TrainConfig, with_values
    planned = api.plan(with_values(TrainConfig(), {
        "pretrained_model_name_or_path": str(out / "base" / "tiny-sd1.safetensors"),
        "train_data_dir": str(out / "dataset"), "output_dir": str(tmp_path / "elsewhere"),
        "network_dim": int(metadata["ss_network_dim"]), "network_alpha": float(metadata["ss_network_alpha"]),
    }))
    actual = (out / "output" / "smithy.safetensors").stat().st_size
    assert abs(planned.lora_file_bytes - actual) < 0.05 * actual, (planned.lora_file_bytes, actual)
    # a second demo run in the same folder replaces only its own earlier demo files (in this process: the
    # command line was shown above)
    again = api.demo(str(out), max_train_epochs=1)
    assert again.steps == 40 and not again.interrupted
