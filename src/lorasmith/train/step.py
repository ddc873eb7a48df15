"""One denoising step: noise the latents, predict, compare. Pure functions, no state.

The target is the noise (epsilon models) or the velocity (v-prediction, SD2.x 768-v). The
per-sample loss can be weighted by Min-SNR-gamma or debiased estimation and by
`prior_loss_weight` for regularisation images; offset noise adds a per-channel constant to the
noise, multi-resolution (pyramid) noise adds coarser noise, input perturbation (`ip_noise_gamma`) noises
the input a little more than the target says, and timesteps can be limited to a range. The loss is L2, L1,
or sd-scripts' pseudo-Huber / smooth L1 with a threshold that may follow the timestep (`huber_schedule`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lorasmith.models.base import BaseModel


@dataclass
class NoiseDraw:
    noise: torch.Tensor
    timesteps: torch.Tensor
    input_noise: torch.Tensor | None = None  # the noise put into the input when it differs (ip_noise_gamma)


@dataclass(frozen=True)
class NoiseRecipe:
    """How training noise and timesteps are drawn; the fields are sd-scripts' options of the same names."""

    noise_offset: float = 0.0
    adaptive_noise_scale: float = 0.0
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    min_timestep: int = 0
    max_timestep: int | None = None  # None: the scheduler's num_train_timesteps
    ip_noise_gamma: float = 0.0
    ip_noise_gamma_random_strength: bool = False

    @classmethod
    def from_config(cls, config) -> "NoiseRecipe":
        return cls(config.noise_offset, config.adaptive_noise_scale, config.multires_noise_iterations,
                   config.multires_noise_discount, config.min_timestep, config.max_timestep, config.ip_noise_gamma,
                   config.ip_noise_gamma_random_strength)


@dataclass(frozen=True)
class LossRecipe:
    """How a prediction is scored; sd-scripts' options of the same names."""

    loss_type: str = "l2"  # l2 | l1 | huber | smooth_l1
    huber_c: float = 0.1
    huber_schedule: str = "snr"  # snr | exponential | constant
    huber_scale: float = 1.0
    min_snr_gamma: float = 0.0
    debiased_estimation: bool = False

    @classmethod
    def from_config(cls, config) -> "LossRecipe":
        return cls(config.loss_type, config.huber_c, config.huber_schedule, config.huber_scale, config.min_snr_gamma,
                   config.debiased_estimation_loss)


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
    input_noise = None
    if recipe.ip_noise_gamma:
        gamma = recipe.ip_noise_gamma
        if recipe.ip_noise_gamma_random_strength:
            gamma = float(torch.rand((), generator=generator)) * gamma
        extra = torch.randn(latents.shape, generator=generator)
        input_noise = (noise + gamma * extra).to(latents.device, latents.dtype)
    return NoiseDraw(noise.to(latents.device, latents.dtype), timesteps.to(latents.device), input_noise)


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
    """Min-SNR-gamma (Hang et al. 2023): min(SNR, gamma) / SNR, or / (SNR + 1) for v-prediction.

    At a zero terminal SNR the epsilon weight's limit, 1, stands in for 0 / 0."""
    ratio = snr(scheduler, timesteps)
    clipped = torch.clamp(ratio, max=gamma)
    if v_prediction:
        return clipped / (ratio + 1.0)
    return torch.where(ratio > 0, clipped / ratio.clamp(min=1e-12), torch.ones_like(ratio))


def debiased_weights(scheduler, timesteps: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """Debiased estimation (Yu et al. 2024, as sd-scripts): 1 / sqrt(SNR), SNR capped at 1000; SNR + 1 for v."""
    ratio = torch.clamp(snr(scheduler, timesteps), min=1e-3, max=1000.0)  # min: a zero terminal SNR
    return 1.0 / torch.sqrt(ratio + 1.0 if v_prediction else ratio)


def huber_threshold(scheduler, timesteps: torch.Tensor, recipe: LossRecipe) -> torch.Tensor:
    """The per-sample threshold of the Huber losses: constant, falling exponentially with the timestep, or
    following the noise level (snr: near 1 for clean inputs, near huber_c for noisy ones), as sd-scripts."""
    if recipe.huber_schedule == "exponential":
        rate = -math.log(recipe.huber_c) / scheduler.config.num_train_timesteps
        return torch.exp(-rate * timesteps.float()) * recipe.huber_scale
    if recipe.huber_schedule == "snr":
        alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod.clamp(min=1e-12)) ** 0.5
        return (1 - recipe.huber_c) / (1 + sigmas) ** 2 + recipe.huber_c
    return torch.full(timesteps.shape, recipe.huber_c * recipe.huber_scale, device=timesteps.device)


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str,
                     threshold: torch.Tensor | None = None) -> torch.Tensor:
    """The unreduced loss: L2, L1, pseudo-Huber 2c(sqrt(d^2 + c^2) - c) or smooth L1 2(sqrt(d^2 + c^2) - c)."""
    if loss_type == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    c = threshold.view(-1, *([1] * (prediction.ndim - 1)))
    root = torch.sqrt((prediction - target) ** 2 + c**2) - c
    return 2 * c * root if loss_type == "huber" else 2 * root


def predict_noise(base: BaseModel, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                  pooled: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
    extra = {}
    if base.family.name == "sdxl":
        extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.to(noisy.device, noisy.dtype)}
    return base.unet(noisy, timesteps, context, **extra).sample


def denoising_loss(base: BaseModel, latents: torch.Tensor, context: torch.Tensor, draw: NoiseDraw,
                   pooled: torch.Tensor | None = None, time_ids: torch.Tensor | None = None,
                   sample_weights: torch.Tensor | None = None, recipe: LossRecipe = LossRecipe(),
                   loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss of a batch, and per-sample weighting; the trainer and `evaluate` both use it."""
    scheduler = base.noise_scheduler
    noisy = scheduler.add_noise(latents, draw.noise if draw.input_noise is None else draw.input_noise, draw.timesteps)
    prediction = predict_noise(base, noisy, draw.timesteps, context, pooled, time_ids)
    if base.v_prediction:
        target = scheduler.get_velocity(latents, draw.noise, draw.timesteps)
    else:
        target = draw.noise
    threshold = huber_threshold(scheduler, draw.timesteps, recipe) if recipe.loss_type in ("huber", "smooth_l1") \
        else None
    elementwise = elementwise_loss(prediction.float(), target.float(), recipe.loss_type, threshold)
    if loss_mask is not None:  # masked_loss, as sd-scripts: the pixels' losses weighted by the mask
        elementwise = elementwise * loss_mask.to(elementwise.device, elementwise.dtype)
    per_sample = elementwise.mean(dim=(1, 2, 3))
    if recipe.min_snr_gamma:
        per_sample = per_sample * min_snr_weights(scheduler, draw.timesteps, recipe.min_snr_gamma, base.v_prediction)
    if recipe.debiased_estimation:
        per_sample = per_sample * debiased_weights(scheduler, draw.timesteps, base.v_prediction)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample.device)
    return per_sample.mean()
