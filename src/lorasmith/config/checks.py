"""Value checks for a whole configuration: one ConfigError line per mistake, warnings as text.

Types are already right when a TrainConfig exists (schema.parse_value sees to that); this
module checks ranges, choices, combinations and that folders and files exist.
"""

from __future__ import annotations

import os
from pathlib import Path

from lorasmith.config.schema import FIELDS, TrainConfig, parse_resolution
from lorasmith.errors import ConfigError

# key -> (lowest allowed, whether the lowest itself is allowed)
_MINIMUMS = {
    "train_batch_size": (1, True), "max_train_epochs": (0, True), "max_train_steps": (0, True),
    "save_every_n_epochs": (0, True), "save_every_n_steps": (0, True), "save_last_n_epochs": (0, True),
    "save_last_n_steps": (0, True), "caption_dropout_every_n_epochs": (0, True),
    "ema_start_step": (0, True), "ema_update_interval": (1, True), "validate_every_n_epochs": (0, True),
    "validate_every_n_steps": (0, True), "early_stop_patience": (0, True),
    "learning_rate": (0, False),
    "unet_lr": (0, True), "text_encoder_lr": (0, True), "lr_warmup_steps": (0, True),
    "lr_scheduler_num_cycles": (1, True),
    "network_dim": (1, True), "network_alpha": (0, False), "num_cpu_threads_per_process": (1, True),
    "max_data_loader_n_workers": (0, True), "conv_dim": (0, True), "conv_alpha": (0, True),
    "gradient_accumulation_steps": (1, True), "max_grad_norm": (0, True), "keep_tokens": (0, True),
    "clip_skip": (1, True), "min_bucket_reso": (64, True), "max_bucket_reso": (64, True),
    "bucket_reso_steps": (1, True), "noise_offset": (0, True), "min_snr_gamma": (0, True),
    "prior_loss_weight": (0, True), "multires_noise_iterations": (0, True), "multires_noise_discount": (0, True),
    "min_timestep": (0, True), "scale_weight_norms": (0, True), "ip_noise_gamma": (0, True),
    "huber_scale": (0, False), "sample_every_n_epochs": (0, True),
    "sample_every_n_steps": (0, True), "vae_batch_size": (1, True), "text_encoder_batch_size": (0, True),
}
_OPEN_CHOICES = {"optimizer_type"}  # the list is the GUI's; any name sd-scripts takes is checked by the table
_FRACTIONS = {"ema_decay": 1.0, "huber_c": 1.0, "network_dropout": 1.0, "caption_dropout_rate": 1.0,
              "caption_tag_dropout_rate": 1.0,
              "validation_split": 0.5}


def _check_ranges(config: TrainConfig) -> None:
    for key, (low, inclusive) in _MINIMUMS.items():
        value = getattr(config, key)
        if value is None:
            continue
        if value < low or (value == low and not inclusive):
            relation = "at least" if inclusive else "greater than"
            raise ConfigError(f"{key} must be {relation} {low:g}, got {value:g}")
    for key, high in _FRACTIONS.items():
        value = getattr(config, key)
        if not 0 <= value <= high:
            raise ConfigError(f"{key} must be between 0 and {high:g}, got {value:g}")
    if not config.min_timestep < config.max_timestep <= 1000:
        raise ConfigError(f"timesteps run from 0 to 1000: min_timestep must be below max_timestep and max_timestep "
                          f"at most 1000, got {config.min_timestep} and {config.max_timestep}")
    if config.max_token_length not in (75, 150, 225):
        raise ConfigError(f"max_token_length must be 75, 150 or 225, got {config.max_token_length}")
    if config.lr_warmup_steps >= 1 and not float(config.lr_warmup_steps).is_integer():
        raise ConfigError(f"lr_warmup_steps must be a whole number of steps, or below 1 for a fraction of them; "
                          f"got {config.lr_warmup_steps:g}")
    for key, spec in FIELDS.items():
        choices = spec.metadata["choices"]
        if choices and key not in _OPEN_CHOICES and getattr(config, key) not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {getattr(config, key)!r}")
    from lorasmith.train.optim import optimizer_entry  # the table (no torch import)

    optimizer_entry(config.optimizer_type)
    if config.adaptive_noise_scale and not config.noise_offset:
        raise ConfigError("adaptive_noise_scale needs noise_offset (sd-scripts stops here too); set noise_offset "
                          "(about 10x adaptive_noise_scale) or remove adaptive_noise_scale")


def _check_shapes(config: TrainConfig) -> None:
    parse_resolution(config.resolution)  # any size trains, as in sd-scripts: buckets or a crop make it fit
    if config.enable_bucket and config.bucket_reso_steps % 8:
        raise ConfigError(f"bucket_reso_steps {config.bucket_reso_steps} does not fit: bucket sides are whole latent "
                          "pixels, so sd-scripts needs a multiple of 8 and stops here too; 64 is today's default "
                          "(1 comes from old kohya_ss presets)")
    if config.min_bucket_reso > config.max_bucket_reso:
        raise ConfigError("min_bucket_reso must not be larger than max_bucket_reso")
    if config.max_train_epochs == 0 and config.max_train_steps == 0:
        raise ConfigError("set max_train_epochs (or max_train_steps) to more than 0")
    if config.network_train_unet_only and config.network_train_text_encoder_only:
        raise ConfigError("choose at most one of network_train_unet_only and network_train_text_encoder_only")
    if not config.output_name or any(c in config.output_name for c in "/\\:*?\"<>|"):
        raise ConfigError(f"output_name must be a plain file name without path characters, got {config.output_name!r}")


