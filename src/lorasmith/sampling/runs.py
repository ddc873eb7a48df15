"""The LoRA files of a run folder, in training order: `<name>-000002.safetensors` ... `<name>.safetensors`.

Names are sd-scripts' (see `train.run`). The run record `<name>_run.json`, when present, says
which output_name and the epoch of each file; without it the names and the files' `ss_epoch`
metadata tell. Step files (`<name>-step00000123`) of stopped runs are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lorasmith.errors import ToolError

_EPOCH_FILE = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{6})\.safetensors$")


@dataclass(frozen=True)
class RunLora:
    path: Path
    epoch: int
    is_final: bool = False

    @property
    def label(self) -> str:
        return f"{self.path.stem} (final, epoch {self.epoch})" if self.is_final else f"{self.path.stem} (epoch {self.epoch})"


def run_loras(run_dir: str | Path, output_name: str | None = None) -> list[RunLora]:
    """Epoch files sorted by epoch, then the final file; ToolError when the folder holds none."""
    folder = Path(run_dir).expanduser()
    if not folder.is_dir():
        raise ToolError(f"run folder '{folder}' does not exist; give the output_dir of a training run")
    name = output_name or _record_name(folder) or _guess_name(folder)
    epochs = sorted((int(m["epoch"]), p) for p in folder.iterdir()
                    if (m := _EPOCH_FILE.match(p.name)) and m["name"] == name)
    found = [RunLora(path, epoch) for epoch, path in epochs]
    final = folder / f"{name}.safetensors"
    if final.is_file():
        found.append(RunLora(final, _final_epoch(final, found), is_final=True))
    if not found:
        raise ToolError(f"'{folder}' holds no LoRA files named '{name}-000001.safetensors' or '{name}.safetensors'; "
                        "give the output_dir of a training run")
    return found


def unique_epochs(loras: list[RunLora]) -> list[RunLora]:
    """One file per epoch (the final file is dropped when an epoch file holds the same epoch)."""
    seen: dict[int, RunLora] = {}
    for lora in loras:
        seen.setdefault(lora.epoch, lora)
    return sorted(seen.values(), key=lambda lora: lora.epoch)


def _record_name(folder: Path) -> str | None:
    from lorasmith.train.run import read_record

    try:
        return read_record(folder).output_name
    except Exception:  # no record, or one we cannot read: the file names decide
        return None


def _guess_name(folder: Path) -> str:
    names = sorted({m["name"] for p in folder.glob("*.safetensors") if (m := _EPOCH_FILE.match(p.name))})
    if len(names) == 1:
        return names[0]
    if not names:
        finals = sorted(p.stem for p in folder.glob("*.safetensors")
                        if "-step" not in p.stem and not p.stem.endswith("-best"))
        if len(finals) == 1:
            return finals[0]
        names = finals
    if not names:
        raise ToolError(f"'{folder}' holds no LoRA files; give the output_dir of a training run")
    raise ToolError(f"'{folder}' holds LoRAs of several runs ({', '.join(names)}); say which with output_name")


def _final_epoch(path: Path, epochs: list[RunLora]) -> int:
    from lorasmith.network.files import read_lora_metadata

    try:
        return int(read_lora_metadata(path).get("ss_epoch", ""))
    except (ValueError, Exception):  # no or odd metadata: the final file comes after the last epoch
        return (epochs[-1].epoch + 1) if epochs else 1
