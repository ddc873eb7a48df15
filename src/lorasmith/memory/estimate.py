"""Peak GPU memory of a training run, predicted before any weights load, with its breakdown.

    estimate = estimate_training_memory(config, "sdxl")
    estimate.lines()          # the plan's text
    estimate.fits(12)         # whether a 12 GB card holds it

Weights are counted from the architecture on the meta device (`weights.py`); the step's activations
and gradients are measured by running the trainer's own step on meta tensors (`activations.py`);
the optimizer's state follows its table (`optimizer.py`). Two parts are rules, not measurements:
the CUDA context and the allocator's reserve (see their constants).

Memory peaks in one of two phases, and the breakdown is that phase's:
- a training step: base weights, the VAE unless latents are cached, the text encoders unless their
  outputs are cached, the LoRA with its optimizer state, and the highest of the step's forward and
  backward, the optimizer step, and the VAE's encoding of the batch;
- caching latents, before training: every base part is on the GPU (the VAE encodes while the rest
  loads) and the VAE encodes four images at a time.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lorasmith.config.schema import TrainConfig
from lorasmith.errors import ConfigError

if TYPE_CHECKING:
    from lorasmith.memory.activations import StepMeasure
    from lorasmith.memory.weights import PartBytes

MIB = 2**20
GIB = 2**30

# The CUDA context (driver, runtime, cuBLAS and cuDNN kernels and handles) is GPU memory that
# torch.cuda.memory_allocated does not count (PyTorch's memory_allocated docs). A process that has
# run a step takes about 300-500 MiB with lazy module loading (CUDA >= 11.7, PyTorch's default);
# pytorch/pytorch#34323 shows ~780 MB without it. A rule, not measured here.
CUDA_CONTEXT_BYTES = 450 * MIB
# The caching allocator keeps freed blocks for reuse and splits them, so what it reserves exceeds the
# peak allocated (see PyTorch's "CUDA semantics: memory management"); cuDNN's convolution and cuBLAS'
# workspaces come on top and are not seen on meta tensors. 10% of the peak is a rule, not measured.
ALLOCATOR_RESERVE_FRACTION = 0.10
CARD_SIZES_GB = (8, 12, 16, 24)

PART_NAMES = ("UNet", "text encoders", "VAE", "LoRA weights", "LoRA gradients", "optimizer state", "activations",
              "CUDA context", "allocator reserve")
_MEASURED = PART_NAMES[:7]  # their sum is the peak; the last two are rules

# The settings that change what the step allocates (a learning rate or an output folder does not).
STEP_FIELDS = (
    "train_batch_size", "network_dim", "network_alpha", "conv_dim", "conv_alpha", "network_dropout",
    "network_module", "network_args", "network_train_unet_only", "network_train_text_encoder_only",
    "mixed_precision", "gradient_checkpointing", "sdpa", "cache_text_encoder_outputs", "shuffle_caption",
    "caption_dropout_rate", "caption_tag_dropout_rate", "caption_dropout_every_n_epochs", "max_token_length",
    "clip_skip", "gradient_accumulation_steps", "loss_type", "huber_schedule", "min_snr_gamma",
    "debiased_estimation_loss", "ip_noise_gamma", "masked_loss", "zero_terminal_snr", "v_parameterization",
)


@dataclass(frozen=True)
class MemoryPart:
    name: str  # one of PART_NAMES
    bytes: int
    detail: str = ""


@dataclass(frozen=True)
class MemoryEstimate:
    """The prediction: `peak` is what torch.cuda.max_memory_allocated would show, `total` what the card needs.

    `training` is the breakdown at a training step's peak, `caching` the one while latents are cached
    (None when they are not); `parts` is the higher of the two, with the two rules after it.
    """

    training: tuple[MemoryPart, ...]  # PART_NAMES[:7], in that order
    caching: tuple[MemoryPart, ...] | None
    bucket: tuple[int, int]
    batch: int
    seconds: float  # how long this estimate took (most of it is measuring; cached settings take ~0)
    notes: tuple[str, ...] = ()
    caching_label: str = "caching latents"  # what `caching` is (Flux: "caching text-encoder outputs" too)
    method: str = "measured"  # how the step's activations were found ("fitted": from cut-down models)

    @property
    def phase(self) -> str:
        """Where memory peaks: "a training step" or `caching_label` ("caching latents")."""
        if self.caching is not None and _sum(self.caching) > _sum(self.training):
            return self.caching_label
        return "a training step"

    @property
    def peak(self) -> int:
        return _sum(self.caching if self.phase != "a training step" else self.training)

    @property
    def parts(self) -> tuple[MemoryPart, ...]:
        measured = self.caching if self.phase != "a training step" else self.training
        return (*measured,
                MemoryPart("CUDA context", CUDA_CONTEXT_BYTES, "a rule, not measured"),
                MemoryPart("allocator reserve", int(self.peak * ALLOCATOR_RESERVE_FRACTION),
                           f"a rule, not measured: {ALLOCATOR_RESERVE_FRACTION:.0%} of the peak"))

    def bytes_of(self, name: str) -> int:
        return next(part.bytes for part in self.parts if part.name == name)

    @property
    def total(self) -> int:
        return self.peak + self.bytes_of("CUDA context") + self.bytes_of("allocator reserve")

    def fits(self, gib: float) -> bool:
        """Whether a card of `gib` GB (as sold: 8 GB is 8 GiB) holds the whole run."""
        return self.total <= gib * GIB

    def lines(self) -> list[str]:
        width, height = self.bucket
        out = [f"GPU memory estimate, largest bucket {width}x{height}, batch {self.batch} (peak while {self.phase}):"]
        for part in self.parts:
            out.append(f"  {part.name:<18} {part.bytes / MIB:>8,.0f} MiB  {part.detail}".rstrip())
            if part.name == "activations":
                out.append(f"  {'= peak allocated':<18} {self.peak / MIB:>8,.0f} MiB  "
                           "(what torch.cuda.max_memory_allocated would show)")
        out.append(f"  {'= total':<18} {self.total / MIB:>8,.0f} MiB  ({self.total / GIB:.2f} GB)")
        if self.phase != "a training step":
            out.append(f"  (a training step after it: {_sum(self.training) / MIB:,.0f} MiB allocated)")
        elif self.caching is not None:
            out.append(f"  ({self.caching_label} before it: {_sum(self.caching) / MIB:,.0f} MiB allocated)")
        out += [f"  note: {note}" for note in self.notes]
        return out

    def fit_lines(self, sizes: tuple[int, ...] = CARD_SIZES_GB) -> list[str]:
        return [f"fits {size} GB: " + ("yes" if self.fits(size) else "no") for size in sizes]


def largest_bucket(config: TrainConfig) -> tuple[int, int]:
    """The bucket of the most pixels this configuration can make (the resolution itself when it is one)."""
    from lorasmith.dataset.buckets import bucket_resolutions

    width, height = config.resolution_wh
    if not config.enable_bucket:
        return width, height
    buckets = bucket_resolutions((width, height), config.min_bucket_reso, config.max_bucket_reso,
                                 config.bucket_reso_steps)
    most = max(w * h for w, h in buckets)
    own = (width // config.bucket_reso_steps * config.bucket_reso_steps,
           height // config.bucket_reso_steps * config.bucket_reso_steps)
    return own if own[0] * own[1] == most else max(buckets, key=lambda wh: wh[0] * wh[1])


def estimate_training_memory(config: TrainConfig, family: str, configs: dict | None = None,
                             base_dtype: str | None = None, bucket: tuple[int, int] | None = None) -> MemoryEstimate:
    """Predict the peak GPU memory of training `config` on a `family` model ("sd1", "sd2", "sdxl", "flux").

    `configs`: the checkpoint's own architecture (part -> config), else the family's shipped one.
    `base_dtype`: the frozen weights' dtype ("fp32", "fp16", "bf16"); by default what the trainer
    uses for `mixed_precision` (full_bf16 would pass "bf16"). `bucket`: (width, height), by default the
    largest the settings allow.
    """
    from lorasmith.memory.weights import DTYPES, base_dtype_for

    started = time.perf_counter()
    if family == "flux":
        from lorasmith.memory.flux_estimate import estimate_flux_memory

        return estimate_flux_memory(config, configs, bucket)
    if family not in ("sd1", "sd2", "sdxl"):
        raise ConfigError(f"the memory estimate needs the model family (sd1, sd2, sdxl or flux), got {family!r}")
    base_dtype = base_dtype or base_dtype_for(config.mixed_precision)
    if base_dtype not in DTYPES:
        raise ConfigError(f"base_dtype must be one of {', '.join(DTYPES)}, got {base_dtype!r}")
    configs_json = json.dumps(configs, sort_keys=True, default=list) if configs else None
    bucket = tuple(bucket or largest_bucket(config))
    key = tuple((name, _frozen(getattr(config, name))) for name in STEP_FIELDS)
    measured = _measure(config, family, configs_json, base_dtype, bucket, key)
    caching = tuple(_caching_phase(measured)) if config.cache_latents else None
    return MemoryEstimate(tuple(_training_phase(config, measured)), caching, bucket, config.train_batch_size,
                          time.perf_counter() - started, _notes(config, measured))


@dataclass(frozen=True)
class _Measured:
    """Everything measured for one estimate, before it is put into parts."""

    unet: PartBytes
    text_encoders: tuple[PartBytes, ...]
    vae: PartBytes
    step: StepMeasure
    optimizer_state: int
    optimizer_scratch: int
    encode_batch: int  # the VAE encoding a batch each step (latents not cached), else 0
    encode_cache: int  # the VAE encoding vae_batch_size images before training (latents cached), else 0
    cache_batch: int
    upcast_vae: bool
    upcast: int = 0  # fp8_base: one layer's weight in the compute dtype while it runs


def _measure(config: TrainConfig, family: str, configs_json: str | None, base_dtype: str,
             bucket: tuple[int, int], key: tuple) -> _Measured:
    from lorasmith.memory import measure
    from lorasmith.memory.optimizer import state_bytes, step_scratch_bytes

    step = measure.step(family, configs_json, base_dtype, bucket, key)
    base = measure.weights(family, configs_json, base_dtype)  # after the step: it counts the base the step built
    # the VAE encodes each batch (latents not cached) or, before training, vae_batch_size images at a time
    encoding = measure.encode(family, configs_json, base_dtype, bucket,
                              config.vae_batch_size if config.cache_latents else config.train_batch_size)
    args = tuple(config.optimizer_args)
    unet, text_encoders, upcast = base[0], base[1:-1], 0
    if config.fp8_base or config.fp8_base_unet:  # as train/low_vram.py: the UNet, and with fp8_base the CLIPs
        unet, upcast = measure.fp8_part(family, configs_json, base_dtype, "unet")
        if not config.fp8_base_unet:
            stored = [measure.fp8_part(family, configs_json, base_dtype, p.part) for p in text_encoders]
            text_encoders = tuple(bytes_ for bytes_, _ in stored)
            upcast = max([upcast, *(layer for _, layer in stored)])
    return _Measured(
        unet=unet, text_encoders=text_encoders, vae=base[-1], step=step, upcast=upcast,
        optimizer_state=state_bytes(config.optimizer_type, step.trainable_shapes, args),
        optimizer_scratch=step_scratch_bytes(config.optimizer_type, step.trainable_shapes),
        encode_batch=0 if config.cache_latents else encoding.bytes,
        encode_cache=encoding.bytes if config.cache_latents else 0, cache_batch=config.vae_batch_size,
        upcast_vae=encoding.upcast)


def _training_phase(config: TrainConfig, m: _Measured) -> list[MemoryPart]:
    """The parts at a training step's peak: its forward and backward, its optimizer step, or its VAE encoding."""
    step, grads = m.step, m.step.gradient_bytes
    if config.full_bf16:  # the LoRA's weights and gradients in bf16: half of what the float32 step measured
        grads //= 2
    accumulating = config.gradient_accumulation_steps > 1
    candidates = [(step.peak, grads, "the step's forward and backward"),
                  (grads + m.optimizer_scratch, grads, "the optimizer step's temporaries"),
                  (m.encode_batch + (grads if accumulating else 0), grads if accumulating else 0,
                   "the VAE encoding the batch" + (" in float32 (force_upcast)" if m.upcast_vae else ""))]
    dynamic, alive, where = max(candidates, key=lambda c: c[0])
    if config.full_bf16:  # the step's own gradients, made in bf16
        dynamic -= (step.gradient_bytes - grads) if where == candidates[0][2] else 0
    text = sum(part.total for part in m.text_encoders)
    return [
        MemoryPart("UNet", m.unet.total, m.unet.describe()),
        MemoryPart("text encoders", 0 if step.text == "cached" else text,
                   {"cached": "outputs cached: off the GPU", "trained": "trained"}.get(step.text, "frozen")
                   + ("" if step.text == "cached" else f", {_describe(m.text_encoders)}")),
        MemoryPart("VAE", 0 if config.cache_latents else m.vae.total,
                   "latents cached: off the GPU" if config.cache_latents else m.vae.describe()),
        MemoryPart("LoRA weights", step.lora_bytes // (2 if config.full_bf16 else 1),
                   f"{_lora_dtype(config)}, {len(step.trainable_shapes)} tensors"),
        MemoryPart("LoRA gradients", alive, _lora_dtype(config) if alive else "none alive at the peak"),
        MemoryPart("optimizer state", _state(config, m.optimizer_state), config.optimizer_type),
        MemoryPart("activations", dynamic - alive + m.upcast, f"peak of {where}"
                   + (f", + {m.upcast / MIB:,.0f} MiB: one fp8 layer upcast" if m.upcast else "")),
    ]


