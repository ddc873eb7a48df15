"""Save and resume the full training state: LoRA (fp32), optimizer, scheduler and position.

Randomness needs no saving: every step draws its noise from a generator seeded by
(seed, step) and every epoch its order from (seed, epoch), so a resumed run replays exactly
what an uninterrupted run would have done.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lorasmith.errors import TrainingError

STATE_FILE = "trainer_state.json"


@dataclass
class Position:
    step: int  # optimizer steps done
    epoch: int  # epochs fully done
    batch_in_epoch: int  # batches of the current epoch already consumed


def save_state(folder: Path, lora_tensors: dict, optimizer, scheduler, position: Position, config: dict) -> Path:
    """Write the state folder atomically (a temporary folder renamed into place)."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in lora_tensors.items()},
                  str(temp / "lora_fp32.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, temp / "optim.pt")
        (temp / STATE_FILE).write_text(json.dumps({
            "step": position.step, "epoch": position.epoch, "batch_in_epoch": position.batch_in_epoch,
            "config": config,
        }, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(temp, folder)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return folder


def load_state(folder: str | Path) -> tuple[dict, dict, Position, dict]:
    """(lora tensors, optimizer+scheduler state, position, saved config) from a state folder."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    if not (folder / STATE_FILE).is_file():
        raise TrainingError(f"'{folder}' is not a training state folder (no {STATE_FILE}); "
                            "give a '<output_name>-NNNNNN-state' folder written with --save_state")
    info = json.loads((folder / STATE_FILE).read_text())
    tensors = load_file(str(folder / "lora_fp32.safetensors"))
    optim = torch.load(folder / "optim.pt", weights_only=True)
    return tensors, optim, Position(info["step"], info["epoch"], info["batch_in_epoch"]), info["config"]
