"""The metadata of a LoRA file: sd-scripts' `ss_*` keys and the `modelspec.*` keys, as text.

Values are formatted the way sd-scripts formats them (it calls `str()` on Python values:
booleans "True"/"False", unset options "None", resolution "(512, 512)", JSON for the dataset
folders, tag frequencies and buckets), because A1111, ComfyUI and model sites parse them.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from lorasmith.models.families import Family, modelspec_architecture

NETWORK_MODULE = "networks.lora"
SAI_MODEL_SPEC_VERSION = "1.0.0"

# sd-scripts records the optimizer's class path.
_OPTIMIZER_CLASSES = {
    "AdamW": "torch.optim.adamw.AdamW",
    "AdamW8bit": "bitsandbytes.optim.adamw.AdamW8bit",
    "Lion": "lion_pytorch.lion_pytorch.Lion",
    "Prodigy": "prodigyopt.prodigy.Prodigy",
    "Adafactor": "transformers.optimization.Adafactor",
}


def _off_is_none(value: float) -> Any:
    """sd-scripts leaves noise_offset/min_snr_gamma at None when unused."""
    return value if value else None


def optimizer_text(config: Any) -> str:
    """As sd-scripts logs it: the class's module path and name, then the optimizer_args."""
    name = _OPTIMIZER_CLASSES.get(config.optimizer_type)
    if name is None:
        from lorasmith.train.optim import optimizer_class

        try:
            cls = optimizer_class(config.optimizer_type)
            name = f"{cls.__module__}.{cls.__name__}"
        except Exception:  # the package is not here (metadata of a file planned elsewhere): the name given
            name = config.optimizer_type
    return name + (f"({','.join(config.optimizer_args)})" if config.optimizer_args else "")


def network_args(config: Any) -> dict[str, str] | None:
    """sd-scripts' --network_args as it records them (values as text); None when there are none."""
    args = {}
    if config.conv_dim:
        alpha = float(config.conv_alpha or config.conv_dim)
        # As typed on sd-scripts' command line ("conv_alpha=4"), whole numbers without ".0".
        args = {"conv_dim": str(config.conv_dim), "conv_alpha": str(int(alpha)) if alpha.is_integer() else str(alpha)}
    for item in getattr(config, "network_args", []):
        name, _, value = item.partition("=")
        args[name.strip()] = value.strip()
    return args or None


