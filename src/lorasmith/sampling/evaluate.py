"""Which epoch to keep: a validation loss for every saved LoRA of a run, a table, a plot.

Every epoch file is scored on the same images, the same noise and the same timesteps (a fixed
seed and evenly spaced timesteps), so the differences between epochs come from the LoRA alone.
Images are the run's held-out validation images when it has some (validation_split), else its
training images (which tells less: it shows fitting, not over-fitting).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lorasmith.errors import ToolError
from lorasmith.events import EventSink, FileWritten, Progress, ignore_events
from lorasmith.models.base import BaseModel

LossFn = Callable[..., Any]  # (base, latents, context, draw, pooled, time_ids) -> scalar tensor


def recommend_epoch(losses: dict[int, float], patience: int = 2, tolerance: float = 0.01) -> int:
    """The epoch with the lowest validation loss before the loss rises for good.

    The rule: walk the epochs in order keeping the best (lowest) loss so far. The best epoch is
    chosen as soon as each of the next `patience` epochs is higher than its loss by more than
    `tolerance` (relative: 0.01 is 1 %). A single noisy bump does not count as a rise, nor does a
    rise smaller than the tolerance. When the loss never rises for good (e.g. still falling), the
    lowest loss overall is chosen, which for a falling curve is the last epoch. Ties go to the
    earlier epoch: less training, a more flexible LoRA.
    """
    if not losses:
        raise ToolError("no validation losses to choose an epoch from; the run folder has no LoRA files")
    epochs = sorted(losses)
    values = [float(losses[e]) for e in epochs]
    best = 0
    for i in range(len(values)):
        if values[i] < values[best]:
            best = i
        following = values[best + 1:best + 1 + patience]
        margin = tolerance * abs(values[best])
        if i == best and len(following) == patience and all(v > values[best] + margin for v in following):
            return epochs[best]
    return epochs[min(range(len(values)), key=lambda i: (values[i], i))]


@dataclass
class EvaluationReport:
    losses: dict[int, float]  # epoch -> validation loss
    files: dict[int, Path]  # epoch -> LoRA file
    recommended_epoch: int
    base_loss: float | None  # the base model without LoRA, for reference
    image_source: str  # which images were used
    image_count: int
    plot_path: Path | None = None
    table_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        rows = [f"validation loss on {self.image_count} {self.image_source}", f"{'epoch':>6}  {'loss':>10}  file"]
        if self.base_loss is not None:
            rows.append(f"{'base':>6}  {self.base_loss:10.6f}  (no LoRA)")
        for epoch in sorted(self.losses):
            mark = "  <- recommended" if epoch == self.recommended_epoch else ""
            rows.append(f"{epoch:>6}  {self.losses[epoch]:10.6f}  {self.files[epoch].name}{mark}")
        rows.append(f"recommended: epoch {self.recommended_epoch} ({self.files[self.recommended_epoch].name})")
        return rows + self.notes


def evaluation_images(run_dir: str | Path, train_data_dir: str | None = None) -> tuple[list[Path], str]:
    """(images, where they come from): given training folder, else the run's held-out images, else its training ones."""
    from lorasmith.dataset.scan import scan_dataset
    from lorasmith.train.run import read_record

    if train_data_dir:
        return [item.path for _, item in scan_dataset(train_data_dir).items()], "images of the given folder"
    if not Path(run_dir).expanduser().is_dir():
        raise ToolError(f"run folder '{run_dir}' does not exist; give the output_dir of a training run")
    try:
        record = read_record(run_dir)
    except Exception:
        raise ToolError(f"'{run_dir}' has no run record to find its images in; give the images with "
                        "--train_data_dir") from None
    held_out = [Path(p) for p in record.validation_images if Path(p).is_file()]
    if held_out:
        return held_out, "held-out validation images"
    folder = record.config.get("train_data_dir", "")
    return [item.path for _, item in scan_dataset(folder).items()], "training images (no held-out images)"


