"""Settings the user gave that lose to another, or that lorasmith reads but cannot honour.

`losing_settings` gives one line per setting that is overridden or has no effect, naming both keys
and how to get what was asked; `plan` and `train` print them. `unhonoured_settings` lists what
would make lorasmith train something other than what the file asks for (a network type it does not
train yet): `plan` shows them as notes and `train` refuses with the first one.
"""

from __future__ import annotations

from lorasmith.config.schema import TrainConfig

TRAINED_NETWORK_MODULE = "networks.lora"
FLUX_NETWORK_MODULE = "networks.lora_flux"  # sd-scripts' Flux.1 LoRA (families/flux/lora.py)

# network_module -> what users call it, for the refusal line
_NETWORK_NAMES = {
    "lycoris.kohya": "LyCORIS",
    "networks.oft_flux": "Flux.1 OFT",
    "networks.dylora": "DyLoRA",
    "networks.lora_fa": "LoRA-FA",
    "networks.loha": "kohya's LoHa",
    "networks.lokr": "kohya's LoKr",
    "networks.lora_sd3": "SD3 LoRA",
}


def _network_args(config: TrainConfig) -> dict[str, str]:
    pairs = (item.partition("=") for item in config.network_args)
    return {name.strip(): value.strip() for name, _, value in pairs}


def unhonoured_settings(config: TrainConfig) -> list[str]:
    """What lorasmith cannot train as asked; `train` stops with the first line."""
    from lorasmith.network.blocks import BLOCK_ARGS
    from lorasmith.network.lycoris_network import LYCORIS_ARGS, LYCORIS_MODULE, PLAIN_VIA_LYCORIS, TRAINED_ALGOS

    module, args = config.network_module.strip(), _network_args(config)
    if module == LYCORIS_MODULE:
        algo = args.get("algo", "lora").lower()
        if algo not in TRAINED_ALGOS:
            return [f"LyCORIS algo={algo} is not trained by lorasmith yet; it trains algo {', '.join(TRAINED_ALGOS)} "
                    "(kohya_ss LoRA_type LyCORIS/LoCon, LoHa, LoKr, iA3, GLoRA): pick one of those"]
        return [f"network_args {name}={value} is not read by lycoris.kohya (a typo?); it reads: "
                f"{', '.join(sorted(LYCORIS_ARGS))}" for name, value in args.items() if name not in LYCORIS_ARGS]
    if module == FLUX_NETWORK_MODULE:
        from lorasmith.families.flux.lora_targets import unknown_flux_args

        return unknown_flux_args(args)
    if module != TRAINED_NETWORK_MODULE:
        name = _NETWORK_NAMES.get(module, f"network_module {module}")
        return [f"{name} (network_module {module}) is not trained by lorasmith yet; it trains networks.lora (LoRA, "
                "and LoCon with conv_dim), lycoris.kohya (LyCORIS) and networks.lora_flux (Flux.1): set network_module "
                "networks.lora (kohya_ss "
                "LoRA_type Standard or Kohya LoCon) to train that instead"]
    lines = [f"network_args {name}={value} is not trained by lorasmith yet (sd-scripts' networks.lora reads it); "
             "remove it to train without it" for name, value in args.items()
             if name != "dropout" and name not in BLOCK_ARGS and name not in PLAIN_VIA_LYCORIS]
    blocks, via = [n for n in args if n in BLOCK_ARGS], [n for n in args if n in PLAIN_VIA_LYCORIS]
    if blocks and via:
        lines.append(f"network_args {via[0]} and {blocks[0]} cannot be trained together by lorasmith (its "
                     f"{via[0]} is LyCORIS', whose networks have no block-wise settings); remove one of them")
    return lines