def _lora_dtype(config: TrainConfig) -> str:
    return "bf16 (full_bf16)" if config.full_bf16 else "float32"


def _state(config: TrainConfig, state: int) -> int:
    """The optimizer state: in the LoRA's dtype (bf16 with full_bf16) unless 8-bit."""
    return state // 2 if config.full_bf16 and "8bit" not in config.optimizer_type.lower() else state


def _caching_phase(m: _Measured) -> list[MemoryPart]:
    """The parts while latents are cached: the whole base on the GPU, the VAE encoding vae_batch_size images."""
    return [
        MemoryPart("UNet", m.unet.total, m.unet.describe()),
        MemoryPart("text encoders", sum(p.total for p in m.text_encoders), _describe(m.text_encoders)),
        MemoryPart("VAE", m.vae.total, m.vae.describe()),
        MemoryPart("LoRA weights", m.step.lora_bytes, "float32"),
        MemoryPart("LoRA gradients", 0, "none yet"),
        MemoryPart("optimizer state", 0, "none yet"),
        MemoryPart("activations", m.encode_cache,
                   f"the VAE encoding {m.cache_batch} image(s) at a time to cache their latents"
                   + (" in float32 (force_upcast)" if m.upcast_vae else "")),
    ]


def _describe(parts) -> str:
    return "; ".join(part.describe() for part in parts)


def _sum(parts: list[MemoryPart]) -> int:
    return sum(part.bytes for part in parts)


def _notes(config: TrainConfig, m: _Measured) -> tuple[str, ...]:
    from lorasmith.memory.optimizer import optimizer_rule

    notes = []
    if m.step.text == "cached":
        notes.append("cached text-encoder outputs: counted as sd-scripts runs them, the encoders moved off the GPU "
                     "once their outputs are cached")
    if config.cpu_offload_checkpointing:
        notes.append("cpu_offload_checkpointing: not counted for SD (the checkpointed inputs are taken as on the GPU)")
    if not optimizer_rule(config.optimizer_type)[1]:
        notes.append(f"{config.optimizer_type}: not in the optimizer table; its state is taken as Adam's "
                     "(two float32 values per weight)")
    return tuple(notes)


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


def config_from_key(key: tuple) -> TrainConfig:
    """The TrainConfig a cache key stands for (its other fields at their defaults)."""
    return dataclasses.replace(TrainConfig(), **{name: list(v) if isinstance(v, tuple) else v for name, v in key})
