"""One denoising step: noise the latents, predict, compare. Pure functions, no state.

The target is the noise (epsilon models) or the velocity (v-prediction, SD2.x 768-v). The
per-sample loss can be weighted by Min-SNR-gamma or debiased estimation and by
`prior_loss_weight` for regularisation images; offset noise adds a per-channel constant to the
noise, multi-resolution (pyramid) noise adds coarser noise, and timesteps can be limited to a range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lorasmith.models.base import BaseModel


@dataclass
class NoiseDraw:
    noise: torch.Tensor
    timesteps: torch.Tensor


@dataclass(frozen=True)
class NoiseRecipe:
    """How training noise and timesteps are drawn; the fields are sd-scripts' options of the same names."""

    noise_offset: float = 0.0
    adaptive_noise_scale: float = 0.0
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    min_timestep: int = 0
    max_timestep: int | None = None  # None: the scheduler's num_train_timesteps

    @classmethod
    def from_config(cls, config) -> "NoiseRecipe":
        return cls(config.noise_offset, config.adaptive_noise_scale, config.multires_noise_iterations,
                   config.multires_noise_discount, config.min_timestep, config.max_timestep)


def draw_noise(latents: torch.Tensor, num_train_timesteps: int, generator: torch.Generator,
               recipe: NoiseRecipe = NoiseRecipe()) -> NoiseDraw:
    """Noise and timesteps for a batch, from `generator` so that a step can be replayed exactly."""
    batch, channels = latents.shape[:2]
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    if recipe.noise_offset:
        offset = torch.full((batch, channels, 1, 1), float(recipe.noise_offset))
        if recipe.adaptive_noise_scale:  # sd-scripts' apply_noise_offset: more where a channel's mean is far from 0
            mean = latents.detach().float().cpu().mean(dim=(2, 3), keepdim=True)
            offset = (offset + recipe.adaptive_noise_scale * mean.abs()).clamp(min=0)
        noise = noise + offset * torch.randn((batch, channels, 1, 1), generator=generator)
    if recipe.multires_noise_iterations:
        noise = pyramid_noise(noise, generator, recipe.multires_noise_iterations, recipe.multires_noise_discount)
    high = min(recipe.max_timestep or num_train_timesteps, num_train_timesteps)
    timesteps = torch.randint(recipe.min_timestep, high, (batch,), generator=generator)
    return NoiseDraw(noise.to(latents.device, latents.dtype), timesteps.to(latents.device))


def pyramid_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution noise (sd-scripts' pyramid_noise_like): noise drawn at ever coarser scales,
    upsampled and added with weight discount**i, then brought back to unit variance."""
    batch, channels, height, width = noise.shape
    for i in range(iterations):
        ratio = float(torch.rand((), generator=generator)) * 2 + 2  # a random scale step in [2, 4)
        small_h, small_w = max(1, int(height / ratio**i)), max(1, int(width / ratio**i))
        coarse = torch.randn((batch, channels, small_h, small_w), generator=generator)
        noise = noise + F.interpolate(coarse, size=(height, width), mode="bilinear") * discount**i
        if small_h == 1 or small_w == 1:
            break
    return noise / noise.std()


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023): min(SNR, gamma) / SNR, or / (SNR + 1) for v-prediction."""
    ratio = snr(scheduler, timesteps)
    clipped = torch.clamp(ratio, max=gamma)
    return clipped / (ratio + 1.0) if v_prediction else clipped / ratio


def debiased_weights(scheduler, timesteps: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """Debiased estimation (Yu et al. 2024, as sd-scripts): 1 / sqrt(SNR), SNR capped at 1000; SNR + 1 for v."""
    ratio = torch.clamp(snr(scheduler, timesteps), max=1000.0)
    return 1.0 / torch.sqrt(ratio + 1.0 if v_prediction else ratio)


def predict_noise(base: BaseModel, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                  pooled: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
    extra = {}
    if base.family.name == "sdxl":
        extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.to(noisy.device, noisy.dtype)}
    return base.unet(noisy, timesteps, context, **extra).sample


def denoising_loss(base: BaseModel, latents: torch.Tensor, context: torch.Tensor, draw: NoiseDraw,
                   pooled: torch.Tensor | None = None, time_ids: torch.Tensor | None = None,
                   sample_weights: torch.Tensor | None = None, min_snr_gamma: float = 0.0,
                   debiased_estimation: bool = False) -> torch.Tensor:
    """Mean loss of a batch, and per-sample weighting; the trainer and `evaluate` both use it."""
    scheduler = base.noise_scheduler
    noisy = scheduler.add_noise(latents, draw.noise, draw.timesteps)
    prediction = predict_noise(base, noisy, draw.timesteps, context, pooled, time_ids)
    if base.v_prediction:
        target = scheduler.get_velocity(latents, draw.noise, draw.timesteps)
    else:
        target = draw.noise
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma:
        per_sample = per_sample * min_snr_weights(scheduler, draw.timesteps, min_snr_gamma, base.v_prediction)
    if debiased_estimation:
        per_sample = per_sample * debiased_weights(scheduler, draw.timesteps, base.v_prediction)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample.device)
    return per_sample.mean()
