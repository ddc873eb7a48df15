"""The memory a training step adds on top of the weights, measured by running the step itself.

The step is the trainer's own: the family's `prepare_for_training` (checkpointing, attention) and
`create_network` (peft LoRA or LyCORIS), the text encoders through `encode_tokens` (with gradients when they train,
without when frozen, skipped when their outputs are cached), `denoising_loss`, and the backward. It
runs under `LiveBytes` (what is allocated and freed, op by op) and `CudaRules` (CUDA's autocast and
attention kernels). On meta tensors this costs no memory and a few seconds; on real tensors (the
tests) it is the same code, so the two can be compared.

With latents not cached the VAE encodes every batch before the step (`tracked_encode`); with them
cached it encodes four images at a time before training begins (`dataset/latent_cache.py`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from lorasmith.memory.autocast import CudaRules
from lorasmith.memory.tracking import LiveBytes


@dataclass(frozen=True)
class StepMeasure:
    """What one step of forward and backward allocated beyond the weights and the LoRA."""

    peak: int  # bytes alive at the step's highest point (activations, and the gradients made by then)
    gradient_bytes: int  # the LoRA's gradients, all alive once the backward is done
    trainable_shapes: tuple[tuple[int, ...], ...]  # the LoRA's float32 parameters, for the optimizer's state
    lora_bytes: int  # those parameters' bytes
    text: str  # "trained", "frozen" (run without gradients) or "cached" (encoders off the GPU)
    seconds: float


def text_mode(config, train_text_encoder: bool) -> str:
    """How the step meets the text encoders, by the trainer's rule (Trainer._cache_text_outputs)."""
    if train_text_encoder:
        return "trained"
    return "cached" if config.cache_text_encoder_outputs and not config.captions_vary else "frozen"


def autocast_dtype(mixed_precision: str) -> torch.dtype | None:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)


def inject_network(base, config) -> Any:
    """Prepare `base` as the trainer does, through its family's interface, and put the network in; on a meta
    base the network is meta too."""
    from lorasmith.families import family_behaviour

    family = family_behaviour(base.family)
    spec = family.network_spec(config)
    family.prepare_for_training(base, config, spec.train_text_encoder)
    create_network = family.create_network
    device = next(base.unet.parameters()).device
    if device.type != "meta":
        return create_network(base, spec)
    from lorasmith.models.empty import empty_weights

    # its parameters made on meta: no real initialisation (SDXL's LoRA takes ten seconds on a CPU); only
    # parameters, as LyCORIS works out its factors with small CPU tensors (torch.device("meta") breaks that)
    with empty_weights():
        network = create_network(base, spec)
    for param in network.trainable_parameters():  # LyCORIS makes some outside register_parameter
        if param.device.type != "meta":
            param.data = torch.empty_like(param, device="meta")
    return network


def tracked_step(base, network, config, bucket: tuple[int, int], run=None, classes=None) -> StepMeasure:
    """One training step of `base` with `network` at `bucket` (width, height), measured.

    `run`: how LiveBytes runs each operator (a MetaOpCache for meta models); `classes`: a
    scaling.SizeClasses to split the live bytes by how they grow."""
    from lorasmith.families import family_behaviour

    text = text_mode(config, family_behaviour(base.family).network_spec(config).train_text_encoder)
    return measured_step(list(network.trainable_parameters()), config, text,
                         lambda: _forward(base, config, bucket, text), run, classes)


def measured_step(params: list, config, text: str, forward, run=None, classes=None) -> StepMeasure:
    """`forward()` (made-up inputs to the loss) and the backward of its loss, measured, for any family.

    `params`: the network's trainable parameters, whose gradients the step makes."""
    started = time.perf_counter()
    with LiveBytes(run=run, classes=classes) as live, CudaRules(autocast_dtype(config.mixed_precision)) as rules:
        if config.gradient_accumulation_steps > 1:  # the last batch's gradients are alive through this one
            for param in params:
                param.grad = torch.zeros_like(param)
        loss = forward()
        rules.end_forward()
        _backward(loss)
    grads = sum(p.numel() * p.element_size() for p in params)
    for param in params:
        param.grad = None
    return StepMeasure(peak=live.peak, gradient_bytes=grads, trainable_shapes=tuple(tuple(p.shape) for p in params),
                       lora_bytes=sum(p.numel() * p.element_size() for p in params), text=text,
                       seconds=time.perf_counter() - started)


