"""The step plan: how many steps a configuration makes, as the tutorial teaches to compute it.

images x repeats per folder, doubled by regularisation, divided by batch size and gradient
accumulation, times epochs (the kohya_ss GUI's arithmetic). With aspect-ratio buckets a batch
never mixes buckets, so the count here is the trainer's own: the same function groups both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasmith.config.schema import TrainConfig
from lorasmith.dataset.batches import count_batches, epoch_samples
from lorasmith.dataset.buckets import assign_bucket, bucket_resolutions
from lorasmith.dataset.scan import Dataset


@dataclass
class FolderLine:
    folder: str
    images: int
    repeats: int
    is_reg: bool

    @property
    def samples(self) -> int:
        return self.images * self.repeats


@dataclass
class StepPlan:
    folders: list[FolderLine]
    samples_per_epoch: int
    batches_per_epoch: int
    steps_per_epoch: int
    epochs: int
    batch_size: int
    gradient_accumulation_steps: int
    total_steps: int
    gui_arithmetic_steps: int  # the kohya_ss GUI's formula, for comparison
    advice: list[str] = field(default_factory=list)
    lora_file_bytes: int | None = None
    bucket_counts: dict = field(default_factory=dict)
    memory: Any = None  # memory.MemoryEstimate, when the plan was asked for one

    def lines(self) -> list[str]:
        out = []
        for f in self.folders:
            kind = "reg  " if f.is_reg else "train"
            out.append(f"{kind} {f.folder}: {f.images} images x {f.repeats} repeats = {f.samples}")
        out.append(f"samples per epoch: {self.samples_per_epoch}"
                   + (" (regularisation doubles them)" if any(f.is_reg for f in self.folders) else ""))
        if len(self.bucket_counts) > 1:
            shown = ", ".join(f"{w}x{h}: {n}" for (w, h), n in sorted(self.bucket_counts.items()))
            out.append(f"buckets (images): {shown}")
        out.append(f"batch size: {self.batch_size}, gradient accumulation: {self.gradient_accumulation_steps}")
        out.append(f"steps per epoch: {self.steps_per_epoch}")
        out.append(f"epochs: {self.epochs}")
        if self.total_steps != self.gui_arithmetic_steps:
            out.append(f"(kohya_ss GUI arithmetic gives {self.gui_arithmetic_steps}; buckets make short batches)")
        if self.lora_file_bytes:
            size = self.lora_file_bytes
            shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} KB"
            out.append(f"LoRA file: about {shown} per saved epoch")
        out += [f"advice: {a}" for a in self.advice]
        if self.memory is not None:
            out += self.memory.lines()
            out += ["  " + ", ".join(self.memory.fit_lines())]
        out.append(f"total steps: {self.total_steps}")
        return out


def read_image_sizes(datasets: list[Dataset]) -> dict[Path, tuple[int, int]]:
    """(width, height) of every image from its header only; unreadable ones are left out."""
    from PIL import Image

    sizes = {}
    for dataset in datasets:
        for _, item in dataset.items():
            try:
                with Image.open(item.path) as image:
                    sizes[item.path] = image.size
            except Exception:  # reported separately by check_images_readable / doctor
                continue
    return sizes


def assign_buckets(config: TrainConfig, sizes: dict[Path, tuple[int, int]]) -> dict[Path, tuple[int, int]]:
    resolution = config.resolution_wh
    if not config.enable_bucket:
        return {path: resolution for path in sizes}
    buckets = bucket_resolutions(resolution, config.min_bucket_reso, config.max_bucket_reso, config.bucket_reso_steps)
    return {path: assign_bucket(wh, buckets, config.bucket_no_upscale, config.bucket_reso_steps)
            for path, wh in sizes.items()}


def rules_of_thumb(config: TrainConfig, image_count: int) -> list[str]:
    """The tutorial's advice, said only where the configuration differs from it."""
    advice = []
    suggested_rank = 128 if image_count >= 100 else 64 if image_count >= 50 else 32
    if config.network_dim != suggested_rank:
        advice.append(f"{image_count} images: the tutorial suggests network_dim {suggested_rank} "
                      "(~30 images -> 32, 50+ -> 64, 100+ -> 128)")
    if config.network_alpha != config.network_dim / 2:
        advice.append(f"network_alpha is usually half the rank: {config.network_dim / 2:g}")
    te_lr = config.effective_text_encoder_lr
    if te_lr != config.learning_rate / 2:
        advice.append(f"text_encoder_lr is usually half the learning rate: {config.learning_rate / 2:g}")
    return advice


def epochs_and_steps(steps_per_epoch: int, max_epochs: int, max_steps: int) -> tuple[int, int]:
    """As sd-scripts: max_train_epochs, when set, decides (max_train_steps then has no effect); with epochs 0,
    the steps decide."""
    if max_epochs > 0:
        return max_epochs, steps_per_epoch * max_epochs
    return math.ceil(max_steps / max(steps_per_epoch, 1)), max_steps


def plan_steps(config: TrainConfig, train: Dataset, reg: Dataset | None = None,
               sizes: dict[Path, tuple[int, int]] | None = None) -> StepPlan:
    datasets = [train] + ([reg] if reg else [])
    sizes = read_image_sizes(datasets) if sizes is None else sizes
    bucket_of = assign_buckets(config, sizes)
    samples = [s for s in epoch_samples(train, reg) if s.item.path in bucket_of]
    batch, accum = config.train_batch_size, config.gradient_accumulation_steps
    batches = count_batches(samples, bucket_of, batch)
    steps_per_epoch = math.ceil(batches / accum)
    epochs, total = epochs_and_steps(steps_per_epoch, config.max_train_epochs, config.max_train_steps)
    reg_factor = 2 if reg else 1
    gui_steps = math.ceil(train.samples_per_epoch / batch / accum * config.max_train_epochs * reg_factor)
    if config.max_train_epochs == 0:  # the steps decide, in the GUI as here
        gui_steps = config.max_train_steps
    folders = [FolderLine(s.folder.name, len(s.images), s.repeats, d.is_reg) for d in datasets for s in d.subsets]
    bucket_counts: dict = {}
    for path in bucket_of:
        bucket_counts[bucket_of[path]] = bucket_counts.get(bucket_of[path], 0) + 1
    return StepPlan(
        folders=folders, samples_per_epoch=len(samples), batches_per_epoch=batches,
        steps_per_epoch=steps_per_epoch, epochs=epochs, batch_size=batch,
        gradient_accumulation_steps=accum, total_steps=total, gui_arithmetic_steps=gui_steps,
        advice=rules_of_thumb(config, train.image_count), bucket_counts=bucket_counts,
    )
