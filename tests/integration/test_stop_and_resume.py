"""Runs that are stopped from outside: SIGTERM/SIGHUP save like Ctrl-C, a kill mid-save loses nothing complete,
and `--resume auto` ends at the same LoRA as a run that was never stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lorasmith import api
from lorasmith.config.schema import with_values
from lorasmith.models.tiny import tiny_base_model
from lorasmith.network.files import load_lora_file

from .test_training_processes import env, tiny_checkpoint, train_args  # noqa: F401 (a fixture)

STATE_ARGS = ["--save_state", "--save_precision", "float"]


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if process.poll() is not None or time.time() > deadline:
            output = process.communicate()[0] if process.poll() is not None else ""
            raise AssertionError(f"{path.name} never appeared (exit {process.poll()}): {output[-3000:]}")
        time.sleep(0.02)


def _same_lora(first: Path, second: Path) -> None:
    """Resumed vs uninterrupted on one machine: the same arithmetic, compared within fp32 noise all the same
    (the resumed process may split its threads' work differently)."""
    a, _ = load_lora_file(first)
    b, _ = load_lora_file(second)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def _uninterrupted(config, tmp_path) -> Path:
    reference = api.train(with_values(config, {"output_dir": str(tmp_path / "reference")}))
    return Path(reference.final_file)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_saves_the_lora_and_resume_auto_ends_where_an_uninterrupted_run_does(
        tiny_train_config, tiny_checkpoint, tmp_path, stop_signal):
    config = tiny_train_config(max_train_epochs=16, save_every_n_epochs=5, save_state=True, save_precision="float",
                               pretrained_model_name_or_path=str(tiny_checkpoint))
    out = Path(config.output_dir)
    process = subprocess.Popen([sys.executable, "-m", "lorasmith", "train", *train_args(config, tiny_checkpoint),
                                "--save_every_n_epochs", "5", *STATE_ARGS],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    _wait_for(out / "mychar-000005.safetensors", process)
    process.send_signal(stop_signal)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + stop_signal, output
    assert "Traceback" not in output
    saved = sorted(out.glob("mychar-step*.safetensors"))
    assert len(saved) == 1, output
    tensors, metadata = load_lora_file(saved[0])
    step = int(metadata["ss_steps"])
    assert tensors and 20 <= step < 64, output
    assert (out / f"mychar-step{step:08d}-state").is_dir()
    assert f"stopped ({signal.Signals(stop_signal).name}) after {step} steps" in output
    resume_lines = [line for line in output.splitlines() if line.startswith("to resume: ")]
    assert len(resume_lines) == 1 and resume_lines[0].endswith("--resume auto"), output

    if stop_signal != signal.SIGTERM:  # the resume after a stop is the same whatever the signal: checked once
        return
    events = []
    resumed = api.train(with_values(config, {"resume": "auto"}), events=events.append)
    assert any(f"continuing from mychar-step{step:08d}-state" in getattr(e, "text", "") for e in events)
    assert resumed.steps == 64 and not resumed.interrupted
    _same_lora(Path(resumed.final_file), _uninterrupted(config, tmp_path))
    states = sorted(p.name for p in out.glob("*-state"))
    assert len(states) == 2, states  # the newest two are kept


HANG_WHILE_WRITING_A_STATE = textwrap.dedent("""
    # lorasmith train, except that one state save hangs after writing its files (before its info file)
    import sys, time
    from pathlib import Path
    import lorasmith.train.state as state

    marker, which, written = Path(sys.argv[1]), sys.argv[2], []
    original = state._write_files

    def write_then_hang(folder, *args):
        original(folder, *args)
        written.append(folder)
        if (which == "second" and len(written) == 2) or (which == "at-stop" and "-step" in folder.name):
            marker.write_text(str(folder))
            time.sleep(600)

    state._write_files = write_then_hang
    from lorasmith.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def test_a_run_killed_while_it_writes_a_state_resumes_from_the_previous_complete_one(
        tiny_train_config, tiny_checkpoint, tmp_path):
    config = tiny_train_config(max_train_epochs=4, save_every_n_epochs=1, save_state=True, save_precision="float",
                               pretrained_model_name_or_path=str(tiny_checkpoint))
    out, marker = Path(config.output_dir), tmp_path / "writing-state"
    process = subprocess.Popen([sys.executable, "-c", HANG_WHILE_WRITING_A_STATE, str(marker), "second", "train",
                                *train_args(config, tiny_checkpoint), "--save_every_n_epochs", "1", *STATE_ARGS],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    _wait_for(marker, process)
    process.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    process.communicate(timeout=60)
    assert sorted(p.name for p in out.glob("*-state")) == ["mychar-000001-state"]
    assert list(out.glob(".mychar-000002-state.*"))  # the half-written state, never under the final name

    events = []
    resumed = api.train(with_values(config, {"resume": "auto"}), events=events.append)
    assert any("continuing from mychar-000001-state" in getattr(e, "text", "") for e in events)
    assert not list(out.glob(".mychar-*-state.*"))  # the leftover is cleared at the next state saved
    _same_lora(Path(resumed.final_file), _uninterrupted(config, tmp_path))


def test_resume_auto_without_a_state_starts_fresh_and_says_so(tiny_train_config):
    events = []
    result = api.train(tiny_train_config(max_train_epochs=1, resume="auto"), events=events.append,
                       base=tiny_base_model("sd1"))
    assert result.steps == 4
    assert any("no saved training state of 'mychar'" in getattr(e, "text", "") and "starting fresh" in e.text
               for e in events)


def test_a_second_signal_during_the_stop_save_quits_at_once_leaving_only_complete_files(
        tiny_train_config, tiny_checkpoint, tmp_path):
    config = tiny_train_config(max_train_epochs=200, save_every_n_epochs=1)
    out, marker = Path(config.output_dir), tmp_path / "writing-state"
    process = subprocess.Popen([sys.executable, "-c", HANG_WHILE_WRITING_A_STATE, str(marker), "at-stop", "train",
                                *train_args(config, tiny_checkpoint), "--save_every_n_epochs", "1", "--save_state"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    _wait_for(out / "mychar-000002-state", process)
    process.send_signal(signal.SIGTERM)
    _wait_for(marker, process)  # the stop's own state is being written
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "quit at once on a second SIGTERM" in output and "Traceback" not in output
    assert not list(out.glob(".*"))  # no temporary file or folder left behind
    assert not list(out.glob("mychar-step*-state"))  # the state being written never got its final name
    step_files = list(out.glob("mychar-step*.safetensors"))
    assert len(step_files) == 1 and load_lora_file(step_files[0])[0]  # written before the state: complete
    assert all(load_lora_file(path)[0] for path in out.glob("mychar-0*.safetensors"))
