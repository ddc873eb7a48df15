"""Extract a LoRA from two checkpoints by SVD, as sd-scripts' extract_lora_from_models.py does.

For every layer sd-scripts' networks.lora wraps (with conv_dim, also the 3x3 convolutions of
LoCon), the difference W_tuned - W_org is factored to rank `dim` (`conv_dim` for 3x3) and
saved as a kohya LoRA with alpha = rank, so its scale is 1 and it adds back that difference.
Like sd-scripts, a text encoder whose largest difference is at most `min_diff` counts as not
trained and is left out; layers whose weights are equal bit for bit carry nothing and are skipped.

Both checkpoints are read by names, one layer at a time (`checkpoint_keys`), never loaded
whole, so memory holds a layer's two weights and its SVD rather than two models.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasmith.errors import ToolError
from lorasmith.models.families import FAMILIES, Family, modelspec_architecture
from lorasmith.network.kohya_keys import UNET
from lorasmith.tools.lora.checkpoint_keys import CheckpointMap, CheckpointReader, checkpoint_map
from lorasmith.tools.lora.outputs import checked_output

# sd-scripts clamps at the 0.99 quantile by default, which moves the result off the best rank-r factors;
# we keep the exact SVD unless --clamp_quantile is given (shared/reference/lycoris-and-tools.md).
CLAMP_QUANTILE = None
MIN_DIFF = 0.01  # sd-scripts' default


@dataclass
class PartReport:
    """One part of the model (UNet or a text encoder): what was extracted from it."""

    name: str  # "UNet", "text encoder", "text encoder 2"
    largest_diff: float = 0.0
    energies: list[float] = field(default_factory=list)  # per module written
    unchanged: int = 0  # layers equal in both models, not written
    left_out: bool = False  # a text encoder that did not change (largest diff <= min_diff)

    @property
    def modules(self) -> int:
        return len(self.energies)

    @property
    def mean_energy(self) -> float:
        return sum(self.energies) / len(self.energies) if self.energies else 1.0


@dataclass
class ExtractReport:
    save_to: Path
    family: Family
    dim: int
    conv_dim: int
    precision: str
    min_diff: float
    parts: list[PartReport]
    seconds: float = 0.0

    @property
    def modules(self) -> int:
        return sum(part.modules for part in self.parts)

    def summary_lines(self) -> list[str]:
        lines = [f"extracted {self.modules} modules from two {self.family.title} models "
                 f"(rank {self.dim}" + (f", conv rank {self.conv_dim}" if self.conv_dim else "") + "):"]
        for part in self.parts:
            if part.left_out:
                lines.append(f"  {part.name}: unchanged (largest difference {part.largest_diff:.2g} <= "
                             f"--min_diff {self.min_diff:g}), left out")
                continue
            skipped = f", {part.unchanged} identical layers skipped" if part.unchanged else ""
            lines.append(f"  {part.name}: {part.modules} modules, mean energy kept {100 * part.mean_energy:.2f}% "
                         f"(largest difference {part.largest_diff:.2g}{skipped})")
        lines.append(f"saved {self.save_to} ({self.precision}, alpha = rank) in {self.seconds:.1f} s")
        return lines


def extract_lora(model_org: str | os.PathLike, model_tuned: str | os.PathLike, save_to: str | os.PathLike,
                 dim: int = 4, *, conv_dim: int = 0, clamp_quantile: float | None = CLAMP_QUANTILE,
                 min_diff: float = MIN_DIFF, save_precision: str | None = None, overwrite: bool = False,
                 family: str = "auto", device: str = "cpu", modelspec: bool = True) -> ExtractReport:
    """The LoRA of model_tuned - model_org at rank `dim`, saved to `save_to`.

    family: "auto", or the family the user said (--sdxl, --v2), checked against the files.
    clamp_quantile None keeps the factors as they are. modelspec False: only the ss_* metadata.
    """
    started = time.monotonic()
    _check_numbers(dim, conv_dim, min_diff)
    _check_device(device)
    from lorasmith.network.files import save_dtype, save_lora_file

    precision = save_precision or "float"
    save_dtype(precision)  # an unknown precision is said now, not after the SVDs
    out = checked_output(save_to, [model_org, model_tuned], overwrite)
    if out.suffix.lower() != ".safetensors":
        raise ToolError(f"--save_to '{out.name}' must end in .safetensors; kohya LoRAs are .safetensors files")
    org, tuned = checkpoint_map(model_org), checkpoint_map(model_tuned)
    _check_same(org, tuned, family)
    from lorasmith.network.targets import lora_targets

    targets = lora_targets(org.family, org.unet, org.text_encoders, conv=conv_dim > 0)
    _check_shapes(org, tuned, targets)
    tensors: dict[str, Any] = {}
    parts = []
    with CheckpointReader(org) as a, CheckpointReader(tuned) as b:
        for component in dict.fromkeys(t.ref.component for t in targets):
            part = PartReport(_part_name(org.family, component))
            group = [t for t in targets if t.ref.component == component]
            tensors.update(_extract_part(a, b, group, part, dim, conv_dim, clamp_quantile, min_diff, device))
            parts.append(part)
    if not tensors:
        raise ToolError(f"'{Path(model_tuned).name}' and '{Path(model_org).name}' have the same weights in every "
                        "layer a LoRA covers; there is nothing to extract")
    metadata = _metadata(org, dim, conv_dim, out, Path(model_org), Path(model_tuned), modelspec)
    save_lora_file(out, tensors, metadata, precision)
    return ExtractReport(out, org.family, dim, conv_dim, precision, min_diff, parts, time.monotonic() - started)


def _extract_part(a: CheckpointReader, b: CheckpointReader, group: list, part: PartReport, dim: int, conv_dim: int,
                  clamp_quantile: float | None, min_diff: float, device: str) -> dict[str, Any]:
    """The kohya tensors of one part's layers (none for a text encoder that did not change)."""
    import torch

    tensors: dict[str, Any] = {}
    with torch.no_grad():
        if group[0].ref.component != UNET:  # as sd-scripts: an encoder that did not change was not trained
            part.largest_diff = max(_difference(a, b, t.ref.key).abs().max().item() for t in group)
            if part.largest_diff <= min_diff:
                part.left_out = True
                return tensors
        for target in group:
            diff = _difference(a, b, target.ref.key)
            part.largest_diff = max(part.largest_diff, diff.abs().max().item())
            if not diff.any():
                part.unchanged += 1
                continue
            rank = conv_dim if target.uses_conv_rank else dim
            tensors.update(_module(target.ref.key, diff.to(device), rank, clamp_quantile, part))
    return tensors