# The DDPM families' settings that Flux.1's flow matching has no use for (sd-scripts' Flux ignores them too),
# and Flux's own settings, which the UNet families never read.
UNET_ONLY_KEYS = ("min_snr_gamma", "debiased_estimation_loss", "noise_offset", "adaptive_noise_scale",
                  "multires_noise_iterations", "clip_skip", "max_token_length", "weighted_captions",
                  "v_parameterization", "zero_terminal_snr", "vae")
FLUX_ONLY_KEYS = ("ae", "clip_l", "t5xxl", "t5xxl_max_token_length", "apply_t5_attn_mask", "timestep_sampling",
                  "sigmoid_scale", "discrete_flow_shift", "model_prediction_type", "guidance_scale",
                  "weighting_scheme", "logit_mean", "logit_std", "mode_scale")


def family_losing(config: TrainConfig, given, family: str | None) -> list[str]:
    """Settings the model's family does not read (nothing when the family is not known yet)."""
    if family is None:
        return []
    if family == "flux":
        return [f"{key} {_shown(getattr(config, key))} has no effect: Flux.1 is trained by flow matching with "
                "T5-XXL and CLIP-L (sd-scripts' Flux ignores it too); remove it" for key in UNET_ONLY_KEYS
                if key in given]
    return [f"{key} {_shown(getattr(config, key))} has no effect: only Flux.1 models read it, and this is "
            f"{family}; remove it or give a Flux.1 model" for key in FLUX_ONLY_KEYS if key in given]


