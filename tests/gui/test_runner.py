"""The training worker: a spawned process per run, state on the server, one run at a time."""

from __future__ import annotations

import time

import pytest

from lorasmith.config.schema import TrainConfig
from lorasmith.errors import TrainingError
from lorasmith.gui.runner import TrainingRunner
from tests.gui import fake_jobs


def _config(tmp_path) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path), output_name="mychar")


def _wait_for(runner: TrainingRunner, predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = runner.snapshot()
        if predicate(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"runner state never matched; last: {runner.snapshot()}")


def test_a_run_reports_progress_losses_samples_and_files(tmp_path):
    runner = TrainingRunner(job=fake_jobs.quick_run)
    runner.start(_config(tmp_path))
    state = _wait_for(runner, lambda s: not s.active)
    assert state.status == "finished", state.detail
    assert (state.done, state.total) == (3, 3)
    assert [loss for _, loss in state.losses] == pytest.approx([1.0, 0.5, 1 / 3])
    assert state.samples == [f"{tmp_path}/sample.png"]
    assert ("lora", f"{tmp_path}/mychar.safetensors") in state.files
    assert state.messages == ["plan: 3 steps"]


def test_pause_stops_with_the_state_saved(tmp_path):
    runner = TrainingRunner(job=fake_jobs.until_stopped)
    assert runner.pause() == "No training is running."
    runner.start(_config(tmp_path))
    _wait_for(runner, lambda s: s.done > 0)
    assert "Pause requested" in runner.pause()
    assert "Already stopping" in runner.stop()
    state = _wait_for(runner, lambda s: not s.active)
    assert state.status == "paused" and state.detail.startswith("Paused: the LoRA and the training state were saved")
    assert state.files[-1][0] == "state"


def test_a_second_start_is_refused_and_stop_ends_cleanly(tmp_path):
    runner = TrainingRunner(job=fake_jobs.until_stopped)
    runner.start(_config(tmp_path))
    _wait_for(runner, lambda s: s.done > 0)
    with pytest.raises(TrainingError, match="already going"):
        runner.start(_config(tmp_path))
    assert "Stop requested" in runner.stop()
    state = _wait_for(runner, lambda s: not s.active)
    assert state.status == "stopped"
    assert state.files[-1][0] == "lora" and "-step" in state.files[-1][1]
    assert runner.wait(10)


@pytest.mark.parametrize("job, expected", [
    (fake_jobs.user_mistake, "Training failed: output folder already holds"),
    (fake_jobs.bug, "Training failed: training crashed (ZeroDivisionError"),
])
def test_failures_become_one_readable_line(tmp_path, job, expected):
    runner = TrainingRunner(job=job)
    runner.start(_config(tmp_path))
    state = _wait_for(runner, lambda s: not s.active)
    assert state.status == "failed"
    assert state.detail.startswith(expected)
    assert "Traceback" not in state.detail


def test_stop_without_a_run_says_so():
    assert TrainingRunner().stop() == "No training is running."


def test_shutdown_lets_a_running_trainer_save_and_end(tmp_path):
    runner = TrainingRunner(job=fake_jobs.until_stopped)
    runner.start(_config(tmp_path))
    _wait_for(runner, lambda s: s.done > 0)
    runner.shutdown(timeout=30)
    state = _wait_for(runner, lambda s: not s.active)
    assert state.status == "stopped" and state.files[-1][0] == "lora"


GUI_THAT_STARTS_A_RUN = """
import sys, time
from lorasmith.config.schema import TrainConfig
from lorasmith.gui.runner import TrainingRunner
from tests.gui import fake_jobs

runner = TrainingRunner(job=fake_jobs.until_stopped_then_write)
runner.start(TrainConfig(output_dir=sys.argv[1], output_name="mychar"))
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["kill the GUI", "SIGTERM to the worker"])
def test_the_worker_saves_when_the_gui_is_killed_or_it_gets_a_signal(tmp_path, how):
    import os
    import signal
    import subprocess
    import sys

    gui = subprocess.Popen([sys.executable, "-c", GUI_THAT_STARTS_A_RUN, str(tmp_path)], cwd=os.getcwd(),
                           env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline and gui.poll() is None, "the worker never started"
            time.sleep(0.05)
        if how == "kill the GUI":
            gui.kill()  # SIGKILL: the GUI asks nothing; the worker must notice by itself
        else:
            worker = subprocess.run(["pgrep", "-P", str(gui.pid), "-f", "multiprocessing"], capture_output=True,
                                    text=True).stdout.split()
            os.kill(int(worker[-1]), signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not (tmp_path / "saved").exists():
            assert time.monotonic() < deadline, "the worker did not stop and save"
            time.sleep(0.05)
        assert (tmp_path / "saved").read_text() == "stop"
    finally:
        gui.kill()
        gui.wait(30)