def _check_numbers(dim: Any, conv_dim: Any, min_diff: Any) -> None:
    for name, value, least in (("--dim", dim, 1), ("--conv_dim", conv_dim, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ToolError(f"{name} must be a whole number of at least {least}, got {value!r}")
    if min_diff < 0:
        raise ToolError(f"--min_diff must be 0 or more, got {min_diff}")


def _check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ToolError(f"--device '{device}' is not a device name; use cpu or cuda") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ToolError(f"--device {device}: no CUDA GPU is usable here; leave --device out to use the CPU")


def _check_same(org: CheckpointMap, tuned: CheckpointMap, family: str) -> None:
    if org.family != tuned.family:
        raise ToolError(f"--model_org is {org.family.title} but --model_tuned is {tuned.family.title}; "
                        "extract from two models of the same family")
    if family not in ("auto", org.family.name):
        wanted = FAMILIES[family].title if family in FAMILIES else family
        raise ToolError(f"the models are {org.family.title}, not {wanted}; drop --sdxl/--v2 or give other models")


def _check_shapes(org: CheckpointMap, tuned: CheckpointMap, targets: list) -> None:
    for target in targets:
        mine, other = org.slot(target.ref.key), tuned.slot(target.ref.key)
        if mine is not None and other is not None and (mine.shape, mine.stored) != (other.shape, other.stored):
            raise ToolError(f"the models differ in shape at '{target.ref.key}' ({list(mine.stored)} vs "
                            f"{list(other.stored)}); extract from two models of the same architecture")


def _difference(org: CheckpointReader, tuned: CheckpointReader, name: str) -> Any:
    """W_tuned - W_org of one layer, in float32."""
    return tuned.weight(name).float() - org.weight(name).float()


def _module(name: str, diff: Any, rank: int, clamp_quantile: float | None, part: PartReport) -> dict[str, Any]:
    """The kohya tensors of one module: the difference at `rank`, with alpha = rank (scale 1)."""
    import torch

    from lorasmith.tools.lora.svd import low_rank

    factors = low_rank(diff, rank, clamp_quantile)
    part.energies.append(factors.energy_kept)
    return {f"{name}.lora_up.weight": factors.up.cpu(), f"{name}.lora_down.weight": factors.down.cpu(),
            f"{name}.alpha": torch.tensor(float(factors.rank))}


def _part_name(family: Family, component: str) -> str:
    if component == UNET:
        return "UNet"
    if len(family.text_encoder_prefixes) == 1:
        return "text encoder"
    return "text encoder 1" if component == "text_encoder" else f"text encoder {component.rsplit('_', 1)[1]}"


def _metadata(org: CheckpointMap, dim: int, conv_dim: int, out: Path, org_path: Path, tuned_path: Path,
              modelspec: bool) -> dict[str, str]:
    """sd-scripts' metadata of an extracted LoRA (its minimum ss_* keys and the model spec)."""
    from datetime import datetime

    from lorasmith.network.metadata import NETWORK_MODULE, SAI_MODEL_SPEC_VERSION

    family = org.family
    # sd-scripts takes v-prediction to go with --v2 unless told; a checkpoint that says so decides here.
    v = bool(org.v_prediction) if org.v_prediction is not None else family.name == "sd2"
    version = family.base_model_version + ("_v" if v and family.name != "sdxl" else "")
    args = {"conv_dim": str(conv_dim), "conv_alpha": str(float(conv_dim))} if conv_dim else {}
    metadata = {
        "ss_v2": str(family.name == "sd2"),
        "ss_base_model_version": version,
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(float(dim)),
        "ss_network_args": json.dumps(args),
        # sd-scripts marks nothing; the comment says where the file came from for A1111's and sites' views.
        "ss_sd_model_name": org_path.name,
        "ss_training_comment": f"extracted by SVD from {tuned_path.name} - {org_path.name}",
    }
    if modelspec:
        side = 1024 if family.name == "sdxl" else 768 if family.name == "sd2" and v else 512
        metadata.update({
            "modelspec.sai_model_spec": SAI_MODEL_SPEC_VERSION,
            "modelspec.architecture": modelspec_architecture(family, v),
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models"
            if family.name == "sdxl" else "diffusers",
            "modelspec.title": out.stem,
            "modelspec.resolution": f"{side}x{side}",
            "modelspec.prediction_type": "v" if v else "epsilon",
            "modelspec.date": datetime.fromtimestamp(int(time.time())).isoformat(),
        })
    return metadata