def losing_settings(config: TrainConfig, given: frozenset[str] | set[str], family: str | None = None) -> list[str]:
    """One line for each setting in `given` that another setting overrides or that has no effect; with the
    model's `family` known, also those that family does not read."""
    from lorasmith.train.optim import adafactor_relative_step, optimizer_entry

    c, lines = config, []

    def loses(key: str, why: str) -> None:
        if key in given:
            lines.append(f"{key} {_shown(getattr(c, key))} has no effect: {why}")

    if c.max_train_epochs > 0 and c.max_train_steps > 0:
        loses("max_train_steps", f"max_train_epochs {c.max_train_epochs} decides the length (as in sd-scripts); "
                                 f"set max_train_epochs 0 to train {c.max_train_steps} steps")
    if c.network_train_unet_only:
        loses("text_encoder_lr", "network_train_unet_only trains no text encoder; turn it off to train one")
    if c.network_train_text_encoder_only:
        loses("unet_lr", "network_train_text_encoder_only trains no UNet; turn it off to train the UNet")
    entry = optimizer_entry(c.optimizer_type)
    relative = adafactor_relative_step(c.optimizer_type, c.optimizer_args)
    if relative:
        why = ("Adafactor with relative_step (sd-scripts' default) sets its own rates and schedule; give "
               "optimizer_args relative_step=False scale_parameter=False warmup_init=False for a fixed rate")
        for key in ("unet_lr", "text_encoder_lr"):
            loses(key, why)
        if c.lr_scheduler != "adafactor":
            loses("lr_scheduler", why)
    elif c.unet_lr is not None and c.text_encoder_lr is not None and not c.network_train_unet_only:
        loses("learning_rate", "unet_lr and text_encoder_lr set the rate of each part")
    if entry.schedule_free and c.lr_scheduler != "constant":
        loses("lr_scheduler", f"{c.optimizer_type} is schedule-free and needs no scheduler")
    if c.lr_scheduler_type:
        loses("lr_scheduler", f"lr_scheduler_type {c.lr_scheduler_type} replaces it")
    if c.lr_warmup_steps and c.lr_scheduler in ("constant", "adafactor") and not c.lr_scheduler_type:
        loses("lr_warmup_steps", f"lr_scheduler {c.lr_scheduler} has no warm-up; use constant_with_warmup")
    if c.lr_scheduler != "cosine_with_restarts":
        loses("lr_scheduler_num_cycles", "only lr_scheduler cosine_with_restarts restarts")
    if c.lr_scheduler != "polynomial":
        loses("lr_scheduler_power", "only lr_scheduler polynomial uses a power")
    if not c.sample_prompts:
        for key in ("sample_every_n_epochs", "sample_every_n_steps", "sample_sampler", "sample_at_first"):
            loses(key, "sample_prompts is not set; set it to a prompts file to make samples")
    elif not (c.sample_every_n_epochs or c.sample_every_n_steps or c.sample_at_first):
        loses("sample_prompts", "neither sample_every_n_epochs nor sample_every_n_steps is set; set one to make "
                                "samples")
    for key in ("cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk"):  # _to_disk implies it
        if getattr(c, key) and not c.network_train_unet_only:
            loses(key, "the text encoder is trained, so its outputs change; set network_train_unet_only to cache "
                       "them")
        elif getattr(c, key) and c.captions_vary:
            loses(key, "shuffle_caption or caption dropout changes the captions each step; turn those off to "
                       "cache them")
    if not (c.cache_text_encoder_outputs or c.cache_text_encoder_outputs_to_disk):
        loses("text_encoder_batch_size", "text-encoder outputs are not cached; set cache_text_encoder_outputs to "
                                         "encode captions once, that many at a time")
    if c.fp8_base and c.fp8_base_unet:
        loses("fp8_base", "fp8_base_unet keeps the text encoders at the compute precision; only the UNet / Flux "
                          "transformer is in fp8")
    if c.keep_tokens and not (c.shuffle_caption or c.caption_tag_dropout_rate):
        loses("keep_tokens", "only shuffle_caption and caption_tag_dropout_rate move or drop tags")
    if not c.multires_noise_iterations:
        loses("multires_noise_discount", "multires_noise_iterations is 0; set it (6-10) for multi-resolution noise")
    if c.validation_split and c.validation_data_dir:
        loses("validation_split", "validation_data_dir's images are validated on instead; nothing is held out")
    if not c.validation_split and not c.validation_data_dir:
        for key in ("validate_every_n_epochs", "validate_every_n_steps", "validation_seed", "early_stop_patience"):
            loses(key, "there are no validation images: set validation_split (0.1-0.2) or validation_data_dir")
    elif c.early_stop_patience and not c.validate_every_n_epochs and not c.validate_every_n_steps:
        loses("early_stop_patience", "no validation is measured; set validate_every_n_epochs")
    if not c.masked_loss:
        for key in ("conditioning_data_dir", "alpha_mask"):
            loses(key, "masked_loss is off; turn it on to train only where the masks are white")
    elif c.conditioning_data_dir:
        loses("alpha_mask", "conditioning_data_dir's mask images are used instead")
    if not c.use_ema:
        for key in ("ema_decay", "ema_start_step", "ema_update_interval"):
            loses(key, "use_ema is off; turn it on to keep a moving average of the weights")
    if c.loss_type not in ("huber", "smooth_l1"):
        for key in ("huber_c", "huber_schedule", "huber_scale"):
            loses(key, f"loss_type {c.loss_type} has no threshold; set loss_type huber or smooth_l1")
    if not c.ip_noise_gamma:
        loses("ip_noise_gamma_random_strength", "ip_noise_gamma is 0; set it (about 0.1) for input perturbation")
    if not c.conv_dim:
        loses("conv_alpha", "conv_dim is 0, so no convolution is trained; set conv_dim for LoCon")
    if not c.save_every_n_epochs:
        loses("save_last_n_epochs", "save_every_n_epochs is 0, so no epoch files are written")
    if not c.save_every_n_steps:
        loses("save_last_n_steps", "save_every_n_steps is 0, so no step files are written")
    if not c.enable_bucket:
        for key in ("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale"):
            loses(key, "enable_bucket is off; every image is cropped to the resolution")
    if "dropout" in _network_args(c):
        lines.append("network_args dropout has no effect (sd-scripts' networks.lora ignores it too); use "
                     "network_dropout")
    return lines + family_losing(c, given, family)


def _shown(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
