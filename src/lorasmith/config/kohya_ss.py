"""Read the kohya_ss GUI's JSON configuration files, the kind tutorials hand out, as the GUI means them.

The GUI saves its form with its own key names (`epoch`, `max_resolution`, `optimizer`, `LoRA_type`
...), often with numbers as strings, and turns them into sd-scripts arguments by rules of its own
(kohya_gui/lora_gui.py, `train_model`): a LoRA type becomes a network module and network_args;
`noise_offset_type` picks which noise settings pass; a text-encoder rate of 0 trains the UNet only; a
value of 0 is left out, so sd-scripts' default applies; `additional_parameters` come last and win.
We follow those rules, so a file trains what it trained there, and list the keys that do not apply
once, as a note, instead of failing: a user's old config should just open.
"""

from __future__ import annotations

import shlex

from lorasmith.config.schema import FIELDS, field_type
from lorasmith.config.sd_scripts import NOT_BUILT_KEYS, is_off
from lorasmith.errors import ConfigError

# GUI key -> our key, for keys that only differ in name.
RENAMED = {"max_resolution": "resolution", "optimizer": "optimizer_type", "lora_network_weights": "network_weights"}
# Keys only the GUI writes: seeing one of them means the file came from the GUI.
GUI_ONLY_KEYS = {"epoch", "max_resolution", "LoRA_type", "model_list", "lr_warmup", "save_model_as", "v2", "sdxl"}
# The GUI leaves out a 0, so sd-scripts' default applies (which is ours too).
ZERO_MEANS_DEFAULT = {"max_grad_norm", "prior_loss_weight", "max_timestep", "multires_noise_discount",
                      "lr_scheduler_num_cycles", "clip_skip", "train_batch_size", "gradient_accumulation_steps",
                      "lr_scheduler_power", "vae_batch_size", "text_encoder_batch_size"}
_TEXT_KEYS = {"reg_data_dir", "logging_dir", "output_dir", "train_data_dir", "pretrained_model_name_or_path",
              "resume", "training_comment", "network_weights", "vae", "sample_prompts"}

# LoRA_type -> (network_module, LyCORIS algo or None)
NETWORKS = {
    "Standard": ("networks.lora", None), "Kohya LoCon": ("networks.lora", None),
    "Kohya DyLoRA": ("networks.dylora", None), "LoRA-FA": ("networks.lora_fa", None),
    "Kohya LoHa": ("networks.loha", None), "Kohya LoKr": ("networks.lokr", None),
    "Flux1": ("networks.lora_flux", None), "Flux1 OFT": ("networks.oft_flux", None),
    "LyCORIS/LoCon": ("lycoris.kohya", "locon"), "LyCORIS/LoHa": ("lycoris.kohya", "loha"),
    "LyCORIS/LoKr": ("lycoris.kohya", "lokr"), "LyCORIS/iA3": ("lycoris.kohya", "ia3"),
    "LyCORIS/GLoRA": ("lycoris.kohya", "glora"), "LyCORIS/DyLoRA": ("lycoris.kohya", "dylora"),
    "LyCORIS/Diag-OFT": ("lycoris.kohya", "diag-oft"), "LyCORIS/BOFT": ("lycoris.kohya", "boft"),
    "LyCORIS/Native Fine-Tuning": ("lycoris.kohya", "full"),
}
# The GUI's Flux tab: fields it passes in network_args for networks.lora_flux when set, and the keys it
# passes to flux_train_network.py only with flux1_checkbox (the same names as ours).
FLUX_NETWORK_ARGS = ("img_attn_dim", "img_mlp_dim", "img_mod_dim", "single_dim", "txt_attn_dim", "txt_mlp_dim",
                     "txt_mod_dim", "single_mod_dim", "in_dims", "train_double_block_indices",
                     "train_single_block_indices")
FLUX_KEYS = ("ae", "clip_l", "t5xxl", "t5xxl_max_token_length", "apply_t5_attn_mask", "guidance_scale",
             "timestep_sampling", "sigmoid_scale", "discrete_flow_shift", "model_prediction_type")
FLUX_TAB_KEYS = {"flux1_checkbox", "flux1_cache_text_encoder_outputs", "flux1_cache_text_encoder_outputs_to_disk",
                 "split_mode", "train_blocks", "split_qkv", "train_t5xxl", *FLUX_NETWORK_ARGS, *FLUX_KEYS}
# Fields the GUI passes in network_args for kohya's networks.lora when set (not 0 / empty).
STANDARD_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
                 "block_alphas", "conv_block_dims", "conv_block_alphas", "rank_dropout", "module_dropout")
LYCORIS_ARGS = ("rank_dropout", "module_dropout", "use_tucker", "use_scalar", "rank_dropout_scale", "train_norm",
                "dora_wd", "bypass_mode", "factor", "use_cp", "decompose_both", "train_on_input", "constrain",
                "rescaled", "unit")
