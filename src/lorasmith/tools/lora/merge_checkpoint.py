"""Merge LoRA files into a Stable Diffusion checkpoint, as sd-scripts' merge_lora.py --sd_model does.

The checkpoint is streamed: each stored tensor is read, the LoRA modules that touch it add
their change (`ModuleDelta.merged`, in float32, so LyCORIS files merge too), and it is cast
back and written before the next one is read, so memory holds one tensor, not a second model.
The output keeps the source's layout, every tensor (also those no loader reads), their order
of names and dtypes, unless `save_precision` asks for another float dtype: a single file stays
one file, a diffusers folder becomes a folder with the same files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lorasmith.errors import ModelError, ToolError
from lorasmith.tools.lora.checkpoint_keys import (
    PICKLE_SUFFIXES,
    SINGLE_FILE,
    CheckpointMap,
    Slot,
    checkpoint_map,
)
from lorasmith.tools.lora.outputs import atomic_path, checked_output


@dataclass
class MergedLora:
    """One LoRA file merged: how many modules it had and of which network types."""

    path: Path
    ratio: float
    modules: int
    kinds: list[str]  # "lora", or LyCORIS class names


@dataclass
class MergeReport:
    source: Path
    save_to: Path
    family_title: str
    layout: str  # "single_file" or "diffusers"
    loras: list[MergedLora]
    tensors_written: int = 0
    tensors_changed: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)  # saved float dtype -> number of tensors
    left_out: list[str] = field(default_factory=list)  # files not copied (stale pickles beside safetensors)
    seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        lines = [f"merged into {self.source.name} ({self.family_title}, "
                 f"{'single file' if self.layout == SINGLE_FILE else 'diffusers folder'}):"]
        for lora in self.loras:
            kinds = ", ".join(sorted(set(lora.kinds)))
            lines.append(f"  {lora.path.name} at {lora.ratio:g}: {lora.modules} modules ({kinds})")
        dtypes = ", ".join(f"{count} {name}" for name, count in sorted(self.dtypes.items()))
        lines.append(f"changed {self.tensors_changed} of {self.tensors_written} tensors ({dtypes}) "
                     f"in {self.seconds:.1f} s")
        for name in self.left_out:
            lines.append(f"left out {name}: a pickle copy of weights that would not carry the merge")
        lines.append(f"saved {self.save_to}")
        return lines


def merge_into_checkpoint(sd_model: str | os.PathLike, models: list, ratios: list, save_to: str | os.PathLike, *,
                          overwrite: bool = False, save_precision: str | None = None) -> MergeReport:
    """Write `sd_model` with each LoRA of `models` merged at its ratio to `save_to`."""
    started = time.monotonic()
    if not models:
        raise ToolError("no LoRA to merge; give one or more files with --models")
    if len(models) != len(ratios):
        raise ToolError(f"{len(models)} --models but {len(ratios)} --ratios; give one ratio per LoRA")
    source = Path(sd_model)
    checkpoint = checkpoint_map(source)
    out = checked_output(save_to, [source, *models], overwrite)
    if checkpoint.layout == SINGLE_FILE and out.suffix.lower() != ".safetensors":
        raise ToolError(f"--save_to '{out.name}' must end in .safetensors (the checkpoint is one file)")
    if checkpoint.layout != SINGLE_FILE and out.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES):
        raise ToolError(f"--save_to '{out.name}' names a file, but the checkpoint is a diffusers folder; "
                        "give a folder name")
    dtype = _save_dtype(save_precision)
    loras, touches = _plan(checkpoint, models, ratios)
    report = MergeReport(source, out, checkpoint.family.title, checkpoint.layout, loras)
    if checkpoint.layout == SINGLE_FILE:
        metadata = _checkpoint_metadata(checkpoint, models, out)
        with atomic_path(out) as temp:
            _merge_file(source, temp, touches.get("", {}), dtype, report, metadata)
    else:
        with _atomic_folder(out) as temp:
            _merge_folder(checkpoint, temp, touches, dtype, report)
    report.seconds = time.monotonic() - started
    return report


def _save_dtype(save_precision: str | None) -> Any:
    if save_precision is None:
        return None
    from lorasmith.network.files import save_dtype

    return save_dtype(save_precision)


# --- the LoRAs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Touch:
    """One module's change to one stored tensor."""

    slot: Slot
    delta: Any  # ModuleDelta
    ratio: float
    weight_slot: Slot | None = None  # for a bias: the layer's weight, which LyCORIS rebuilds the layer from