def _check_paths(config: TrainConfig, for_training: bool) -> None:
    if not config.train_data_dir:
        raise ConfigError("train_data_dir is not set; point it at the folder holding '<repeats>_<name>' folders")
    if not Path(config.train_data_dir).expanduser().is_dir():
        raise ConfigError(f"train_data_dir '{config.train_data_dir}' does not exist; create it or fix the path")
    for key in ("reg_data_dir", "validation_data_dir", "conditioning_data_dir"):  # optional folders
        folder = getattr(config, key)
        if folder and not Path(folder).expanduser().is_dir():
            raise ConfigError(f"{key} '{folder}' does not exist; fix the path or leave it empty")
    from lorasmith.sampling.prompts import is_prompt_text

    if config.sample_prompts and not is_prompt_text(config.sample_prompts) and \
            not Path(config.sample_prompts).expanduser().is_file():
        raise ConfigError(f"sample_prompts file '{config.sample_prompts}' does not exist; give a prompts file, or "
                          "the prompts themselves")
    if config.masked_loss and not (config.conditioning_data_dir or config.alpha_mask):
        raise ConfigError("masked_loss needs masks: set conditioning_data_dir (mask images named as the training "
                          "images) or alpha_mask (the images' alpha channel)")
    if not for_training:
        return
    if not config.pretrained_model_name_or_path:
        raise ConfigError("pretrained_model_name_or_path is not set; choose a base checkpoint (.safetensors)")
    if not os.path.exists(os.path.expanduser(config.pretrained_model_name_or_path)):
        raise ConfigError(f"base model '{config.pretrained_model_name_or_path}' does not exist; fix the path")
    if not config.output_dir:
        raise ConfigError("output_dir is not set; choose a folder for the LoRA files")
    if config.vae and not Path(config.vae).expanduser().is_file():
        raise ConfigError(f"vae file '{config.vae}' does not exist; fix the path or leave it empty "
                          "to use the checkpoint's own VAE")
    if config.network_weights and not Path(config.network_weights).expanduser().is_file():
        raise ConfigError(f"network_weights file '{config.network_weights}' does not exist; give a LoRA "
                          ".safetensors file or leave it empty")
    if config.resume and config.resume.lower() != "auto" and not Path(config.resume).expanduser().is_dir():
        raise ConfigError(f"resume folder '{config.resume}' does not exist; give a state folder written by save_state, "
                          "or 'auto' for the newest one of this output_dir and output_name")


def advisory_warnings(config: TrainConfig) -> list[str]:
    """Allowed but probably not meant: the tutorial's cautions."""
    warnings = []
    if config.network_alpha > config.network_dim:
        warnings.append(f"network_alpha ({config.network_alpha:g}) is above network_dim ({config.network_dim}): "
                        "the tutorial advises alpha <= rank (usually rank / 2)")
    if config.effective_text_encoder_lr > config.learning_rate:
        warnings.append("text_encoder_lr is higher than learning_rate; the tutorial advises half of it or equal")
    from lorasmith.train.optim import optimizer_entry

    if optimizer_entry(config.optimizer_type).adaptive and config.learning_rate <= 0.1:
        warnings.append(f"{config.optimizer_type} finds its own step size: learning_rate is a multiplier, usually "
                        f"1.0 (got {config.learning_rate:g})")
    if config.conv_alpha > config.conv_dim > 0:
        warnings.append("conv_alpha is above conv_dim")
    if config.min_snr_gamma and config.debiased_estimation_loss:
        warnings.append("min_snr_gamma and debiased_estimation_loss both weight the loss by timestep; "
                        "usually one is used")
    return warnings


def check_config(config: TrainConfig, for_training: bool = True, check_paths: bool = True) -> list[str]:
    """Raise ConfigError for the first invalid value; return advisory warnings."""
    _check_ranges(config)
    _check_shapes(config)
    if check_paths:
        _check_paths(config, for_training)
    return advisory_warnings(config)


def check_family_shapes(config: TrainConfig, family) -> None:
    """Image sides the family can take: Flux.1 packs 2x2 latents, so its buckets are multiples of 16 pixels
    (sd-scripts asks 32 of bucket_reso_steps, with a to-do; 16 is what the packing needs)."""
    step = family.bucket_multiple
    if step <= 8:
        return
    if config.enable_bucket and config.bucket_reso_steps % step:
        raise ConfigError(f"bucket_reso_steps {config.bucket_reso_steps} does not fit {family.title}: its latents "
                          f"are packed 2x2, so bucket sides must be multiples of {step}; use 64 (or 32)")
    width, height = parse_resolution(config.resolution)
    if not config.enable_bucket and (width % step or height % step):
        raise ConfigError(f"resolution {config.resolution} does not fit {family.title}: images are cropped to it "
                          f"and its sides must be multiples of {step}; use e.g. 512,512 or 1024,1024")
