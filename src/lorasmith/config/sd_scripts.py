"""sd-scripts' own configuration files (`train_network.py --config_file`): keys we do not use.

Those files (and the TOML the kohya_ss GUI writes next to each run) hold arguments that have no
meaning here: `xformers`, `save_model_as`, `log_with` ... They are listed once, as a note, so that
the file opens; any other unknown key is still an error naming the closest key, because it is
most likely a typo. `network_module` and `network_args` are keys of ours: what is not trained here
is refused by `train` (config/losing.py), not dropped.
"""

from __future__ import annotations

# train_network.py arguments that change nothing lorasmith trains (speed, memory, logging, file
# handling), or that it does on its own (SDPA attention, VAE upcasting).
NO_EFFECT_KEYS = frozenset({
    "network_train_text_encoder_only_lr", "save_model_as", "save_last_n_epochs_state",
    "save_last_n_steps_state", "output_config",
    "xformers", "mem_eff_attn", "lowram", "highvram", "no_half_vae",
    "full_fp16", "persistent_data_loader_workers",
    "log_with", "log_prefix", "log_tracker_name", "log_tracker_config", "wandb_api_key", "wandb_run_name",
    "dataset_config", "config_file", "in_json", "dataset_repeats",
    "no_metadata", "metadata_title", "metadata_author", "metadata_description", "metadata_license",
    "metadata_tags", "training_comment_extra", "ddp_timeout", "ddp_gradient_as_bucket_view",
    "ddp_static_graph", "deepspeed", "tokenizer_cache_dir", "console_log_level", "console_log_file",
    "console_log_simple", "huggingface_repo_id", "save_n_epoch_ratio", "no_token_padding", "max_validation_steps",
})
# Arguments that change what is trained, which lorasmith does not build yet: set to anything but their
# "off" value, they are named in the note so that nobody believes them applied.
NOT_BUILT_KEYS = {
    "color_aug": False, "random_crop": False, "face_crop_aug_range": None,
    "scale_v_pred_loss_like_noise_pred": False, "v_pred_like_loss": 0, "noise_offset_random_strength": False,
    "base_weights": None,
    "base_weights_multiplier": None, "dim_from_weights": False,
}
UNUSED_KEYS = NO_EFFECT_KEYS | set(NOT_BUILT_KEYS)


def is_off(key: str, value) -> bool:
    """Whether a not-built key holds its 'off' value (so leaving it out changes nothing)."""
    off = NOT_BUILT_KEYS[key]
    return value in (off, None, "", 0, False, "0", "false", "False")


def split_unused(values: dict) -> tuple[dict, list[str]]:
    """(values without sd-scripts-only keys, notes naming them)."""
    kept = {key: value for key, value in values.items() if key not in UNUSED_KEYS}
    no_effect = [key for key in values if key in NO_EFFECT_KEYS]
    not_built = [f"{key}={values[key]!r}" for key in values if key in NOT_BUILT_KEYS and not is_off(key, values[key])]
    notes = [f"sd-scripts settings with no effect here: {', '.join(no_effect)}"] if no_effect else []
    if not_built:
        notes.append(f"sd-scripts settings lorasmith does not train yet, left out: {', '.join(not_built)}")
    return kept, notes
