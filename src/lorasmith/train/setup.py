"""The trainer's set-up steps, each small: data, model, network, latents, optimizer."""

from __future__ import annotations

import random
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch

from lorasmith.config.schema import TrainConfig
from lorasmith.dataset.batches import Sample, epoch_samples
from lorasmith.dataset.plan import StepPlan, assign_buckets, plan_steps, read_image_sizes
from lorasmith.dataset.scan import Dataset, Subset
from lorasmith.errors import TrainingError


@dataclass
class TrainingData:
    train: Dataset
    reg: Dataset | None
    samples: list[Sample]  # one epoch's samples (images x repeats, plus regularisation)
    bucket_of: dict[Path, tuple[int, int]]
    plan: StepPlan
    validation: list[Path]  # held-out images (validation_split), never trained on


def _hold_out(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, list[Path]]:
    """Take `fraction` of each folder's images out of training, chosen by the seed."""
    if fraction <= 0:
        return train, []
    rng = random.Random(f"validation-{seed}")
    held: list[Path] = []
    subsets = []
    for subset in train.subsets:
        images = list(subset.images)
        count = min(len(images) - 1, round(len(images) * fraction))
        chosen = set(rng.sample(range(len(images)), count)) if count > 0 else set()
        held += [images[i].path for i in sorted(chosen)]
        subsets.append(Subset(subset.folder, subset.name, subset.repeats,
                              [im for i, im in enumerate(images) if i not in chosen]))
    return Dataset(train.root, subsets, train.is_reg), held


def setup_data(config: TrainConfig, train: Dataset, reg: Dataset | None) -> TrainingData:
    if config.validation_data_dir:  # a folder of its own (kohya layout): nothing is taken out of training
        from lorasmith.dataset.scan import scan_dataset

        folder = scan_dataset(config.validation_data_dir, config.caption_extension)
        validation = [item.path for _, item in folder.items()]
    else:
        train, validation = _hold_out(train, config.validation_split, config.seed)
    sizes = read_image_sizes([train] + ([reg] if reg else []))
    bucket_of = assign_buckets(config, sizes)
    step_plan = plan_steps(config, train, reg, sizes)
    if step_plan.total_steps < 1:
        raise TrainingError("this configuration makes 0 steps; raise max_train_epochs or add images")
    return TrainingData(train, reg, epoch_samples(train, reg), bucket_of, step_plan, validation)


def cache_training_latents(vae, family, config: TrainConfig, data: TrainingData, events) -> dict:
    """The latents of every training (and regularisation) image, in memory or from/to the disk cache."""
    from lorasmith.dataset.latent_cache import cache_latents
    from lorasmith.events import Message, Progress

    events(Message(f"caching latents of {len(data.bucket_of)} images"))
    return cache_latents(vae, data.bucket_of, family.latent_scale, to_disk=config.cache_latents_to_disk,
                         batch_size=config.vae_batch_size,
                         progress=lambda done, total: events(Progress("cache latents", done, total)),
                         flip=config.flip_aug)


class LatentsWhileLoading:
    """A `vae_ready` for load_base_model: the VAE loads first, and the latents are encoded in a
    background thread while the UNet and text encoders load (seconds of start-up saved)."""

    def __init__(self, config: TrainConfig, data: TrainingData, events) -> None:
        self.config, self.data, self.events = config, data, events
        self.future: Future | None = None

    def __call__(self, vae, family) -> None:
        from lorasmith.background import run_in_background

        self.future = run_in_background(cache_training_latents, vae, family, self.config, self.data, self.events,
                                        name="latents")


def allow_new_mixed_precision(mixed_precision: str) -> None:
    """accelerate keeps one AcceleratorState per process and refuses a second Accelerator with
    another mixed_precision; a new run in the same process (a notebook, the tests) drops the old
    run's setting. The process group (PartialState) of an `accelerate launch` is left alone."""
    from accelerate.state import AcceleratorState

    previous = AcceleratorState._shared_state.get("_mixed_precision")
    if previous is not None and previous != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def cpu_only() -> bool:
    """No accelerator here: tell accelerate so that several processes use gloo on the CPU."""
    mps = getattr(torch.backends, "mps", None)
    return not (torch.cuda.is_available() or (mps is not None and mps.is_available())
                or (hasattr(torch, "xpu") and torch.xpu.is_available()))


def weight_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """Frozen base weights in half precision on GPU (as sd-scripts does); fp32 on CPU."""
    if device.type == "cpu" or mixed_precision == "no":
        return torch.float32
    return torch.float16 if mixed_precision == "fp16" else torch.bfloat16


def prepare_base_for_training(base, config: TrainConfig, train_text_encoder: bool) -> None:
    """Freeze everything, choose attention, switch on gradient checkpointing where asked."""
    from diffusers.models.attention_processor import AttnProcessor

    for module in (base.unet, base.vae, *base.text_encoders):
        module.requires_grad_(False)
    if config.zero_terminal_snr:  # rescaled betas: alpha-bar of the last step is 0 (Lin et al. 2023)
        from diffusers import DDPMScheduler

        base.noise_scheduler = DDPMScheduler.from_config(base.noise_scheduler.config, rescale_betas_zero_snr=True)
    if not config.sdpa:
        base.unet.set_attn_processor(AttnProcessor())
    if config.gradient_checkpointing:
        from lorasmith.train.low_vram import enable_checkpointing

        enable_checkpointing(base.unet, config)  # cpu_offload_checkpointing: the saved inputs on the CPU
        if train_text_encoder:
            for encoder in base.text_encoders:
                # transformers 5 renamed it; the old name prints a FutureWarning in every run.
                enable = getattr(encoder, "activation_checkpointing_enable", None) or encoder.gradient_checkpointing_enable
                enable()
    base.unet.train()
    for encoder in base.text_encoders:
        encoder.train(train_text_encoder)  # CLIP has no dropout by default; train() for LoRA dropout


def lora_spec(config: TrainConfig):
    from lorasmith.network.create import network_spec

    return network_spec(config)