def build_metadata(
    config: Any, *, family: Family, v_prediction: bool, base_model_name: str, base_model_hashes: dict,
    epoch: int, steps: int, max_steps: int, num_train_images: int, num_reg_images: int,
    dataset_dirs: dict, tag_frequency: dict, bucket_info: dict | None, session_id: str,
    training_started_at: float, reg_dataset_dirs: dict | None = None, saved_at: float | None = None,
) -> dict[str, str]:
    """Every ss_* and modelspec.* key of a LoRA saved after `steps` steps of `epoch`.

    base_model_hashes: {"sd_model_hash": <A1111 legacy hash>, "new_sd_model_hash": <sha256>}, and
    "vae_hash"/"new_vae_hash" of a separate VAE; keys that are absent are left out, as sd-scripts
    does for models it did not hash.
    """
    saved_at = time.time() if saved_at is None else saved_at
    width, height = config.resolution_wh
    metadata: dict[str, Any] = {
        "ss_session_id": session_id,
        "ss_training_started_at": training_started_at,
        "ss_training_finished_at": saved_at,
        "ss_output_name": config.output_name,
        "ss_learning_rate": config.learning_rate,
        "ss_text_encoder_lr": config.text_encoder_lr,
        "ss_unet_lr": config.unet_lr,
        "ss_num_train_images": num_train_images,
        "ss_num_reg_images": num_reg_images,
        "ss_num_epochs": config.max_train_epochs,
        "ss_epoch": epoch,
        "ss_steps": steps,
        "ss_max_train_steps": max_steps,
        "ss_gradient_checkpointing": bool(config.gradient_checkpointing),
        "ss_gradient_accumulation_steps": config.gradient_accumulation_steps,
        "ss_lr_warmup_steps": _whole_as_int(config.lr_warmup_steps),  # sd-scripts writes "0", a fraction as "0.1"
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_optimizer": optimizer_text(config),
        "ss_max_grad_norm": config.max_grad_norm,
        "ss_network_module": getattr(config, "network_module", NETWORK_MODULE),
        "ss_network_dim": config.network_dim,
        "ss_network_alpha": float(config.network_alpha),
        "ss_network_dropout": config.network_dropout,
        "ss_scale_weight_norms": _off_is_none(config.scale_weight_norms),
        "ss_mixed_precision": config.mixed_precision,
        "ss_full_fp16": False,
        "ss_fp8_base": bool(config.fp8_base),  # sd-scripts writes the arguments as given
        "ss_fp8_base_unet": bool(config.fp8_base_unet),
        "ss_v2": family.name == "sd2",
        "ss_base_model_version": family.base_model_version,
        "ss_sd_model_name": base_model_name,
        "ss_clip_skip": config.clip_skip,
        "ss_max_token_length": None if config.max_token_length == 75 else config.max_token_length,  # sd-scripts' default is None
        "ss_cache_latents": bool(config.cache_latents),
        "ss_seed": config.seed,
        "ss_noise_offset": _off_is_none(config.noise_offset),
        "ss_min_snr_gamma": _off_is_none(config.min_snr_gamma),
        "ss_debiased_estimation": bool(config.debiased_estimation_loss),
        "ss_multires_noise_iterations": _off_is_none(config.multires_noise_iterations),
        "ss_multires_noise_discount": config.multires_noise_discount,
        "ss_caption_dropout_every_n_epochs": config.caption_dropout_every_n_epochs,
        "ss_adaptive_noise_scale": _off_is_none(config.adaptive_noise_scale),
        "ss_ip_noise_gamma": _off_is_none(config.ip_noise_gamma),
        "ss_ip_noise_gamma_random_strength": bool(config.ip_noise_gamma_random_strength),
        "ss_zero_terminal_snr": bool(config.zero_terminal_snr),
        "ss_loss_type": config.loss_type,
        "ss_huber_schedule": config.huber_schedule,
        "ss_huber_c": config.huber_c,
        "ss_prior_loss_weight": config.prior_loss_weight,
        "ss_caption_dropout_rate": config.caption_dropout_rate,
        "ss_caption_tag_dropout_rate": config.caption_tag_dropout_rate,
        "ss_training_comment": config.training_comment,
        "ss_batch_size_per_device": config.train_batch_size,
        "ss_total_batch_size": config.train_batch_size * config.gradient_accumulation_steps,
        "ss_resolution": (width, height),
        "ss_enable_bucket": bool(config.enable_bucket),
        "ss_bucket_no_upscale": bool(config.bucket_no_upscale),
        "ss_min_bucket_reso": config.min_bucket_reso,
        "ss_max_bucket_reso": config.max_bucket_reso,
        "ss_shuffle_caption": bool(config.shuffle_caption),
        "ss_flip_aug": bool(config.flip_aug),
        "ss_keep_tokens": config.keep_tokens,
        "ss_dataset_dirs": json.dumps(dataset_dirs),
        "ss_reg_dataset_dirs": json.dumps(reg_dataset_dirs or {}),
        "ss_tag_frequency": json.dumps(tag_frequency),
        "ss_bucket_info": json.dumps(bucket_info),
    }
    if "sd_model_hash" in base_model_hashes:
        metadata["ss_sd_model_hash"] = base_model_hashes["sd_model_hash"]
    if "new_sd_model_hash" in base_model_hashes:
        metadata["ss_new_sd_model_hash"] = base_model_hashes["new_sd_model_hash"]
    if config.vae:  # trained with a separate VAE: sd-scripts names and hashes it too
        metadata["ss_vae_name"] = Path(config.vae).name
        for ours, theirs in (("vae_hash", "ss_vae_hash"), ("new_vae_hash", "ss_new_vae_hash")):
            if ours in base_model_hashes:
                metadata[theirs] = base_model_hashes[ours]
    args = network_args(config)
    if args is not None:
        metadata["ss_network_args"] = json.dumps(args)
    metadata = {key: str(value) for key, value in metadata.items()}
    metadata.update(modelspec_metadata(config, family=family, v_prediction=v_prediction, saved_at=saved_at))
    from lorasmith.families import family_behaviour

    # the family's own keys (Flux's recipe, its modelspec); None removes a common key it does not write
    for key, value in family_behaviour(family).metadata(config, base_model_hashes).items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    return metadata


def modelspec_metadata(config: Any, *, family: Family, v_prediction: bool, saved_at: float) -> dict[str, str]:
    """The Stability AI model-spec keys sd-scripts adds to a LoRA (sai_model_spec.build_metadata)."""
    width, height = config.resolution_wh
    spec = {
        "modelspec.sai_model_spec": SAI_MODEL_SPEC_VERSION,
        "modelspec.architecture": modelspec_architecture(family, v_prediction),
        "modelspec.implementation": (
            "https://github.com/Stability-AI/generative-models" if family.name == "sdxl" else "diffusers"),
        "modelspec.title": config.output_name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.prediction_type": "v" if v_prediction else "epsilon",
        "modelspec.date": datetime.fromtimestamp(int(saved_at)).isoformat(),
    }
    if config.clip_skip and config.clip_skip > 1:
        spec["modelspec.encoder_layer"] = str(config.clip_skip)
    return spec


def _whole_as_int(number: float) -> int | float:
    return int(number) if float(number).is_integer() else number
