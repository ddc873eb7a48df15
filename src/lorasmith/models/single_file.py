"""Writing a BaseModel as a single file (original layout) or as a diffusers folder.

Single files stream one tensor at a time (`write_safetensors`), so writing the real SD1.5 in
fp16 from an fp32 model never holds a second copy. They carry the diffusers configs of every
part in the metadata key `lorasmith.configs`, which is how models of any size (the tiny test
models included) load again; v-prediction models also get ComfyUI's empty `v_pred` marker tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lorasmith.models.base import BaseModel
from lorasmith.models.convert import base_model_to_ldm, text_encoder_state_dict
from lorasmith.models.detect import CONFIGS_METADATA_KEY, V_PRED_MARKER
from lorasmith.models.tensor_files import write_safetensors

TEXT_ENCODER_PARTS = ("text_encoder", "text_encoder_2")
TOKENIZER_PARTS = ("tokenizer", "tokenizer_2")


def diffusers_config(model: Any) -> dict:
    """A diffusers model's config as plain JSON data (without diffusers' private bookkeeping)."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    return json.loads(json.dumps(config))


def text_config(text_encoder: Any) -> dict:
    return json.loads(text_encoder.config.to_json_string(use_diff=False))


def architecture_configs(base: BaseModel) -> dict:
    """Everything needed to rebuild `base`'s modules: family, prediction type and each part's config."""
    configs = {
        "family": base.family.name,
        "v_prediction": base.v_prediction,
        "unet": diffusers_config(base.unet),
        "vae": diffusers_config(base.vae),
    }
    for part, encoder in zip(TEXT_ENCODER_PARTS, base.text_encoders):
        configs[part] = text_config(encoder)
    return configs


def save_single_file(base: BaseModel, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `base` as one .safetensors file in the original layout; floating tensors cast to `dtype`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = base_model_to_ldm(base)
    if base.v_prediction:
        tensors[V_PRED_MARKER] = torch.tensor([])
    metadata = {CONFIGS_METADATA_KEY: json.dumps(architecture_configs(base), separators=(",", ":"))}
    write_safetensors(path, tensors, metadata, dtype)
    return path


def save_diffusers_folder(base: BaseModel, path: str | Path) -> Path:
    """Write `base` as a diffusers model folder that diffusers' pipelines (and lorasmith) load."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    base.unet.save_pretrained(path / "unet", safe_serialization=True)
    base.vae.save_pretrained(path / "vae", safe_serialization=True)
    for part, encoder in zip(TEXT_ENCODER_PARTS, base.text_encoders):
        _save_text_encoder(encoder, path / part)
    for part, tokenizer in zip(TOKENIZER_PARTS, base.tokenizers):
        tokenizer.save_pretrained(path / part)
    base.noise_scheduler.save_pretrained(path / "scheduler")
    (path / "model_index.json").write_text(json.dumps(_model_index(base), indent=2) + "\n", "utf-8")
    return path


def _save_text_encoder(encoder: Any, folder: Path) -> None:
    # Weights under the usual "text_model.*" names, which every transformers version reads
    # (transformers 5's own save_pretrained writes its flattened names).
    folder.mkdir(parents=True, exist_ok=True)
    encoder.config.save_pretrained(folder)
    write_safetensors(folder / "model.safetensors", text_encoder_state_dict(encoder), {"format": "pt"})


def _model_index(base: BaseModel) -> dict:
    import diffusers

    sdxl = base.family.name == "sdxl"
    index: dict = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", type(base.noise_scheduler).__name__],
    }
    if sdxl:
        index.update(
            text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
            tokenizer_2=["transformers", "CLIPTokenizer"],
            force_zeros_for_empty_prompt=True,
        )
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    return index
