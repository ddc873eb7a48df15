"""What testing tools need from a run folder (its base model, size, clip_skip) and the model loading.

The run record (`<name>_run.json`) remembers the base model and the configuration a LoRA was
trained with, so that `grid` and `evaluate` work from just the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorasmith.errors import ToolError
from lorasmith.models.base import BaseModel


@dataclass(frozen=True)
class RunSettings:
    base_model: str = ""
    model_family: str = "auto"
    v_parameterization: bool = False
    allow_pickle: bool = False  # the user allowed this very file for training
    vae: str = ""  # the separate VAE the run trained with, if any
    resolution: tuple[int, int] = (512, 512)
    clip_skip: int = 1
    max_token_length: int = 75
    output_name: str | None = None
    flux_files: tuple[str, str, str] = ("", "", "")  # Flux.1's ae, clip_l and t5xxl files the run used


def run_settings(run_dir: str | Path | None) -> RunSettings:
    """The run's settings from its record; defaults when there is no record (e.g. downloaded LoRAs)."""
    from lorasmith.config.schema import parse_resolution
    from lorasmith.train.run import read_record

    if not run_dir:
        return RunSettings()
    try:
        record = read_record(run_dir)
    except Exception:  # no record: the caller must say which base model
        return RunSettings()
    config = record.config
    return RunSettings(
        base_model=record.base_model, model_family=config.get("model_family", "auto"),
        v_parameterization=bool(config.get("v_parameterization", False)),
        allow_pickle=bool(config.get("allow_pickle", False)), vae=str(config.get("vae", "") or ""),
        resolution=parse_resolution(config.get("resolution", "512,512")),
        clip_skip=int(config.get("clip_skip", 1)), max_token_length=int(config.get("max_token_length", 75)),
        output_name=record.output_name,
        flux_files=tuple(str(config.get(key, "") or "") for key in ("ae", "clip_l", "t5xxl")))


def load_for_testing(base_model: str | None, settings: RunSettings = RunSettings(), precision: str = "no",
                     allow_pickle: bool = False) -> BaseModel:
    """Load the base model (given, else the run's) on the GPU when there is one, else the CPU."""
    import torch

    from lorasmith.models.load import load_base_model
    from lorasmith.train.setup import weight_dtype

    path = base_model or settings.base_model
    if not path:
        raise ToolError("no base model: give the base model file (--model); no run record here names one")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    own_base = path == settings.base_model  # the run's own base: its pickle permission and VAE apply
    return load_base_model(path, family=settings.model_family, v_parameterization=settings.v_parameterization,
                           allow_pickle=allow_pickle or (settings.allow_pickle and own_base),
                           dtype=weight_dtype(precision, device), device=device,
                           vae_path=settings.vae if own_base and settings.vae else None,
                           **dict(zip(("ae", "clip_l", "t5xxl"), (f or None for f in settings.flux_files))))


def free_name(folder: Path, stem: str, suffix: str = ".png") -> str:
    """`stem`, or `stem_001`, ... : the first name not yet taken in `folder` (no overwriting)."""
    name, number = stem, 0
    while (folder / f"{name}{suffix}").exists():
        number += 1
        name = f"{stem}_{number:03d}"
    return name