def _plan(checkpoint: CheckpointMap, models: list, ratios: list) -> tuple[list[MergedLora], dict]:
    """The LoRAs read and checked, and file -> stored key -> the touches that change it, in order."""
    from lorasmith.network.deltas import module_deltas
    from lorasmith.network.files import load_lora_file

    loras, touches = [], {}
    for model, ratio in zip(models, ratios):
        path = Path(model)
        deltas = module_deltas(load_lora_file(path)[0])
        for name, delta in deltas.items():
            for touch in _touches(checkpoint, path, name, delta, float(ratio)):
                touches.setdefault(touch.slot.file, {}).setdefault(touch.slot.key, []).append(touch)
        loras.append(MergedLora(path, float(ratio), len(deltas), [d.algo for d in deltas.values()]))
    return loras, touches


def _touches(checkpoint: CheckpointMap, path: Path, name: str, delta: Any, ratio: float) -> list[Touch]:
    slots = checkpoint.slots.get(name)
    if not slots:
        raise ModelError(f"'{path.name}' has module '{name}', which matches no layer of this "
                         f"{checkpoint.family.title} checkpoint; is the LoRA for another model family?")
    shape = delta.weight_shape()
    if shape is not None and _squeezed(shape) != _squeezed(slots[0].shape):
        raise ModelError(f"'{path.name}' module '{name}' has the shape {list(shape)} but the checkpoint's layer "
                         f"is {list(slots[0].shape)}; is the LoRA for another model family?")
    touches = [Touch(slot, delta, ratio) for slot in slots]
    if delta.changes_bias:
        by_file = {slot.file: slot for slot in slots}
        touches += [Touch(bias, delta, ratio, by_file[bias.file]) for bias in checkpoint.bias_slots.get(name, [])]
    return touches


def _squeezed(shape: tuple) -> tuple:
    """A 1x1 convolution's weight as the matrix it is (some files store linears as 1x1 convs)."""
    return tuple(shape[:2]) if tuple(shape[2:]) == (1, 1) else tuple(shape)


# --- streaming -------------------------------------------------------------------------------


def _merge_file(source: Path, target: Path, touches: dict[str, list[Touch]], dtype: Any, report: MergeReport,
                metadata: dict[str, str] | None = None) -> None:
    """Copy one .safetensors file tensor by tensor, merging the LoRA changes of the touched ones."""
    from lorasmith.models.tensor_files import SafetensorsFile, SafetensorsWriter

    with SafetensorsFile(source) as reader:
        entries = [(key, shape, _out_dtype(stored, dtype)) for key, shape, stored in reader.layout()]
        with SafetensorsWriter(target, entries, reader.metadata() if metadata is None else metadata) as writer:
            for key in writer.order:
                tensor = reader[key]
                out_dtype = _out_dtype(tensor.dtype, dtype)
                if key in touches:
                    tensor = _merged(key, tensor, touches[key], reader)
                    report.tensors_changed += 1
                writer.write(key, tensor.to(out_dtype))
                report.tensors_written += 1
                if out_dtype.is_floating_point:
                    name = str(out_dtype).removeprefix("torch.")
                    report.dtypes[name] = report.dtypes.get(name, 0) + 1


def _out_dtype(stored: Any, dtype: Any) -> Any:
    return dtype if dtype is not None and stored.is_floating_point else stored


