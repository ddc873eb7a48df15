"""Read the kohya_ss GUI's JSON configuration files, the kind tutorials hand out.

The GUI saves its form with its own key names (`epoch`, `max_resolution`, `optimizer`, `v2`,
`LoRA_type` ...), often with numbers as strings. We translate what has a meaning here and list
the rest once, as a note, instead of failing: a user's old config should just open.
"""

from __future__ import annotations

import shlex

from lorasmith.config.schema import FIELDS
from lorasmith.errors import ConfigError

# GUI key -> our key, for keys that only differ in name.
RENAMED = {
    "epoch": "max_train_epochs",
    "max_resolution": "resolution",
    "optimizer": "optimizer_type",
}
# Keys only the GUI writes: seeing one of them means the file came from the GUI.
GUI_ONLY_KEYS = {"epoch", "max_resolution", "LoRA_type", "model_list", "lr_warmup", "save_model_as", "v2", "sdxl"}
_LOCON_TYPES = {"LoCon", "Kohya LoCon", "LyCORIS/LoCon", "Kohya DyLoRA"}


def looks_like_kohya_gui(values: dict) -> bool:
    return any(key in values for key in GUI_ONLY_KEYS)


def _is_unset(value) -> bool:
    return value in (None, "", False, 0, "0", "0.0", [], {})


def _warmup_fraction(percent) -> float:
    try:
        number = float(percent)
    except (TypeError, ValueError):
        number = -1.0
    if not 0 <= number < 100:
        raise ConfigError(f"lr_warmup must be a percent of the steps from 0 to 99, got {percent!r}")
    return number / 100


def _model_family(values: dict) -> str:
    if values.get("sdxl") in (True, "true", "True"):
        return "sdxl"
    if values.get("v2") in (True, "true", "True"):
        return "sd2"
    return "auto"


def translate(values: dict) -> tuple[dict, list[str]]:
    """GUI JSON -> (our key -> value, notes). Values stay raw; schema.parse_value types them."""
    ours: dict = {"model_family": _model_family(values)}
    ignored: list[str] = []
    for key, value in values.items():
        target = RENAMED.get(key, key)
        if key in ("v2", "sdxl"):
            continue
        if key == "LoRA_type":
            if value not in ("Standard", *_LOCON_TYPES):
                ignored.append(f"LoRA_type={value!r} (only Standard and LoCon are trained here)")
            continue
        if key == "lr_warmup":  # a percent of the total steps: our lr_warmup_steps below 1 is that fraction
            if not _is_unset(value) and _is_unset(values.get("lr_warmup_steps", 0)):
                ours["lr_warmup_steps"] = _warmup_fraction(value)
            continue
        if key == "additional_parameters":
            continue  # applied last: the GUI appends them to the command line, so they win
        if target == "lr_warmup_steps" and _is_unset(value):
            continue  # 0: the percent in lr_warmup decides
        if target not in FIELDS:
            if not _is_unset(value):
                ignored.append(key)
            continue
        if value == "" and target not in ("reg_data_dir", "logging_dir", "output_dir", "train_data_dir",
                                          "pretrained_model_name_or_path", "resume", "training_comment",
                                          "network_weights", "vae"):
            continue  # the GUI writes "" for a number it leaves unset
        if key == "epoch" and str(values.get("max_train_epochs", "")).strip() not in ("", "0"):
            continue  # sd-scripts lets max_train_epochs win over the GUI's epoch
        if target in ("unet_lr", "text_encoder_lr", "max_train_steps") and _is_unset(value):
            # The GUI writes 0 or "" for "not set": ours means "use the learning rate" / "epochs decide".
            if target == "max_train_steps":
                ours[target] = 0
            continue
        if target == "optimizer_args" and isinstance(value, str):
            value = shlex.split(value)
        if target == "save_precision" and value == "float":
            value = "float"
        ours[target] = value
    ignored += _additional_parameters(str(values.get("additional_parameters") or ""), ours)
    if values.get("LoRA_type", "Standard") not in _LOCON_TYPES:
        ours.pop("conv_dim", None)
        ours.pop("conv_alpha", None)
    notes = [f"kohya_ss settings not used by lorasmith: {', '.join(ignored)}"] if ignored else []
    return ours, notes


def _additional_parameters(text: str, ours: dict) -> list[str]:
    """'--noise_offset 0.05 --foo' from the GUI's free-text box: apply the keys we know."""
    ignored = []
    tokens = shlex.split(text)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not token.startswith("--"):
            continue
        key, _, inline = token[2:].partition("=")
        value: object = inline or True
        if not inline and index < len(tokens) and not tokens[index].startswith("--"):
            value = tokens[index]
            index += 1
        if key in FIELDS:
            ours[key] = value
        else:
            ignored.append(f"--{key}")
    return ignored
