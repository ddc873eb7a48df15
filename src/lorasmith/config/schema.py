"""The typed configuration of a LoRA run: one schema for the files, the CLI, the GUI and metadata.

Key names are sd-scripts' argument names so that users recognise every key. Each field
carries a one-line `doc`, a `group` (the GUI section it belongs to) and, where the values
are a closed set, its `choices`. `parse_value` turns text from a command line or a form into
the field's type; `check` tells what is wrong with a whole configuration.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Optional, get_args, get_origin, get_type_hints

from lorasmith.errors import ConfigError

MODEL_FAMILIES = ("auto", "sd1", "sd2", "sdxl", "flux")
PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("fp16", "bf16", "float")
# The usual optimizers, for the GUI's list; train/optim.py takes every name sd-scripts takes (any case, or a
# module path), so the check is there, not a closed set here.
OPTIMIZERS = ("AdamW", "AdamW8bit", "PagedAdamW8bit", "Lion", "Lion8bit", "Prodigy", "Adafactor", "DAdaptAdam",
              "DAdaptLion", "AdamWScheduleFree", "RAdamScheduleFree", "CAME", "SGDNesterov")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
              "adafactor", "piecewise_constant")
NETWORK_MODULES = ("networks.lora",)  # what lorasmith trains; others are read from configs and refused
TIMESTEP_SAMPLINGS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift")
MODEL_PREDICTION_TYPES = ("raw", "additive", "sigma_scaled")
WEIGHTING_SCHEMES = ("uniform", "none", "sigma_sqrt", "logit_normal", "mode", "cosmap")
SAMPLERS = ("euler_a", "euler", "ddim", "dpmpp_2m_karras", "dpmpp_2m", "pndm", "lms")


def _field(default: Any, doc: str, group: str, choices: tuple | None = None, **kw) -> Any:
    metadata = {"doc": doc, "group": group, "choices": choices}
    if isinstance(default, (list, dict, tuple)) and not isinstance(default, tuple):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


@dataclass
class TrainConfig:
    """Everything a LoRA training run needs. Defaults follow the tutorial's starting values."""

    # --- Source model ---
    pretrained_model_name_or_path: str = _field(
        "", "Base checkpoint: a .safetensors file (SD1.x, SD2.x, SDXL, or Flux.1's flux1-dev / flux1-schnell) or a "
        "diffusers folder.", "model")
    model_family: str = _field(
        "auto", "Model family; 'auto' detects it from the checkpoint's tensors.", "model", MODEL_FAMILIES)
    v_parameterization: bool = _field(
        False, "The base model predicts v (SD2.x 768-v models); leave off for SD1.x and SDXL base.", "model")
    allow_pickle: bool = _field(
        False, "Allow .ckpt/.pt pickle checkpoints. A pickle can run code: only for files you trust.", "model")
    vae: str = _field(
        "", "A separate VAE file to encode the images (and draw samples) with, instead of the checkpoint's own, "
        "e.g. for models published with their VAE beside them.", "model")

    # --- Flux.1 (sd-scripts' flux_train_network.py options) ---
    ae: str = _field("", "Flux.1: the autoencoder file (ae.safetensors); a diffusers folder has its own.", "flux")
    clip_l: str = _field("", "Flux.1: the CLIP-L text encoder file (clip_l.safetensors).", "flux")
    t5xxl: str = _field("", "Flux.1: the T5-XXL text encoder file (t5xxl_fp16.safetensors, or the fp8 one).",
                        "flux")
    t5xxl_max_token_length: Optional[int] = _field(
        None, "Flux.1: T5 tokens read per caption; empty means 512 for dev, 256 for schnell.", "flux")
    apply_t5_attn_mask: bool = _field(
        False, "Flux.1: mask T5's padding tokens (sd-scripts' docs do not recommend it).", "flux")
    timestep_sampling: str = _field(
        "sigma", "Flux.1: how noise levels are drawn; the docs recommend flux_shift, or shift with "
        "discrete_flow_shift 3.1582.", "flux", TIMESTEP_SAMPLINGS)
    sigmoid_scale: float = _field(1.0, "Flux.1: scale of the sigmoid (and shift) timestep sampling.", "flux")
    discrete_flow_shift: float = _field(
        3.0, "Flux.1: the shift of the flow-matching schedule (sigma and shift sampling).", "flux")
    model_prediction_type: str = _field(
        "sigma_scaled", "Flux.1: how the prediction is read: raw (recommended), additive or sigma_scaled.", "flux",
        MODEL_PREDICTION_TYPES)
    guidance_scale: float = _field(
        3.5, "Flux.1 dev: the guidance the model is given while training; the docs say 1.0.", "flux")
    weighting_scheme: str = _field(
        "uniform", "Flux.1: loss weighting over noise levels (sigma_scaled) and the density of sigma sampling.",
        "flux", WEIGHTING_SCHEMES)
    logit_mean: float = _field(0.0, "Flux.1: mean of the logit_normal weighting scheme.", "flux")
    logit_std: float = _field(1.0, "Flux.1: spread of the logit_normal weighting scheme.", "flux")
    mode_scale: float = _field(1.29, "Flux.1: scale of the mode weighting scheme.", "flux")
    blocks_to_swap: int = _field(
        0, "Flux.1: keep N transformer blocks in CPU memory and move each to the GPU when it is needed (up to "
        "35): much less VRAM, slower. 16 for 12 GB, 28 for 8 GB (sd-scripts' docs).", "flux")

    # --- Folders ---
    train_data_dir: str = _field(
        "", "Folder holding '<repeats>_<name>' sub-folders of training images, e.g. '10_mychar girl'.", "folders")
    reg_data_dir: str = _field(
        "", "Optional regularisation images in the same '<repeats>_<name>' layout.", "folders")
    output_dir: str = _field("", "Where the LoRA files (and samples, state) are written.", "folders")
    logging_dir: str = _field("", "TensorBoard logs; empty means '<output_dir>/logs'.", "folders")
    output_name: str = _field("lora", "File name of the LoRA, without extension.", "folders")
    training_comment: str = _field("", "Free text stored in the LoRA's metadata (ss_training_comment).", "folders")

    # --- Basic parameters ---
    train_batch_size: int = _field(
        1, "Images per step. Higher is faster per epoch but needs more VRAM (4-6 on 12 GB+).", "basic")
    max_train_epochs: int = _field(
        10, "Epochs: how many times training goes through every image (times its repeats).", "basic")
    max_train_steps: int = _field(
        0, "Stop after this many steps; 0 means epochs decide.", "advanced")
    save_every_n_epochs: int = _field(
        1, "Save a LoRA every N epochs, so you can pick the best one later.", "basic")
    save_every_n_steps: int = _field(
        0, "Also save a LoRA (and the state, with save_state) every N steps; 0 turns it off.", "advanced")
    save_last_n_steps: int = _field(
        0, "Keep only the step files of the last N steps (of save_every_n_steps); 0 keeps them all.", "advanced")
    save_state_on_train_end: bool = _field(
        False, "Save the training state at the end of the run too (<output_name>-state), to train further "
        "from it.", "advanced")
    save_last_n_epochs: int = _field(
        0, "Keep only the last N of those epoch files (older ones are deleted as new ones come; the final "
        "file always stays); 0 keeps them all.", "advanced")
    learning_rate: float = _field(
        1e-4, "How fast the LoRA learns. Too high burns it; AnyLoRA-style bases like 6e-5 to 8e-5.", "basic")
    unet_lr: Optional[float] = _field(
        None, "UNet learning rate; empty means the learning rate. The tutorial uses the same value.", "basic")
    text_encoder_lr: Optional[float] = _field(
        None, "Text-encoder learning rate; the tutorial uses half the learning rate, never more.", "basic")
    lr_scheduler: str = _field("constant", "How the learning rate changes over the run.", "basic", SCHEDULERS)
    lr_warmup_steps: float = _field(
        0, "Steps over which the learning rate ramps up from 0; below 1, a fraction of the total steps (0.1: the first 10%).",
        "advanced")
    lr_scheduler_num_cycles: int = _field(1, "Restarts for cosine_with_restarts.", "advanced")
    lr_scheduler_power: float = _field(1.0, "Power of the polynomial scheduler's decay (1 is linear).", "advanced")
    lr_scheduler_type: str = _field(
        "", "A scheduler class instead of lr_scheduler: any of torch.optim.lr_scheduler (e.g. CosineAnnealingLR) "
        "or module.ClassName, built with lr_scheduler_args.", "advanced")
    lr_scheduler_args: list = _field(
        [], "Arguments of the scheduler as 'name=value' strings, e.g. 'T_max=1000'.", "advanced")
    optimizer_type: str = _field(
        "AdamW", "Optimizer (sd-scripts' names, any case). AdamW8bit saves VRAM on CUDA GPUs (bitsandbytes); "
        "Prodigy and the DAdapt ones find their own step size (learning rate about 1.0).", "basic", OPTIMIZERS)
    optimizer_args: list = _field(
        [], "Extra optimizer arguments as 'name=value' strings, e.g. 'weight_decay=0.01'.", "advanced")
    resolution: str = _field(
        "512,512", "Max resolution 'width,height' (or one number); multiples of 64. 512 or 576 is safe.", "basic")
    network_dim: int = _field(
        32, "Network rank: size and capacity. ~30 images -> 32, 50+ -> 64, 100+ -> 128.", "basic")
    network_alpha: float = _field(
        16, "Network alpha: dampens learning (scale = alpha / rank). Usually half the rank.", "basic")
    num_cpu_threads_per_process: int = _field(
        2, "CPU threads for the training process; about half your CPU's threads.", "basic")
    max_data_loader_n_workers: int = _field(0, "Worker processes that load images; 0 loads in the main process.", "advanced")
    gradient_checkpointing: bool = _field(
        False, "Recompute activations in the backward pass: much less VRAM, a bit slower.", "basic")
    mixed_precision: str = _field(
        "no", "Compute precision on GPU: fp16 or bf16 (RTX 30xx+). The LoRA weights stay fp32.", "basic", PRECISIONS)
    save_precision: str = _field("fp16", "Precision of the saved LoRA file.", "basic", SAVE_PRECISIONS)
    seed: int = _field(1234, "Random seed; the same seed and data give the same LoRA.", "basic")
    cache_latents: bool = _field(
        True, "Encode every image with the VAE once, before training: faster, less VRAM.", "basic")

    # --- Advanced parameters ---
    network_train_unet_only: bool = _field(False, "Train only the UNet part of the LoRA.", "advanced")
    network_train_text_encoder_only: bool = _field(False, "Train only the text-encoder part of the LoRA.", "advanced")
    network_module: str = _field(
        "networks.lora", "sd-scripts' network module: networks.lora (LoRA, and LoCon with conv_dim) is what "
        "lorasmith trains; others (lycoris.kohya, networks.lora_flux, ...) are read from configs and refused "
        "by train.", "advanced")
    network_args: list = _field(
        [], "Further network settings as 'name=value' strings, as sd-scripts' network_args (conv_dim and "
        "conv_alpha there become the keys below).", "advanced")
    conv_dim: int = _field(0, "Rank of LoRA on 3x3 convolutions (LoCon); 0 leaves them out.", "advanced")
    conv_alpha: float = _field(
        1.0, "Alpha of the 3x3 convolution LoRA (scale = conv_alpha / conv_dim); 1 unless set, as in sd-scripts; "
        "0 means the same as conv_dim.", "advanced")
    network_dropout: float = _field(0.0, "Dropout on the LoRA's down projection (0 to 1).", "advanced")
    scale_weight_norms: float = _field(
        0.0, "Keep each LoRA module's weight change at most this norm (1.0 is usual), against overfitting; "
        "0 turns it off.", "advanced")
    flip_aug: bool = _field(
        False, "Also train on mirror images (each sample flipped at random): more variety from few images. "
        "Leave off for asymmetric characters (a scar or a parting on one side).", "advanced")
    network_weights: str = _field(
        "", "A LoRA file to start from, to train it further; it needs the same network_dim, conv_dim and parts.",
        "advanced")
    use_ema: bool = _field(
        False, "Also keep an exponential moving average of the LoRA weights, saved beside each file as "
        "<name>-ema.safetensors (often smoother, less overfit).", "advanced")
    ema_decay: float = _field(0.999, "How slowly the average moves (0.99-0.9999).", "advanced")
    ema_start_step: int = _field(0, "The step from which the average is kept.", "advanced")
    ema_update_interval: int = _field(1, "Update the average every N steps.", "advanced")
    gradient_accumulation_steps: int = _field(1, "Add up gradients of N batches before each optimizer step.", "advanced")
    max_grad_norm: float = _field(1.0, "Clip gradients to this norm; 0 turns clipping off.", "advanced")
    vae_batch_size: int = _field(
        1, "Images the VAE encodes at a time while caching latents; 1 (sd-scripts' default) needs the least "
        "VRAM: SDXL's VAE at 1024 px in float32 takes about 3.5 GB per image.", "advanced")
    cache_latents_to_disk: bool = _field(
        False, "Keep cached latents in .npz files beside the images, reused while the images are unchanged.", "advanced")
    cache_text_encoder_outputs: bool = _field(
        False, "Encode captions once (only when the text encoder is not trained and captions are not shuffled).",
        "advanced")
    cache_text_encoder_outputs_to_disk: bool = _field(
        False, "Keep the cached text-encoder outputs in files beside the images, reused by later runs (implies "
        "cache_text_encoder_outputs).", "advanced")
    text_encoder_batch_size: int = _field(
        0, "Captions encoded at a time while caching text-encoder outputs; 0 (sd-scripts' default) uses "
        "train_batch_size. Flux's T5 takes about 0.2 GB a caption at 512 tokens.", "advanced")
    fp8_base: bool = _field(
        False, "Store the frozen base model's weights in float8 (e4m3fn), brought to the compute precision "
        "layer by layer: about half the VRAM of fp16 weights. Needs mixed precision.", "advanced")
    fp8_base_unet: bool = _field(
        False, "fp8 for the UNet / Flux transformer only; the text encoders keep the compute precision "
        "(implies fp8_base).", "advanced")
    full_bf16: bool = _field(
        False, "Keep the LoRA weights and their gradients in bf16 too (less VRAM; needs mixed_precision bf16).",
        "advanced")
    cpu_offload_checkpointing: bool = _field(
        False, "Keep gradient checkpointing's saved activations in CPU memory (less VRAM, about 15% slower); "
        "needs gradient_checkpointing.", "advanced")
    caption_extension: str = _field(".txt", "Extension of caption files beside the images.", "advanced")
    shuffle_caption: bool = _field(False, "Shuffle comma-separated tags each step (keeps the first keep_tokens).", "advanced")
    keep_tokens: int = _field(0, "Tags at the start of a caption that shuffling never moves (your trigger word).", "advanced")
    caption_dropout_rate: float = _field(0.0, "Chance of training a step with an empty caption.", "advanced")
    caption_dropout_every_n_epochs: int = _field(
        0, "Train every N-th epoch with empty captions; 0 turns it off.", "advanced")
    caption_prefix: str = _field("", "Text put before every caption (with a space), e.g. a trigger word.", "advanced")
    caption_suffix: str = _field("", "Text put after every caption (with a space).", "advanced")
    keep_tokens_separator: str = _field(
        "", "A mark in captions ('|||'): the tags before it (and after a second one) never move or drop, "
        "in place of keep_tokens.", "advanced")
    secondary_separator: str = _field(
        "", "A separator ('" + ";;;" + "') that joins tags into one for shuffling and dropout, then reads as a comma.",
        "advanced")
    weighted_captions: bool = _field(
        False, "Read '(word:1.3)', '(word)' and '[word]' in captions as token weights, as AUTOMATIC1111 prompts "
        "(no commas inside the brackets when shuffling).", "advanced")
    caption_tag_dropout_rate: float = _field(
        0.0, "Chance of leaving out each tag of a caption (not the keep_tokens ones), so the trigger word "
        "takes in what the tags do not say.", "advanced")
    clip_skip: int = _field(1, "Use the text encoder's n-th last layer; anime (NAI-based) models use 2.", "advanced")
    max_token_length: int = _field(
        75, "Caption tokens the text encoder reads: 75, or 150 / 225 for long tag lists (the rest is cut).", "advanced")
    enable_bucket: bool = _field(True, "Aspect-ratio buckets: train images at their own shape, not cropped square.", "advanced")
    min_bucket_reso: int = _field(256, "Smallest bucket side in pixels.", "advanced")
    max_bucket_reso: int = _field(1024, "Largest bucket side in pixels.", "advanced")
    bucket_reso_steps: int = _field(64, "Bucket sides are multiples of this.", "advanced")
    bucket_no_upscale: bool = _field(False, "Never upscale small images to fill a bucket.", "advanced")
    noise_offset: float = _field(0.0, "Offset noise (about 0.05-0.1) for darker darks and brighter brights.", "advanced")
    adaptive_noise_scale: float = _field(
        0.0, "Adds to noise_offset this times each latent channel's mean (about noise_offset / 10); needs "
        "noise_offset.", "advanced")
    min_snr_gamma: float = _field(0.0, "Min-SNR loss weighting gamma (5 is usual); 0 turns it off.", "advanced")
    debiased_estimation_loss: bool = _field(
        False, "Weight the loss by 1/sqrt(SNR) (debiased estimation), another answer to Min-SNR's problem.",
        "advanced")
    multires_noise_iterations: int = _field(
        0, "Multi-resolution (pyramid) noise: adds coarser noise at N scales (6-10 is usual); 0 turns it off.",
        "advanced")
    multires_noise_discount: float = _field(
        0.3, "Weight of each coarser scale of multi-resolution noise (0.1-0.3 is usual).", "advanced")
    min_timestep: int = _field(0, "Lowest timestep trained (0-999); raise it to train only the coarse steps.",
                               "advanced")
    max_timestep: int = _field(1000, "Timesteps below this are trained (1-1000); lower it to train only the "
                               "fine steps.", "advanced")
    ip_noise_gamma: float = _field(
        0.0, "Input perturbation: noise the input this much more than the target says (about 0.1); 0 turns it "
        "off.", "advanced")
    ip_noise_gamma_random_strength: bool = _field(
        False, "Draw the input perturbation's strength between 0 and ip_noise_gamma each step.", "advanced")
    zero_terminal_snr: bool = _field(
        False, "Rescale the noise schedule so the last step is pure noise (for v-prediction models trained "
        "that way, such as NoobAI's v-pred SDXL).", "advanced")
    loss_type: str = _field(
        "l2", "Loss: l2 (mean squared), l1, huber (pseudo-Huber) or smooth_l1, as sd-scripts.", "advanced",
        ("l2", "l1", "huber", "smooth_l1"))
    huber_c: float = _field(0.1, "Threshold of the huber and smooth_l1 losses (0 to 1).", "advanced")
    huber_schedule: str = _field(
        "snr", "How the Huber threshold follows the timestep: snr, exponential or constant.", "advanced",
        ("snr", "exponential", "constant"))
    huber_scale: float = _field(1.0, "Scale of the Huber threshold (exponential and constant schedules).",
                                "advanced")
    masked_loss: bool = _field(
        False, "Train only where a mask is white (the character, not the background): masks from "
        "conditioning_data_dir or the images' alpha channel (alpha_mask).", "advanced")
    conditioning_data_dir: str = _field(
        "", "Folder of mask images named as the training images (same sub-folders, or flat), for masked_loss.",
        "folders")
    alpha_mask: bool = _field(False, "masked_loss reads each image's alpha channel as its mask.", "advanced")
    prior_loss_weight: float = _field(1.0, "Weight of the regularisation images' loss.", "advanced")
    sdpa: bool = _field(True, "Use PyTorch's scaled-dot-product attention (fast, memory-efficient).", "advanced")
    save_state: bool = _field(False, "Also save the full training state at each save point, to resume later.", "advanced")
    resume: str = _field(
        "", "A state folder written by save_state to continue training from; 'auto' takes the newest complete "
        "one of this output_dir and output_name (or starts fresh when there is none).", "advanced")
    overwrite: bool = _field(False, "Allow replacing LoRA files that already exist in the output folder.", "advanced")

    # --- Samples and validation ---
    sample_prompts: str = _field(
        "", "A prompts file (sd-scripts syntax: --n negative, --w/--h size, --s steps, --l CFG, --d seed), or the "
        "prompts themselves, one per line (written to <output_dir>/sample/prompt.txt, as the kohya_ss GUI does).",
        "samples")
    sample_every_n_epochs: int = _field(0, "Make sample images every N epochs; 0 turns it off.", "samples")
    sample_every_n_steps: int = _field(0, "Make sample images every N steps; 0 turns it off.", "samples")
    sample_at_first: bool = _field(False, "Also make sample images before the first step.", "samples")
    sample_sampler: str = _field("euler_a", "Sampler used for the sample images.", "samples", SAMPLERS)
    validation_split: float = _field(
        0.0, "Share of training images held out to measure a validation loss per epoch (0 to 0.5).", "samples")
    validation_data_dir: str = _field(
        "", "A folder of validation images in the '<repeats>_<name>' layout, instead of holding some out "
        "(validation_split).", "samples")
    validate_every_n_epochs: int = _field(
        1, "With held-out images: measure the validation loss every N epochs (0: not by epochs).", "samples")
    validate_every_n_steps: int = _field(
        0, "With held-out images: also measure it every N steps; 0 turns that off.", "samples")
    validation_seed: int = _field(0, "Seed of the validation's fixed noise (as lorasmith evaluate uses).", "samples")
    early_stop_patience: int = _field(
        0, "Stop when the validation loss has stayed above its best for N checks in a row, and copy the best "
        "epoch's file to <output_name>-best.safetensors; 0 never stops early.", "samples")

    # ---- derived values -----------------------------------------------------------------

    @property
    def resolution_wh(self) -> tuple[int, int]:
        return parse_resolution(self.resolution)

    @property
    def effective_unet_lr(self) -> float:
        return self.learning_rate if self.unet_lr is None else self.unet_lr

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.learning_rate if self.text_encoder_lr is None else self.text_encoder_lr

    @property
    def captions_vary(self) -> bool:
        """Whether a caption can read differently from step to step (so its encoding cannot be cached)."""
        return (self.shuffle_caption or self.caption_dropout_rate > 0 or self.caption_tag_dropout_rate > 0
                or self.caption_dropout_every_n_epochs > 0)

    @property
    def effective_logging_dir(self) -> str:
        return self.logging_dir or os.path.join(self.output_dir or ".", "logs")


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES: dict[str, Any] = get_type_hints(TrainConfig)