def _merged(key: str, tensor: Any, touches: list[Touch], reader: Any) -> Any:
    """The stored tensor with each module's change added, in float32 (q/k/v each in its rows)."""
    import torch

    merged = tensor.float()
    with torch.no_grad():
        for touch in touches:
            try:
                part = touch.slot.weight(merged)
                if touch.weight_slot is None:
                    part = touch.delta.merged(part, touch.ratio)
                else:  # a bias: LyCORIS rebuilds the layer from its (source) weight
                    weight = touch.weight_slot.weight(reader[touch.weight_slot.key]).float()
                    part = touch.delta.merged_bias(weight, part, touch.ratio)
                touch.slot.put(merged, part)
            except RuntimeError as error:  # LyCORIS shapes are only known when rebuilt
                raise ModelError(f"LoRA module '{touch.delta.name}' does not fit '{key}' ({error}); "
                                 "is the LoRA for another model family?") from None
    return merged


def _merge_folder(checkpoint: CheckpointMap, target: Path, touches: dict, dtype: Any, report: MergeReport) -> None:
    """A diffusers folder file by file: weights streamed and merged, everything else copied."""
    weights = set(checkpoint.files)
    for item in sorted(checkpoint.path.rglob("*")):
        relative = item.relative_to(checkpoint.path).as_posix()
        if item.is_dir():
            (target / relative).mkdir(parents=True, exist_ok=True)
        elif relative in weights:
            _merge_file(item, target / relative, touches.get(relative, {}), dtype, report)
        elif item.suffix.lower() in PICKLE_SUFFIXES and any(item.parent.glob("*.safetensors")):
            report.left_out.append(relative)  # a copy would keep the unmerged weights
        else:
            shutil.copy2(item, target / relative)


@contextmanager
def _atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path`, put in its place when the block ends without an error."""
    from lorasmith.config.files import default_file_mode

    temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield temp
        mode = default_file_mode()
        os.chmod(temp, mode | (mode & 0o444) >> 2)  # mkdtemp makes it owner-only; readable folders are searchable
        if path.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(temp, path)
            shutil.rmtree(old)
        else:
            if path.exists():
                path.unlink()
            os.replace(temp, path)
    finally:
        if temp.exists():
            shutil.rmtree(temp)


# --- metadata --------------------------------------------------------------------------------


def _checkpoint_metadata(checkpoint: CheckpointMap, models: list, out: Path) -> dict[str, str]:
    """The source's metadata, with the model-spec keys sd-scripts writes for a merged checkpoint."""
    from datetime import datetime

    from lorasmith.models.families import modelspec_architecture
    from lorasmith.models.tensor_files import SafetensorsFile
    from lorasmith.network.files import read_lora_metadata
    from lorasmith.network.metadata import SAI_MODEL_SPEC_VERSION

    with SafetensorsFile(checkpoint.path) as file:
        metadata = file.metadata()
    titles = [metadata.get("modelspec.title") or checkpoint.path.stem]
    titles += [read_lora_metadata(m).get("modelspec.title") or Path(m).stem for m in models]
    family, v = checkpoint.family, bool(checkpoint.v_prediction)
    side = 1024 if family.name == "sdxl" else 768 if family.name == "sd2" and v else 512
    spec = {
        "modelspec.sai_model_spec": SAI_MODEL_SPEC_VERSION,
        "modelspec.architecture": modelspec_architecture(family, v).removesuffix("/lora"),
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.resolution": f"{side}x{side}",
        "modelspec.prediction_type": "v" if v else "epsilon",
    }
    for key, value in spec.items():
        metadata.setdefault(key, value)  # a checkpoint that says what it is keeps saying it
    metadata.update({"modelspec.title": out.stem, "modelspec.merged_from": ", ".join(titles),
                     "modelspec.date": datetime.fromtimestamp(int(time.time())).isoformat()})
    return metadata
