"""Save and resume the full training state: LoRA (fp32), optimizer, scheduler and position.

Randomness needs no saving: every step draws its noise from a generator seeded by
(seed, step) and every epoch its order from (seed, epoch), so a resumed run replays exactly
what an uninterrupted run would have done.

Crash safety: a state is written into a hidden temporary folder and renamed into place, so a
folder with the final name is always complete; its `trainer_state.json` (written last) lists the
sha256 of every other file, so a state damaged later (a disk error, a half copy) is recognised
and `find_resume_state` falls back to the one before. The newest `KEEP_STATES` are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lorasmith.errors import TrainingError

STATE_FILE = "trainer_state.json"
KEEP_STATES = 2
_LORA_FILE, _OPTIM_FILE = "lora_fp32.safetensors", "optim.pt"


@dataclass
class Position:
    step: int  # optimizer steps done
    epoch: int  # epochs fully done
    batch_in_epoch: int  # batches of the current epoch already consumed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_files(folder: Path, lora_tensors: dict, optimizer, scheduler, ema: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in lora_tensors.items()}, str(folder / _LORA_FILE))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "ema": ema},
               folder / _OPTIM_FILE)


def save_state(folder: Path, lora_tensors: dict, optimizer, scheduler, position: Position, config: dict,
               ema: dict | None = None) -> Path:
    """Write the state folder atomically (a temporary folder renamed into place)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        _write_files(temp, lora_tensors, optimizer, scheduler, ema)
        checksums = {name: _sha256(temp / name) for name in (_LORA_FILE, _OPTIM_FILE)}
        (temp / STATE_FILE).write_text(json.dumps({
            "step": position.step, "epoch": position.epoch, "batch_in_epoch": position.batch_in_epoch,
            "sha256": checksums, "config": config,
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
    info = _read_info(folder)
    problem = damage(folder, info)
    if problem:
        raise TrainingError(f"the training state '{folder}' is damaged ({problem}); resume from an earlier "
                            "state folder, or use --resume auto to pick the newest complete one")
    tensors = load_file(str(folder / _LORA_FILE))
    optim = torch.load(folder / _OPTIM_FILE, weights_only=True)
    return tensors, optim, Position(info["step"], info["epoch"], info["batch_in_epoch"]), info["config"]


def _read_info(folder: Path) -> dict:
    if not (folder / STATE_FILE).is_file():
        raise TrainingError(f"'{folder}' is not a training state folder (no {STATE_FILE}); "
                            "give a '<output_name>-NNNNNN-state' folder written with --save_state")
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as error:
        raise TrainingError(f"the training state '{folder}' is damaged ({STATE_FILE}: {error})") from None


def damage(folder: Path, info: dict) -> str:
    """What is wrong with a state folder's files, or '' when they are as written."""
    for key in ("step", "epoch", "batch_in_epoch", "config"):
        if key not in info:
            return f"{STATE_FILE} has no '{key}'"
    for name in (_LORA_FILE, _OPTIM_FILE):
        if not (folder / name).is_file():
            return f"{name} is missing"
    for name, expected in info.get("sha256", {}).items():  # states from before checksums have none
        if _sha256(folder / name) != expected:
            return f"{name} does not match its checksum"
    return ""


# ---- the states of a run: names, newest first, pruning ----------------------------------------


def _state_pattern(name: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(name)}(-\d{{6}}|-step\d{{8}})?-state$")


def run_states(output_dir: Path, name: str) -> list[tuple[int, Path]]:
    """(step, folder) of every state of `name` in `output_dir` whose info file reads, newest first."""
    if not output_dir.is_dir():
        return []
    pattern, found = _state_pattern(name), []
    for folder in output_dir.iterdir():
        if folder.is_dir() and pattern.match(folder.name):
            try:
                step = int(json.loads((folder / STATE_FILE).read_text())["step"])
            except (OSError, ValueError, KeyError, TypeError):
                step = -1  # unreadable: damaged, still listed so that it is named
            found.append((step, folder))
    return sorted(found, key=lambda item: (item[0], item[1].name), reverse=True)


def find_resume_state(output_dir: Path, name: str) -> tuple[Path | None, list[str]]:
    """The newest complete state of this run, and a line for each damaged one passed over."""
    skipped = []
    for _, folder in run_states(output_dir, name):
        try:
            problem = damage(folder, _read_info(folder))
        except TrainingError as error:
            problem = str(error)
        if not problem:
            return folder, skipped
        skipped.append(f"skipped the damaged training state {folder.name} ({problem})")
    return None, skipped


def prune_states(output_dir: Path, name: str, keep: int = KEEP_STATES) -> list[Path]:
    """Delete all but the newest `keep` states of this run, and temporary folders a killed save left."""
    removed = [folder for _, folder in run_states(output_dir, name)[keep:]]
    leftovers = _state_pattern(name)
    for folder in output_dir.glob(f".{name}-*-state.*"):
        if folder.is_dir() and leftovers.match(folder.name[1:].rsplit(".", 1)[0]):
            removed.append(folder)
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def start_afresh(output_dir: Path, name: str, overwrite: bool) -> list[Path]:
    """A new run (not a resume) of `name`: earlier states would be taken for its own by resume auto, so they
    go with --overwrite (returned, for a message) and stop the run otherwise."""
    earlier = [folder for _, folder in run_states(output_dir, name)]
    if earlier and not overwrite:
        raise TrainingError(f"'{output_dir}' holds training states of '{name}' from an earlier run "
                            f"({earlier[0].name}); go on with it (--resume auto), choose another output_name, or "
                            "pass --overwrite to start over")
    for folder in earlier:
        shutil.rmtree(folder, ignore_errors=True)
    return earlier
