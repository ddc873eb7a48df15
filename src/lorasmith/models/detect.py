"""Which model family a checkpoint is, from tensor names and shapes alone (no weights read).

Flux.1 files and folders are told by `lorasmith.families.flux.detect` and reported as "flux".

Single files: SDXL has `conditioner.embedders.*` and the UNet's `label_emb` (size conditioning);
SD2 has OpenCLIP under `cond_stage_model.model.*` (or, UNet only, cross-attention width 1024);
SD1 has CLIP under `cond_stage_model.transformer.*` (width 768). Diffusers folders tell it by their
configs. A file lorasmith wrote carries its architecture in the metadata key `lorasmith.configs`,
which is how tiny models reload; other files use the configs that ship with lorasmith.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from lorasmith.errors import ModelError
from lorasmith.models.ldm_layout import UNET_PREFIX

CONFIGS_METADATA_KEY = "lorasmith.configs"
V_PRED_MARKER = "v_pred"  # ComfyUI saves an empty tensor under this name in v-prediction models
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

_CONTEXT_DIM_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_LORA_MARKERS = ("lora_unet_", "lora_te", ".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", "hada_w1_a")


def detect_family(path: str | Path, *, allow_pickle: bool = False) -> tuple[str, dict]:
    """(family name, details) of the checkpoint at `path`: a .safetensors file, a pickle or a diffusers folder.

    details: "layout" ("single_file" | "diffusers"), "v_prediction" (True if the file says so, else
    None: unknown), "configs" (architecture configs if the file or folder carries them, else None),
    plus "context_dim" and "in_channels" for single files.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"base model not found: {path}; check the path (pretrained_model_name_or_path)")
    if path.is_dir():
        return detect_diffusers_folder(path)
    if path.suffix.lower() == ".safetensors":
        from lorasmith.models.tensor_files import SafetensorsFile

        with SafetensorsFile(path) as file:
            return family_from_tensors(file.shapes(), file.metadata(), path.name)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        from lorasmith.models.tensor_files import load_pickle

        tensors = load_pickle(path, allow_pickle)
        return family_from_tensors({k: tuple(v.shape) for k, v in tensors.items()}, {}, path.name)
    raise ModelError(f"{path.name}: unknown model file type; give a .safetensors or .ckpt file or a diffusers folder")


def family_from_tensors(shapes: Mapping[str, tuple], metadata: Mapping[str, str], name: str) -> tuple[str, dict]:
    """Detect the family from a single file's tensor names and shapes (and lorasmith's metadata)."""
    from lorasmith.families.flux.detect import flux_details  # here: the families package imports torch

    flux = flux_details(shapes, name)
    if flux is not None:  # Flux.1 files have no UNet: their own detector says what they hold
        return "flux", flux
    configs = _metadata_configs(metadata, name)
    unet_keys = [k for k in shapes if k.startswith(UNET_PREFIX)]
    if not unet_keys:
        raise ModelError(_no_unet_message(shapes, name))
    details: dict = {
        "layout": "single_file",
        "v_prediction": True if V_PRED_MARKER in shapes or (configs or {}).get("v_prediction") else None,
        "configs": configs,
        "context_dim": _context_dim(shapes),
        "in_channels": _in_channels(shapes),
    }
    keys = shapes.keys()
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise ModelError(f"{name} is an SDXL refiner, which cannot be trained here; give an SDXL base checkpoint")
    if any(k.startswith("conditioner.embedders.") for k in keys) or UNET_PREFIX + "label_emb.0.0.weight" in shapes:
        family = "sdxl"
    elif any(k.startswith("cond_stage_model.model.") for k in keys):
        family = "sd2"
    elif any(k.startswith("cond_stage_model.transformer.") for k in keys):
        family = "sd1"
    elif configs and configs.get("family"):
        family = configs["family"]
    elif details["context_dim"] in _CONTEXT_DIM_FAMILY:
        family = _CONTEXT_DIM_FAMILY[details["context_dim"]]
    else:
        raise ModelError(f"cannot tell the Stable Diffusion family of {name}; pass --family sd1, sd2 or sdxl")
    return family, details


def _metadata_configs(metadata: Mapping[str, str], name: str) -> dict | None:
    text = metadata.get(CONFIGS_METADATA_KEY)
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ModelError(f"{name}: the '{CONFIGS_METADATA_KEY}' metadata is not valid JSON; save the model again") from None


def _no_unet_message(shapes: Mapping[str, tuple], name: str) -> str:
    if any(marker in key for key in shapes for marker in _LORA_MARKERS):
        return f"{name} is a LoRA, not a base model; give a full Stable Diffusion checkpoint as the base model"
    return f"{name} holds no Stable Diffusion UNet ('{UNET_PREFIX}*' tensors); give a full SD1, SD2 or SDXL checkpoint"


def _context_dim(shapes: Mapping[str, tuple]) -> int | None:
    """Width of the text the UNet attends to: the input size of any cross-attention key projection."""
    for key, shape in shapes.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return int(shape[1])
    return None


def _in_channels(shapes: Mapping[str, tuple]) -> int | None:
    shape = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    return int(shape[1]) if shape else None


# --- diffusers folders -----------------------------------------------------------------------

DIFFUSERS_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def detect_diffusers_folder(path: Path) -> tuple[str, dict]:
    from lorasmith.families.flux.detect import flux_folder

    flux = flux_folder(path)
    if flux is not None:
        return "flux", {**flux, "v_prediction": False}
    if not (path / "model_index.json").is_file() and not (path / "unet" / "config.json").is_file():
        raise ModelError(
            f"{path} is a folder but not a diffusers model (no model_index.json or unet/config.json); "
            "give a .safetensors file or a diffusers model folder"
        )
    configs = {part: read_config_json(path / part / "config.json") for part in DIFFUSERS_PARTS}
    configs = {part: config for part, config in configs.items() if config is not None}
    for part in ("unet", "vae", "text_encoder"):
        if part not in configs:
            raise ModelError(f"{path} has no {part}/config.json; give a complete diffusers model folder")
    scheduler = read_config_json(path / "scheduler" / "scheduler_config.json") or {}
    unet = configs["unet"]
    if "text_encoder_2" in configs or unet.get("addition_embed_type") == "text_time":
        family = "sdxl"
    elif configs["text_encoder"].get("hidden_act") == "gelu" or unet.get("cross_attention_dim") == 1024:
        family = "sd2"  # OpenCLIP uses gelu; OpenAI CLIP (SD1) uses quick_gelu
    else:
        family = "sd1"
    v_prediction = True if scheduler.get("prediction_type") == "v_prediction" else None
    return family, {"layout": "diffusers", "v_prediction": v_prediction, "configs": configs}


def read_config_json(path: Path) -> dict | None:
    """A folder's JSON config, None when absent; a damaged one is a ModelError saying what to do."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"cannot read {path} ({error}); repair or download the model again") from None
