"""What a Flux.1 LoRA file says about itself, and how big it will be, as sd-scripts writes it.

sd-scripts (flux_train_network.py, library/sai_model_spec.py) adds the Flux recipe to the common ss_*
keys, names the network module networks.lora_flux, records no clip_skip or max_token_length, and gives
the modelspec architecture flux-1-dev/lora (or schnell) without a prediction type.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

FLUX_NETWORK_MODULE = "networks.lora_flux"
FLUX_IMPLEMENTATION = "https://github.com/black-forest-labs/flux"
FLUX_MODEL_SPEC_VERSION = "1.0.1"


def flux_metadata(config: Any, base_info: dict) -> dict[str, str | None]:
    """Keys over or beside the common ones (None: a common key Flux files do not carry)."""
    variant = base_info.get("flux_variant", "dev")
    recipe = {
        "ss_network_module": FLUX_NETWORK_MODULE,
        "ss_clip_skip": None, "ss_max_token_length": None,
        # flux_train_network.py turns fp8_base on with fp8_base_unet before writing it
        "ss_fp8_base": bool(config.fp8_base or config.fp8_base_unet), "ss_fp8_base_unet": bool(config.fp8_base_unet),
        "ss_model_type": "flux",
        "ss_apply_t5_attn_mask": bool(config.apply_t5_attn_mask),
        "ss_weighting_scheme": config.weighting_scheme,
        "ss_logit_mean": config.logit_mean,
        "ss_logit_std": config.logit_std,
        "ss_mode_scale": config.mode_scale,
        "ss_guidance_scale": config.guidance_scale,
        "ss_timestep_sampling": config.timestep_sampling,
        "ss_sigmoid_scale": config.sigmoid_scale,
        "ss_model_prediction_type": config.model_prediction_type,
        "ss_discrete_flow_shift": config.discrete_flow_shift,
    }
    keys: dict[str, str | None] = {key: str(value) for key, value in recipe.items()}
    keys.update({
        "modelspec.architecture": f"flux-1-{variant}/lora",
        "modelspec.implementation": FLUX_IMPLEMENTATION,
        "modelspec.sai_model_spec": FLUX_MODEL_SPEC_VERSION,
        "modelspec.prediction_type": None,
        "modelspec.encoder_layer": None,
    })
    return keys


def flux_lora_file_bytes(config: Any, configs: dict | None = None) -> int:
    """The file size of the LoRA `config` trains on Flux.1: the network built over the real (or the
    checkpoint's own) architecture on the meta device, its tensors counted, the header sized."""
    from lorasmith.families.flux.lora import FluxLoraSpec
    from lorasmith.network.size import file_bytes

    spec = FluxLoraSpec.from_config(config)
    return file_bytes(_tensor_shapes(spec, _configs_key(configs)), config.save_precision)


def _configs_key(configs: dict | None) -> str | None:
    import json

    return json.dumps(configs, sort_keys=True) if configs else None


@lru_cache(maxsize=8)
def _tensor_shapes(spec: Any, configs_json: str | None) -> dict[str, tuple[int, ...]]:
    """kohya key -> shape for `spec` over a meta Flux (cached: the meta build takes a moment)."""
    import json

    from lorasmith.families.flux.lora import create_flux_lora_network
    from lorasmith.families.flux.meta import meta_flux_base

    base = meta_flux_base(json.loads(configs_json) if configs_json else None, t5=spec_trains_t5(spec))
    network = create_flux_lora_network(base, spec)
    return {key: tuple(tensor.shape) for key, tensor in network.kohya_state_dict().items()}


def spec_trains_t5(spec: Any) -> bool:
    return bool(getattr(spec, "train_t5xxl", False))