def _backward(loss: torch.Tensor) -> None:
    """loss.backward(), straight to the autograd engine: through `loss.backward()` a function mode would
    handle the whole call itself, and run the recomputation of checkpointed blocks without its rules."""
    engine = torch.autograd.Variable._execution_engine
    engine.run_backward((loss,), (torch.ones_like(loss),), False, False, (), allow_unreachable=True,
                        accumulate_grad=True)


def _forward(base, config, bucket: tuple[int, int], text: str) -> torch.Tensor:
    """The trainer's `_train_batch` up to the loss, on made-up inputs of the right shapes."""
    from lorasmith.models.text import encode_tokens
    from lorasmith.train.step import LossRecipe, NoiseDraw, denoising_loss

    unet = base.unet
    device = next(unet.parameters()).device
    batch, (width, height) = config.train_batch_size, bucket
    dtype = autocast_dtype(config.mixed_precision) or torch.float32  # train/setup.weight_dtype on a GPU
    latents = torch.randn(batch, unet.config.in_channels, height // 8, width // 8, device=device, dtype=dtype)
    draw = NoiseDraw(torch.randn_like(latents), torch.randint(0, 1000, (batch,), device=device),
                     torch.randn_like(latents) if config.ip_noise_gamma else None)
    if text == "cached":
        text_states = _cached_text(base, batch, config.max_token_length, device)
    else:
        with torch.set_grad_enabled(text == "trained"):
            text_states = encode_tokens(base, _token_ids(base, batch, config.max_token_length, device),
                                        config.clip_skip)
    time_ids = torch.zeros(batch, 6, device=device)
    weights = torch.ones(batch, device=device)
    masks = torch.ones(batch, 1, height // 8, width // 8, device=device) if config.masked_loss else None
    return denoising_loss(base, latents, text_states.context, draw, text_states.pooled, time_ids, weights,
                          LossRecipe.from_config(config), masks)


def _token_ids(base, batch: int, max_token_length: int, device) -> list[torch.Tensor]:
    """Token ids as `models.text.tokenize` shapes them: [batch, 77], or [batch, windows, 77] past 75 tokens."""
    windows = math.ceil(max_token_length / 75)
    shape = (batch, 77) if windows == 1 else (batch, windows, 77)
    return [torch.zeros(shape, dtype=torch.long, device=device) for _ in base.text_encoders]


def _cached_text(base, batch: int, max_token_length: int, device):
    """A batch of cached text-encoder outputs, stacked as Trainer._encode_captions does."""
    from lorasmith.models.text import TextEmbeddings

    tokens = 75 * math.ceil(max_token_length / 75) + 2
    width = base.unet.config.cross_attention_dim
    dtype = next(base.text_encoders[0].parameters()).dtype
    pooled = None
    if base.family.name == "sdxl":
        pooled = torch.zeros(batch, base.text_encoders[1].config.projection_dim, device=device, dtype=dtype)
    return TextEmbeddings(torch.zeros(batch, tokens, width, device=device, dtype=dtype), pooled)


@dataclass(frozen=True)
class EncodeMeasure:
    bytes: int  # what encoding adds beyond the VAE's weights, at its peak
    upcast: bool  # the VAE encoded in float32 (force_upcast)


def tracked_encode(vae, bucket: tuple[int, int], batch: int, latent_scale: float, run=None) -> EncodeMeasure:
    """The VAE's encoding of `batch` images at `bucket`, measured.

    `encode_latents` runs a float16 VAE in float32 when its config says so (force_upcast, diffusers'
    default): the float32 copy of the weights replaces the float16 one for the while, so only the
    difference is counted.
    """
    from lorasmith.dataset.latent_cache import encode_latents
    from lorasmith.memory.weights import quiet_diffusers

    width, height = bucket
    parameter = next(vae.parameters())
    half = sum(p.numel() * p.element_size() for p in vae.parameters())
    upcast = parameter.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    with LiveBytes(run=run) as live, quiet_diffusers():
        # the trainer moves the pixels to the GPU in the VAE's dtype (float32 when it upcasts)
        pixels = torch.zeros(batch, 3, height, width, device=parameter.device,
                             dtype=torch.float32 if upcast else parameter.dtype)
        encode_latents(vae, pixels, latent_scale)
    return EncodeMeasure(live.peak - (half if upcast else 0), upcast)