LORAPLUS_ARGS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
NOISE_KEYS = {"Original": ("noise_offset", "adaptive_noise_scale"),
              "Multires": ("multires_noise_iterations", "multires_noise_discount")}
# Keys the rules below read as a group, never one by one.
_BY_RULE = {"LoRA_type", "LyCORIS_preset", "conv_dim", "conv_alpha", "epoch", "max_train_epochs", "max_train_steps",
            "lr_warmup", "lr_warmup_steps", "noise_offset_type", "learning_rate", "unet_lr", "text_encoder_lr", "v2",
            "sdxl", "additional_parameters", "sdxl_cache_text_encoder_outputs", "stop_text_encoder_training",
            "stop_text_encoder_training_pct", "seed", "conv_dims", "conv_alphas", *FLUX_TAB_KEYS, *STANDARD_ARGS,
            *LYCORIS_ARGS,
            *LORAPLUS_ARGS, *NOISE_KEYS["Original"], *NOISE_KEYS["Multires"]}


def looks_like_kohya_gui(values: dict) -> bool:
    return any(key in values for key in GUI_ONLY_KEYS)


def _is_unset(value) -> bool:
    return value in (None, "", False, 0, "0", "0.0", [], {}, "false", "False")


def _number(value, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _warmup_fraction(percent) -> float:
    number = _number(percent, -1.0)
    if not 0 <= number < 100:
        raise ConfigError(f"lr_warmup must be a percent of the steps from 0 to 99, got {percent!r}")
    return number / 100


def _model_family(values: dict) -> str:
    if values.get("flux1_checkbox") in (True, "true", "True"):
        return "flux"
    if values.get("sdxl") in (True, "true", "True"):
        return "sdxl"
    if values.get("v2") in (True, "true", "True"):
        return "sd2"
    return "auto"


def _network(values: dict) -> dict:
    lora_type = values.get("LoRA_type") or "Standard"
    lora_type = "LyCORIS/LoCon" if lora_type == "LoCon" else lora_type  # the GUI renames it on load
    module, algo = NETWORKS.get(lora_type, (f"kohya_ss LoRA_type {lora_type}", None))
    ours: dict = {"network_module": module}
    uses_conv = lora_type == "Kohya LoCon" or algo is not None
    if uses_conv and "conv_dim" in values:
        ours["conv_dim"] = values["conv_dim"]
        ours["conv_alpha"] = values.get("conv_alpha", 1)
    if module == "networks.lora_flux":
        ours["network_args"] = _flux_network_args(values)
        return ours
    names = LYCORIS_ARGS if algo else STANDARD_ARGS
    args = [f"algo={algo}"] + ([f"preset={values['LyCORIS_preset']}"] if values.get("LyCORIS_preset") else []) \
        if algo else []
    args += [f"{name}={values[name]}" for name in (*names, *LORAPLUS_ARGS) if not _is_unset(values.get(name))
             and not (name == "factor" and _number(values[name]) == -1)]
    ours["network_args"] = args
    return ours


def _flux_network_args(values: dict) -> list[str]:
    """As the GUI builds them for Flux1: the per-layer dims and block indices when set, split_mode forcing
    train_blocks=single, split_qkv and train_t5xxl when ticked, rank/module dropout last."""
    args = [f"{name}={values[name]}" for name in FLUX_NETWORK_ARGS if not _is_unset(values.get(name))]
    if values.get("split_mode") in (True, "true", "True"):
        args.append("train_blocks=single")
    for name in ("split_qkv", "train_t5xxl"):
        if values.get(name) in (True, "true", "True"):
            args.append(f"{name}=True")
    args += [f"{name}={values[name]}" for name in ("rank_dropout", "module_dropout", *LORAPLUS_ARGS)
             if not _is_unset(values.get(name))]
    return args


def _flux(values: dict, ours: dict, notes: list[str]) -> None:
    """The Flux tab's keys, passed (as the GUI does) only with flux1_checkbox."""
    if ours["model_family"] != "flux":
        return
    for key in FLUX_KEYS:
        if key in values and values[key] not in ("", None):
            ours[key] = values[key]
    if values.get("flux1_cache_text_encoder_outputs") in (True, "true", "True") or \
            values.get("flux1_cache_text_encoder_outputs_to_disk") in (True, "true", "True"):
        ours["cache_text_encoder_outputs"] = True
    if values.get("flux1_cache_text_encoder_outputs_to_disk") in (True, "true", "True"):
        ours["cache_text_encoder_outputs_to_disk"] = True
    if values.get("train_blocks") not in (None, "", "all") and values.get("split_mode") not in (True, "true", "True"):
        notes.append(f"train_blocks {values['train_blocks']} is not passed by the kohya_ss GUI without split_mode; "
                     "all blocks train (add train_blocks=... to network_args to choose)")


def _length(values: dict) -> dict:
    """The GUI passes max_train_epochs when set (it wins in sd-scripts), else max_train_steps when set, else
    computes the steps from `epoch`: which is what max_train_epochs = epoch gives here."""
    epochs, steps = int(_number(values.get("max_train_epochs"))), int(_number(values.get("max_train_steps")))
    if epochs > 0:
        return {"max_train_epochs": epochs, "max_train_steps": max(steps, 0)}
    if steps > 0:
        return {"max_train_epochs": 0, "max_train_steps": steps}
    epoch = int(_number(values.get("epoch")))
    return {"max_train_epochs": epoch, "max_train_steps": 0} if epoch > 0 else {"max_train_epochs": 0,
                                                                                 "max_train_steps": 1600}


def _learning_rates(values: dict) -> dict:
    """A text-encoder rate of 0 trains the UNet only, a UNet rate of 0 the text encoder only (the GUI's rule)."""
    lr, unet, text = (_number(values.get(k)) for k in ("learning_rate", "unet_lr", "text_encoder_lr"))
    ours: dict = {"learning_rate": lr} if lr else {}
    if unet:
        ours["unet_lr"] = unet
    if text:
        ours["text_encoder_lr"] = text
    if unet and not text:
        ours["network_train_unet_only"] = True
    elif text and not unet:
        ours["network_train_text_encoder_only"] = True
    return ours


def _noise(values: dict, notes: list[str]) -> dict:
    kind = values.get("noise_offset_type") or "Original"
    passed = NOISE_KEYS.get(kind, NOISE_KEYS["Original"])
    left_out = [key for other, keys in NOISE_KEYS.items() if other != kind for key in keys
                if not _is_unset(values.get(key)) and key != "multires_noise_discount"]
    if left_out:
        notes.append(f"noise_offset_type {kind} leaves out {', '.join(left_out)}, as the kohya_ss GUI does")
    return {key: values[key] for key in passed if not _is_unset(values.get(key))}


def translate(values: dict) -> tuple[dict, list[str]]:
    """GUI JSON -> (our key -> value, notes). Values stay raw; schema.parse_value types them."""
    ours: dict = {"model_family": _model_family(values)}
    ignored, not_built, notes = [], [], []
    for key, value in values.items():
        target = RENAMED.get(key, key)
        if key in _BY_RULE:
            continue
        if key in NOT_BUILT_KEYS:
            if not is_off(key, value):
                not_built.append(f"{key}={value!r}")
            continue
        if target not in FIELDS:
            if not _is_unset(value):
                ignored.append(key)
            continue
        if value == "" and target not in _TEXT_KEYS:
            continue  # the GUI writes "" for a number it leaves unset
        if target in ZERO_MEANS_DEFAULT and _number(value, 1.0) == 0:
            continue  # the GUI leaves it out; sd-scripts' default (ours) applies
        if target in ("optimizer_args", "lr_scheduler_args") and isinstance(value, str):
            value = shlex.split(value)
        ours[target] = value
    ours.update(_network(values))
    _flux(values, ours, notes)
    ours.update(_length(values))
    ours.update(_learning_rates(values))
    ours.update(_noise(values, notes))
    if _number(values.get("seed")) > 0:
        ours["seed"] = values["seed"]
    warmup_steps = _number(values.get("lr_warmup_steps"))
    if warmup_steps > 0:  # an absolute count wins over the percent
        ours["lr_warmup_steps"] = int(warmup_steps)
    elif not _is_unset(values.get("lr_warmup")):  # a percent: our lr_warmup_steps below 1 is that fraction
        ours["lr_warmup_steps"] = _warmup_fraction(values["lr_warmup"])
    if values.get("sdxl_cache_text_encoder_outputs") in (True, "true") and ours["model_family"] == "sdxl":
        ours["cache_text_encoder_outputs"] = True
    ignored += _additional_parameters(str(values.get("additional_parameters") or ""), ours)
    if ignored:
        notes.insert(0, f"kohya_ss settings not used by lorasmith: {', '.join(ignored)}")
    if not_built:
        notes.append(f"kohya_ss settings lorasmith does not train yet, left out: {', '.join(not_built)}")
    return ours, notes


def _additional_parameters(text: str, ours: dict) -> list[str]:
    """'--noise_offset 0.05 --foo' from the GUI's free-text box: applied last, so they win, as in the GUI."""
    ignored = []
    tokens = shlex.split(text)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not token.startswith("--"):
            continue
        key, _, inline = token[2:].partition("=")
        following = [inline] if inline else []
        while index < len(tokens) and not tokens[index].startswith("--"):
            following.append(tokens[index])
            index += 1
        if key not in FIELDS:
            ignored.append(f"--{key}")
            continue
        if field_type(key) is list:
            ours[key] = following
        else:
            ours[key] = following[0] if following else True
    return ignored
