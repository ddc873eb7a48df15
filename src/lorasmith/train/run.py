"""The run's files: names as sd-scripts writes them, the overwrite guard, and the run record.

`<output_name>-000002.safetensors` every N epochs, `<output_name>.safetensors` at the end,
`<output_name>-step00000123.safetensors` when stopped early; `<name>-000002-state/` folders
with --save_state. `<output_name>_run.json` records the run (configuration, base model,
held-out validation images, files written) for `lorasmith evaluate` and the GUI.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from lorasmith.config.files import write_text_atomically
from lorasmith.errors import TrainingError


def epoch_file(output_dir: Path, name: str, epoch: int) -> Path:
    return output_dir / f"{name}-{epoch:06d}.safetensors"


def final_file(output_dir: Path, name: str) -> Path:
    return output_dir / f"{name}.safetensors"


def step_file(output_dir: Path, name: str, step: int) -> Path:
    return output_dir / f"{name}-step{step:08d}.safetensors"


def state_folder(output_dir: Path, name: str, epoch: int) -> Path:
    return output_dir / f"{name}-{epoch:06d}-state"


def step_state_folder(output_dir: Path, name: str, step: int) -> Path:
    """A state saved between save points (a stop, a pause, save_every_n_steps), as sd-scripts names it."""
    return output_dir / f"{name}-step{step:08d}-state"


def ema_file(path: Path) -> Path:
    """The moving average's file beside a LoRA file: name-ema.safetensors, name-000002-ema.safetensors."""
    return path.with_name(f"{path.stem}-ema{path.suffix}")


def best_file(output_dir: Path, name: str) -> Path:
    return output_dir / f"{name}-best.safetensors"


def final_state_folder(output_dir: Path, name: str) -> Path:
    """The state at the end of a run (save_state_on_train_end), to train further from."""
    return output_dir / f"{name}-state"


def record_path(output_dir: Path, name: str) -> Path:
    return output_dir / f"{name}_run.json"


def existing_outputs(output_dir: Path, name: str, after_epoch: int = 0, after_step: int = 0) -> list[Path]:
    """LoRA files of this name that a new run (or a resume past `after_epoch`/`after_step`) would replace."""
    if not output_dir.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(name)}(-(\d{{6}})|-step(\d{{8}})|-best)?(-ema)?\.safetensors$")
    found = []
    for path in sorted(output_dir.iterdir()):
        match = pattern.match(path.name)
        earlier = (match and match.group(2) and int(match.group(2)) <= after_epoch) or (
            match and match.group(3) and int(match.group(3)) <= after_step)
        if match and not earlier:
            found.append(path)
    return found


def guard_outputs(output_dir: Path, name: str, overwrite: bool, after_epoch: int = 0, after_step: int = 0,
                  own: frozenset[str] = frozenset()) -> None:
    """Refuse to replace LoRA files of this name, except `own` ones (a resumed run writes its own again)."""
    clashes = [p for p in existing_outputs(output_dir, name, after_epoch, after_step) if str(p) not in own]
    if clashes and not overwrite:
        raise TrainingError(
            f"'{clashes[0]}' already exists ({len(clashes)} file(s) of output_name '{name}'); "
            "choose another output_name or output_dir, or pass --overwrite"
        )


@dataclass
class RunRecord:
    output_dir: str
    output_name: str
    base_model: str
    config: dict
    validation_images: list[str] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)  # {"path", "epoch", "step", "kind"}
    status: str = "running"  # "running" | "finished" | "interrupted" | "paused" | "failed"
    validation_losses: list[dict] = field(default_factory=list)  # {"epoch", "step", "loss"} measured in training
    best_epoch: int | None = None  # the epoch of the lowest validation loss

    def add_file(self, path: Path, epoch: int, step: int, kind: str) -> None:
        self.files = [f for f in self.files if f["path"] != str(path)]
        self.files.append({"path": str(path), "epoch": epoch, "step": step, "kind": kind})

    def remove_file(self, path: Path) -> None:
        self.files = [f for f in self.files if f["path"] != str(path)]

    def write(self) -> None:
        path = record_path(Path(self.output_dir), self.output_name)
        write_text_atomically(path, json.dumps(self.__dict__, indent=2))


def read_record(path: str | Path) -> RunRecord:
    path = Path(path)
    if path.is_dir():
        records = sorted(path.glob("*_run.json"))
        if not records:
            raise TrainingError(f"'{path}' holds no lorasmith run (no *_run.json); give the output_dir of a run")
        path = records[0]
    return RunRecord(**json.loads(path.read_text()))