def field_type(name: str) -> type:
    """The plain type of a field: int, float, bool, str or list (Optional unwrapped)."""
    hint = _TYPES[name]
    if get_origin(hint) is not None and type(None) in get_args(hint):
        hint = next(a for a in get_args(hint) if a is not type(None))
    return get_origin(hint) or hint


def is_optional(name: str) -> bool:
    return type(None) in get_args(_TYPES[name])


def closest_key(name: str) -> str | None:
    match = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_key_error(name: str, where: str = "") -> ConfigError:
    hint = closest_key(name)
    suffix = f"; did you mean '{hint}'?" if hint else "; run 'lorasmith config keys' to list them."
    return ConfigError(f"unknown configuration key '{name}'{where}{suffix}")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(name: str, value: Any) -> Any:
    """Turn `value` (text from a CLI or form, or a value from a file) into the field's type."""
    if name not in FIELDS:
        raise unknown_key_error(name)
    kind = field_type(name)
    if value is None or (is_optional(name) and isinstance(value, str) and value.strip() == ""):
        if is_optional(name):
            return None
        raise ConfigError(f"{name} needs a value")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return int(str(value).strip())
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(str(value).strip()) if isinstance(value, str) else float(value)
        if kind is list:
            if isinstance(value, str):
                return [part for part in value.split() if part]
            return [str(item) for item in value]
        if kind is str:
            if name == "resolution" and isinstance(value, (list, tuple, int)):
                value = ",".join(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    expected = {bool: "true or false", int: "a whole number", float: "a number", list: "a list", str: "text"}[kind]
    raise ConfigError(f"{name} must be {expected}, got {value!r}")


def parse_resolution(text: str) -> tuple[int, int]:
    parts = [p.strip() for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) != 2 or min(numbers) <= 0:
        raise ConfigError(f"resolution must be 'width,height' or one number such as 512, got {text!r}")
    return numbers[0], numbers[1]


# network_args entries that are keys of their own here (sd-scripts' networks.lora reads them from network_args)
_LIFTED_NETWORK_ARGS = ("conv_dim", "conv_alpha")


def _lift_network_args(kwargs: dict) -> dict:
    """network_args = ["conv_dim=8", "conv_alpha=4"] -> conv_dim 8, conv_alpha 4 (the rest stays in the list)."""
    if not kwargs.get("network_args"):
        return kwargs
    kept = []
    for item in kwargs["network_args"]:
        name, sep, value = item.partition("=")
        if sep and name.strip() in _LIFTED_NETWORK_ARGS:
            kwargs[name.strip()] = parse_value(name.strip(), value.strip())
        else:
            kept.append(item)
    return {**kwargs, "network_args": kept}


def from_dict(values: dict, where: str = "") -> TrainConfig:
    """Build a configuration from key -> value; unknown keys and wrong types are errors."""
    kwargs = {}
    for key, value in values.items():
        if key not in FIELDS:
            raise unknown_key_error(key, where)
        kwargs[key] = parse_value(key, value)
    return TrainConfig(**_lift_network_args(kwargs))


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def with_values(config: TrainConfig, values: dict) -> TrainConfig:
    """A copy of `config` with `values` (key -> raw value) parsed and applied."""
    return dataclasses.replace(config, **_lift_network_args({k: parse_value(k, v) for k, v in values.items()}))
