"""Worker jobs for the runner tests: module-level so a spawned process can import them."""

from __future__ import annotations

import time

from lorasmith.errors import TrainingError
from lorasmith.events import FileWritten, Message, Progress


def quick_run(config, events, stop, pause) -> None:
    """Three steps with a loss, a sample and a LoRA file."""
    events(Message("plan: 3 steps"))
    for step in range(1, 4):
        events(Progress("train", step, 3, {"loss": 1.0 / step}))
    events(FileWritten(f"{config.output_dir}/sample.png", "sample"))
    events(FileWritten(f"{config.output_dir}/{config.output_name}.safetensors", "lora"))


def until_stopped(config, events, stop, pause) -> None:
    """Steps until Stop is asked, then 'saves' like the trainer does."""
    step = 0
    while not stop.is_set() and not pause.is_set() and step < 600:
        step += 1
        events(Progress("train", step, 600, {"loss": 0.5}))
        time.sleep(0.05)
    events(FileWritten(f"{config.output_dir}/{config.output_name}-step{step}.safetensors", "lora"))
    if pause.is_set():
        events(FileWritten(f"{config.output_dir}/{config.output_name}-step{step:08d}-state", "state"))


def user_mistake(config, events, stop, pause) -> None:
    raise TrainingError("output folder already holds lora.safetensors; set overwrite or change output_name")


def bug(config, events, stop, pause) -> None:
    raise ZeroDivisionError("division by zero")


def until_stopped_then_write(config, events, stop, pause) -> None:
    """Like until_stopped, but leaves files a test can see with the GUI process gone: started, then saved."""
    from pathlib import Path

    out = Path(config.output_dir)
    (out / "started").write_text("")
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    (out / "saved").write_text("stop" if stop.is_set() else "timeout")
