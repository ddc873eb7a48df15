"""sd-scripts' own configuration files (`train_network.py --config_file`): keys we do not use.

Those files (and the TOML the kohya_ss GUI writes next to each run) hold arguments that have no
meaning here: `network_module`, `xformers`, `save_model_as` ... They are listed once, as a note,
so that the file opens; any other unknown key is still an error naming the closest key, because
it is most likely a typo. `network_module` is checked: only `networks.lora` is what we train.
"""

from __future__ import annotations

from lorasmith.errors import ConfigError

# train_network.py arguments without a lorasmith equivalent (as of sd-scripts 0.8/0.9).
UNUSED_KEYS = frozenset({
    "network_args", "dim_from_weights", "network_train_text_encoder_only_lr",
    "save_model_as", "save_last_n_epochs_state",
    "save_last_n_steps", "save_last_n_steps_state", "save_state_on_train_end", "output_config",
    "xformers", "mem_eff_attn", "lowram", "highvram", "vae_batch_size", "no_half_vae",
    "full_fp16", "full_bf16", "fp8_base", "persistent_data_loader_workers",
    "log_with", "log_prefix", "log_tracker_name", "wandb_api_key", "wandb_run_name",
    "color_aug", "random_crop", "face_crop_aug_range",
    "caption_dropout_every_n_epochs", "caption_prefix", "caption_suffix", "secondary_separator",
    "keep_tokens_separator", "weighted_captions",
    "adaptive_noise_scale", "ip_noise_gamma", "zero_terminal_snr",
    "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss", "loss_type", "huber_c", "huber_schedule",
    "sample_at_first", "dataset_config", "config_file", "in_json", "dataset_repeats",
    "noise_offset_random_strength", "lr_scheduler_power", "lr_scheduler_type",
    "lr_scheduler_args", "base_weights", "base_weights_multiplier",
    "no_metadata", "metadata_title", "metadata_author", "metadata_description", "metadata_license",
    "metadata_tags", "training_comment_extra", "ddp_timeout", "ddp_gradient_as_bucket_view",
    "ddp_static_graph", "deepspeed", "tokenizer_cache_dir", "console_log_level", "console_log_file",
    "console_log_simple", "huggingface_repo_id", "save_n_epoch_ratio", "no_token_padding",
})
TRAINED_NETWORK_MODULE = "networks.lora"


def split_unused(values: dict) -> tuple[dict, list[str]]:
    """(values without sd-scripts-only keys, a note naming them); a network we do not train is an error."""
    module = values.get("network_module")
    if module not in (None, "", TRAINED_NETWORK_MODULE):
        raise ConfigError(f"network_module {module!r} is not trained by lorasmith; it trains "
                          f"{TRAINED_NETWORK_MODULE} (LoRA, and LoCon with conv_dim): remove the key or set it so")
    kept = {key: value for key, value in values.items() if key not in UNUSED_KEYS and key != "network_module"}
    unused = [key for key in values if key in UNUSED_KEYS]
    notes = [f"sd-scripts settings not used by lorasmith: {', '.join(unused)}"] if unused else []
    return kept, notes
