"""Flux.1's training objective: rectified flow, as sd-scripts trains it (flux_train_utils.py, flux_train_network.py).

x_t = (1 - sigma) x_0 + sigma noise and the transformer predicts the velocity noise - x_0. sigma is drawn by
`timestep_sampling`; the options, their names and defaults are sd-scripts' (`FlowRecipe`). Latents go into the
transformer packed 2x2 ([B, 16, H, W] -> [B, H/2 * W/2, 64]) with (0, row, col) position ids, as FluxPipeline packs
them, and come out unpacked before the loss.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from lorasmith.errors import ConfigError
from lorasmith.models.base import BaseModel
from lorasmith.train.step import LossRecipe, elementwise_loss

TIMESTEP_SAMPLINGS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift")
PREDICTION_TYPES = ("sigma_scaled", "raw", "additive")
WEIGHTING_SCHEMES = ("uniform", "sigma_sqrt", "logit_normal", "mode", "cosmap", "none")
NUM_TRAIN_TIMESTEPS = 1000  # sd-scripts' FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)


@dataclass(frozen=True)
class FlowRecipe:
    """How sigmas are drawn and the prediction is scored; sd-scripts' options of the same names and defaults."""

    timestep_sampling: str = "sigma"  # sigma | uniform | sigmoid | shift | flux_shift
    sigmoid_scale: float = 1.0  # scale of the normal draw under sigmoid, shift and flux_shift
    discrete_flow_shift: float = 3.0  # the shift of "shift" and of the "sigma" table
    model_prediction_type: str = "sigma_scaled"  # sigma_scaled | raw | additive
    guidance_scale: float = 3.5  # the guidance embedding's input (dev only; the docs advise 1.0)
    weighting_scheme: str = "uniform"  # the "sigma" draw's density and sigma_scaled's loss weights
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    min_timestep: int = 0  # sigma is kept in [min_timestep, max_timestep] / 1000
    max_timestep: int | None = None  # None: 1000
    ip_noise_gamma: float = 0.0  # input perturbation: the input gets sigma * (noise + gamma * xi)
    ip_noise_gamma_random_strength: bool = False  # gamma drawn in [0, ip_noise_gamma) each step

    def __post_init__(self) -> None:
        for name, allowed in (("timestep_sampling", TIMESTEP_SAMPLINGS),
                              ("model_prediction_type", PREDICTION_TYPES), ("weighting_scheme", WEIGHTING_SCHEMES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} '{getattr(self, name)}' is unknown; use one of: {', '.join(allowed)}")
        for name in ("sigmoid_scale", "discrete_flow_shift", "logit_std"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be above 0, got {getattr(self, name)}")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ConfigError(f"guidance_scale must be 0 or more (1.0 is usual for dev), got {self.guidance_scale}")
        if not 0 <= self.min_timestep < self.top_timestep <= NUM_TRAIN_TIMESTEPS:
            raise ConfigError(f"min_timestep and max_timestep must satisfy 0 <= min < max <= 1000, "
                              f"got {self.min_timestep} and {self.max_timestep}")
        if self.ip_noise_gamma < 0:
            raise ConfigError(f"ip_noise_gamma must be 0 or more (0.1 is usual), got {self.ip_noise_gamma}")

    @property
    def top_timestep(self) -> int:
        return NUM_TRAIN_TIMESTEPS if self.max_timestep is None else self.max_timestep

    @classmethod
    def from_config(cls, config) -> "FlowRecipe":
        return cls(
            timestep_sampling=config.timestep_sampling, sigmoid_scale=config.sigmoid_scale,
            discrete_flow_shift=config.discrete_flow_shift, model_prediction_type=config.model_prediction_type,
            guidance_scale=config.guidance_scale, weighting_scheme=config.weighting_scheme,
            logit_mean=config.logit_mean, logit_std=config.logit_std, mode_scale=config.mode_scale,
            min_timestep=config.min_timestep, max_timestep=config.max_timestep,
            ip_noise_gamma=config.ip_noise_gamma, ip_noise_gamma_random_strength=config.ip_noise_gamma_random_strength)


@dataclass
class FlowDraw:
    noise: torch.Tensor  # [B, 16, H, W]
    sigmas: torch.Tensor  # [B], in (0, 1]: how much noise the input holds
    timesteps: torch.Tensor  # [B], sigmas * 1000 (for logs, Huber thresholds and validation)
    input_noise: torch.Tensor | None = None  # the noise put into the input when it differs (ip_noise_gamma)

    @classmethod
    def at(cls, noise: torch.Tensor, timesteps: torch.Tensor) -> "FlowDraw":
        """A draw at given timesteps of 1000 (validation, evaluate): sigma = t / 1000."""
        timesteps = timesteps.to(noise.device, torch.float32)
        return cls(noise, timesteps / NUM_TRAIN_TIMESTEPS, timesteps)


# --- packing -------------------------------------------------------------------------------------------------------

def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C]: each 2x2 patch becomes one token, channels first (FluxPipeline's layout)."""
    batch, channels, height, width = latents.shape
    if height % 2 or width % 2:
        raise ValueError(f"latent height and width must be even to pack 2x2, got {height}x{width}")
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack_latents`; `height` and `width` are the latents' (not the image's)."""
    batch, _, features = packed.shape
    patches = packed.view(batch, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, features // 4, height, width)


def image_ids(h2: int, w2: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[h2*w2, 3] position ids of the packed tokens: (0, row, col), row-major as `pack_latents`."""
    ids = torch.zeros(h2, w2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(h2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(w2, device=device, dtype=dtype)[None, :]
    return ids.reshape(h2 * w2, 3)


def text_ids(length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[length, 3] zeros: text tokens carry no position in Flux's rotary embedding."""
    return torch.zeros(length, 3, device=device, dtype=dtype)


# --- drawing noise and sigmas --------------------------------------------------------------------------------------

def draw_flow(latents: torch.Tensor, generator: torch.Generator, recipe: FlowRecipe = FlowRecipe()) -> FlowDraw:
    """Noise and sigmas for a batch, from `generator` (on the CPU) so that a step can be replayed exactly."""
    batch, _, height, width = latents.shape
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    sigmas = draw_sigmas(recipe, batch, (height // 2) * (width // 2), generator)
    input_noise = None
    if recipe.ip_noise_gamma:
        gamma = recipe.ip_noise_gamma
        if recipe.ip_noise_gamma_random_strength:  # one strength for the batch, as sd-scripts
            gamma = float(torch.rand((), generator=generator)) * gamma
        extra = torch.randn(latents.shape, generator=generator)
        input_noise = (noise + gamma * extra).to(latents.device, latents.dtype)
    return FlowDraw(noise.to(latents.device, latents.dtype), sigmas.to(latents.device),
                    (sigmas * NUM_TRAIN_TIMESTEPS).to(latents.device), input_noise)


def draw_sigmas(recipe: FlowRecipe, batch: int, tokens: int, generator: torch.Generator) -> torch.Tensor:
    """[batch] sigmas by `recipe.timestep_sampling`; `tokens` is the packed sequence length (flux_shift)."""
    method = recipe.timestep_sampling
    if method == "sigma":
        return _table_sigmas(recipe, batch, generator)
    if method == "uniform":
        sigmas = torch.rand(batch, generator=generator)
    else:
        sigmas = torch.sigmoid(recipe.sigmoid_scale * torch.randn(batch, generator=generator))
    if method == "shift":
        shift = recipe.discrete_flow_shift
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    elif method == "flux_shift":  # the shift FluxPipeline samples with at this resolution
        exp_mu = math.exp(flux_mu(tokens))
        sigmas = exp_mu / (exp_mu + 1 / sigmas - 1)
    low, high = recipe.min_timestep / NUM_TRAIN_TIMESTEPS, recipe.top_timestep / NUM_TRAIN_TIMESTEPS
    # sd-scripts' Flux path ignores min/max_timestep; its SD3 path maps the draw onto the range like this.
    return sigmas if (low, high) == (0.0, 1.0) else low + (high - low) * sigmas


def flux_mu(tokens: int) -> float:
    """BFL's resolution-dependent shift: linear in the packed token count, 0.5 at 256 and 1.15 at 4096."""
    return 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)


def _table_sigmas(recipe: FlowRecipe, batch: int, generator: torch.Generator) -> torch.Tensor:
    """An index into the shifted scheduler's 1000 sigmas, drawn by the weighting scheme's density
    (sd-scripts' "sigma": compute_density_for_timestep_sampling, then noise_scheduler.timesteps[u * 1000])."""
    if recipe.weighting_scheme == "logit_normal":
        u = torch.sigmoid(torch.randn(batch, generator=generator) * recipe.logit_std + recipe.logit_mean)
    else:
        u = torch.rand(batch, generator=generator)
        if recipe.weighting_scheme == "mode":
            u = 1 - u - recipe.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    table = _sigma_table(recipe.discrete_flow_shift)
    timesteps = table * NUM_TRAIN_TIMESTEPS
    allowed = ((timesteps >= recipe.min_timestep) & (timesteps <= recipe.top_timestep)).nonzero().flatten()
    if not len(allowed):
        raise ConfigError(f"no timestep of the shifted schedule lies in [{recipe.min_timestep}, "
                          f"{recipe.top_timestep}]; widen min_timestep..max_timestep")
    # clamp: the mode density can reach u = 1 (sd-scripts would index past the table)
    picks = (u * len(allowed)).long().clamp(0, len(allowed) - 1)
    return table[allowed[picks]]


@functools.lru_cache(maxsize=8)
def _sigma_table(shift: float) -> torch.Tensor:
    """The 1000 training sigmas (1 down to 1/1000, shifted), as sd-scripts' noise scheduler holds them."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift).sigmas.float().clone()


# --- the loss ------------------------------------------------------------------------------------------------------

def predict_velocity(base: BaseModel, noisy: torch.Tensor, sigmas: torch.Tensor, text,
                     guidance_scale: float) -> torch.Tensor:
    """The transformer's output for unpacked `noisy` latents [B, 16, H, W], unpacked again.

    `text` has `.context` (T5 states) and `.pooled` (CLIP-L pooled). diffusers' FluxTransformer2DModel
    multiplies `timestep` (and `guidance`) by 1000 itself, so it gets sigma, as FluxPipeline passes t / 1000."""
    batch, _, height, width = noisy.shape
    device, dtype = noisy.device, noisy.dtype
    guidance = None
    if base.unet.config.guidance_embeds:  # dev; schnell has no guidance embedding and rejects one
        guidance = torch.full((batch,), float(guidance_scale), device=device, dtype=dtype)
    output = base.unet(
        hidden_states=pack_latents(noisy), encoder_hidden_states=text.context, pooled_projections=text.pooled,
        timestep=sigmas.to(device, dtype), img_ids=image_ids(height // 2, width // 2, device, dtype),
        txt_ids=text_ids(text.context.shape[1], device, dtype), guidance=guidance, return_dict=False)[0]
    return unpack_latents(output, height, width)


def apply_prediction_type(prediction: torch.Tensor, noisy: torch.Tensor, sigmas: torch.Tensor,
                          recipe: FlowRecipe) -> tuple[torch.Tensor, torch.Tensor | None]:
    """sd-scripts' apply_model_prediction_type: the prediction compared with the target, and per-sample
    loss weights (only sigma_scaled has them). sigma_scaled gives x_t - sigma * v, which is an estimate of
    x_0, yet sd-scripts compares it with the velocity target all the same; we keep its arithmetic so that a
    recipe trains as it does there (its docs advise model_prediction_type raw)."""
    if recipe.model_prediction_type == "raw":
        return prediction, None
    if recipe.model_prediction_type == "additive":
        return prediction + noisy, None
    column = sigmas.view(-1, 1, 1, 1).to(prediction.device, prediction.dtype)
    return prediction * (-column) + noisy, loss_weighting(recipe.weighting_scheme, sigmas)


def loss_weighting(weighting_scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """sd-scripts' compute_loss_weighting_for_sd3: 1/sigma^2 (sigma_sqrt), 2/(pi(1 - 2s + 2s^2)) (cosmap), else 1."""
    sigmas = sigmas.float()
    if weighting_scheme == "sigma_sqrt":
        return sigmas**-2.0
    if weighting_scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    return torch.ones_like(sigmas)


def check_flux_loss(recipe: LossRecipe) -> None:
    """The LossRecipe settings that need a DDPM noise schedule, which Flux has not."""
    if recipe.loss_type in ("huber", "smooth_l1") and recipe.huber_schedule == "snr":
        raise ConfigError("huber_schedule snr needs a DDPM noise schedule; for Flux set huber_schedule to "
                          "constant or exponential")
    # min_snr_gamma and debiased_estimation_loss need a DDPM SNR too: sd-scripts' Flux path ignores them, and
    # so does ours (the family's training_recipe drops them; plan and train say so in one line each).


def huber_threshold(timesteps: torch.Tensor, recipe: LossRecipe) -> torch.Tensor:
    """The Huber losses' per-sample threshold at timesteps of 1000 (sd-scripts' constant and exponential)."""
    if recipe.huber_schedule == "exponential":
        rate = -math.log(recipe.huber_c) / NUM_TRAIN_TIMESTEPS
        return torch.exp(-rate * timesteps.float()) * recipe.huber_scale
    return torch.full(timesteps.shape, recipe.huber_c * recipe.huber_scale, device=timesteps.device)


def flow_loss(base: BaseModel, latents: torch.Tensor, text, draw: FlowDraw, recipe: FlowRecipe,
              loss_recipe: LossRecipe = LossRecipe(), sample_weights: torch.Tensor | None = None,
              loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss of a batch of latents [B, 16, H, W] (scaled and shifted AE latents) with `text` from
    `encode_flux_captions`; `loss_mask` [B, 1, H, W] weights the latent pixels, `sample_weights` [B] the samples."""
    check_flux_loss(loss_recipe)
    sigmas = draw.sigmas.to(latents.device)
    column = sigmas.view(-1, 1, 1, 1).to(latents.dtype)
    input_noise = draw.noise if draw.input_noise is None else draw.input_noise
    noisy = (1 - column) * latents + column * input_noise
    prediction = predict_velocity(base, noisy, sigmas, text, recipe.guidance_scale)
    prediction, weighting = apply_prediction_type(prediction, noisy, sigmas, recipe)
    target = draw.noise - latents
    threshold = huber_threshold(draw.timesteps, loss_recipe) if loss_recipe.loss_type in ("huber", "smooth_l1") \
        else None
    elementwise = elementwise_loss(prediction.float(), target.float(), loss_recipe.loss_type, threshold)
    if weighting is not None:
        elementwise = elementwise * weighting.to(elementwise.device).view(-1, 1, 1, 1)
    if loss_mask is not None:  # masked_loss, as sd-scripts: the latent pixels' losses weighted by the mask
        elementwise = elementwise * loss_mask.to(elementwise.device, elementwise.dtype)
    per_sample = elementwise.mean(dim=(1, 2, 3))
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample.device)
    return per_sample.mean()