def evaluate_run(run_dir: str | Path, base: BaseModel, images: list[str | Path], captions: list[str] | None = None,
                 *, resolution: int = 512, clip_skip: int = 1, max_token_length: int = 75,
                 loss_fn: LossFn | None = None,
                 timesteps: int = 5, seed: int = 0, image_source: str = "images",
                 output_dir: str | Path | None = None, events: EventSink = ignore_events) -> EvaluationReport:
    """Score every epoch file of `run_dir` (and the base model) on `images` at fixed noise and timesteps.

    `captions` default to the caption files beside the images. `loss_fn` defaults to the
    trainer's `train.step.denoising_loss`. Writes `validation_loss.csv` and `validation_loss.png`
    to `output_dir` (default `<run_dir>/evaluation`).
    """
    from lorasmith.sampling.generate import merged_loras
    from lorasmith.sampling.runs import run_loras, unique_epochs

    if not images:
        raise ToolError("no images to measure a validation loss on; give a folder of images")
    loras = unique_epochs(run_loras(run_dir))
    loss_fn = loss_fn or _default_loss(base)
    batch = fixed_batch(base, [Path(p) for p in images], captions, resolution, timesteps, seed)
    base_loss = batch_loss(base, batch, clip_skip, loss_fn, max_token_length)
    losses: dict[int, float] = {}
    for index, lora in enumerate(loras):
        with merged_loras(base, [(lora.path, 1.0)]):
            losses[lora.epoch] = batch_loss(base, batch, clip_skip, loss_fn, max_token_length)
        events(Progress("evaluate", index + 1, len(loras), {"epoch": lora.epoch, "loss": losses[lora.epoch]}))
    report = EvaluationReport(losses, {lora.epoch: lora.path for lora in loras}, recommend_epoch(losses), base_loss,
                              image_source, len(batch["latents"]))
    out = Path(output_dir) if output_dir else Path(run_dir) / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    report.table_path = write_table(out / "validation_loss.csv", report)
    from lorasmith.sampling.loss_plot import draw_loss_plot

    report.plot_path = draw_loss_plot(losses, report.recommended_epoch, out / "validation_loss.png", base_loss)
    for path in (report.table_path, report.plot_path):
        events(FileWritten(str(path), "evaluation"))
    return report


def _default_loss(base: BaseModel) -> LossFn:
    from lorasmith.families import family_behaviour

    return family_behaviour(base.family).fixed_loss


def fixed_batch(base: BaseModel, images: list[Path], captions: list[str] | None, resolution: int,
                timesteps: int, seed: int) -> dict:
    """Latents, captions and the fixed noise and timesteps, computed once for every epoch."""
    import torch

    from lorasmith.dataset.images import load_image
    from lorasmith.dataset.latent_cache import encode_latents
    from lorasmith.dataset.scan import read_caption
    from lorasmith.models.text import sdxl_time_ids

    if captions is None:
        captions = [read_caption(path, ".txt", "")[0] for path in images]
    steps = base.noise_scheduler.config.num_train_timesteps
    spread = torch.tensor([int((i + 0.5) * steps / timesteps) for i in range(timesteps)])  # evenly spaced
    generator = torch.Generator().manual_seed(seed)
    latents, noise, time_ids = [], [], []
    for path in images:
        pixels, original_hw, crop = load_image(path, (resolution, resolution))
        latent = encode_latents(base.vae, pixels[None], base.family.latent_scale)[0].cpu()
        latents.append(latent)
        noise.append(torch.randn((timesteps, *latent.shape), generator=generator))
        time_ids.append(sdxl_time_ids(original_hw, crop, (resolution, resolution)))
    return {"latents": latents, "noise": noise, "timesteps": spread, "captions": list(captions), "time_ids": time_ids}


def batch_loss(base: BaseModel, batch: dict, clip_skip: int, loss_fn: LossFn, max_token_length: int = 75) -> float:
    """Mean loss over the images, each at every fixed timestep, captions read as the run read them."""
    import torch

    from lorasmith.families import family_behaviour
    from lorasmith.train.step import NoiseDraw

    parameter = next(base.unet.parameters())
    device, dtype = parameter.device, parameter.dtype
    total = 0.0
    with torch.no_grad():
        for latent, noise, caption, time_ids in zip(batch["latents"], batch["noise"], batch["captions"],
                                                    batch["time_ids"]):
            count = len(noise)
            text = family_behaviour(base.family).encode_prompts(base, [caption], clip_skip, max_token_length)
            pooled = text.pooled.expand(count, -1) if text.pooled is not None else None
            draw = NoiseDraw(noise.to(device, dtype), batch["timesteps"].to(device))
            loss = loss_fn(base, latent.to(device, dtype).expand(count, -1, -1, -1),
                           text.context.expand(count, -1, -1), draw, pooled, time_ids.expand(count, -1))
            total += float(loss)
    return total / len(batch["latents"])


def write_table(path: Path, report: EvaluationReport) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", "validation_loss", "file", "recommended"])
        for epoch in sorted(report.losses):
            writer.writerow([epoch, f"{report.losses[epoch]:.6f}", report.files[epoch].name,
                             "yes" if epoch == report.recommended_epoch else ""])
    return path
