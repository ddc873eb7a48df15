"""A tiny Flux.1 written as the files users have, for tests: the BFL single file (bf16, ComfyUI's prefix,
or fp8) with its separate AE, CLIP-L and T5 files, or a diffusers folder.

Each file keeps the real one's names and dtypes: the DiT in bf16 (fp8: every tensor float8_e4m3fn),
`ae.safetensors` in float32 with the LDM names, CLIP-L and T5 in fp16
(fp8 layout: T5's 2-d weights float8_e4m3fn). `as_stored` gives the base model as those files hold
it (every tensor rounded through its file dtype), which is what loading them must give back.
The CLIP-L file says its head count in `lorasmith.configs` metadata (no shape tells it); every other
size is read from the shapes, as for the real files.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import torch

from lorasmith.families.flux.keys import diffusers_to_bfl
from lorasmith.models.base import BaseModel
from lorasmith.models.convert import text_encoder_state_dict, vae_to_ldm
from lorasmith.models.detect import CONFIGS_METADATA_KEY
from lorasmith.models.ldm_layout import VAE_PREFIX
from lorasmith.models.tensor_files import write_safetensors

LAYOUTS = ("bfl", "comfy", "fp8", "diffusers")
COMFY_PREFIX = "model.diffusion_model."
_PARTS = ("transformer", "ae", "clip_l", "t5xxl")


def file_dtype(layout: str, part: str, tensor: torch.Tensor) -> torch.dtype:
    """The dtype `part`'s `tensor` has in a file of `layout`."""
    if layout == "diffusers":
        return torch.float32
    # Real fp8 DiT files hold every tensor in float8_e4m3fn, biases and norm scales too (ComfyUI's
    # flux1-dev-fp8 header, AUTOMATIC1111/stable-diffusion-webui#16484); T5's fp8 here: its 2-d weights.
    if layout == "fp8" and (part == "transformer" or (part == "t5xxl" and tensor.dim() == 2)):
        return torch.float8_e4m3fn
    return {"transformer": torch.bfloat16, "ae": torch.float32}.get(part, torch.float16)


def write_tiny_flux(base: BaseModel, folder: str | Path, layout: str) -> dict[str, Path]:
    """Write `base` (a tiny Flux) in `layout` under `folder`: {"model", "ae", "clip_l", "t5xxl"} -> path
    ("model" only for "diffusers")."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "diffusers":
        return {"model": _write_diffusers(base, folder / "flux1-tiny")}
    prefix = COMFY_PREFIX if layout == "comfy" else ""
    clip, t5 = base.text_encoders
    tensors = {
        "transformer": {prefix + k: v for k, v in diffusers_to_bfl(base.unet.state_dict()).items()},
        "ae": _ae_tensors(base.vae),
        "clip_l": text_encoder_state_dict(clip),
        "t5xxl": t5.state_dict(),
    }
    names = {"transformer": "flux1-tiny.safetensors", "ae": "ae.safetensors",
             "clip_l": "clip_l.safetensors", "t5xxl": "t5xxl.safetensors"}
    metadata = {"clip_l": {CONFIGS_METADATA_KEY: json.dumps({"text_encoder": _text_config(clip)})}}
    paths = {}
    for part in _PARTS:
        path = folder / names[part]
        stored = {k: v.detach().to(file_dtype(layout, part, v)) for k, v in tensors[part].items()}
        write_safetensors(path, stored, metadata.get(part))
        paths["model" if part == "transformer" else part] = path
    return paths


def as_stored(base: BaseModel, layout: str) -> BaseModel:
    """A copy of `base` whose weights went through the dtypes of `layout`'s files (back in float32); the
    tokenizers and the scheduler are shared with `base`."""
    clip, t5 = (copy.deepcopy(encoder) for encoder in base.text_encoders)
    stored = replace(base, unet=copy.deepcopy(base.unet), vae=copy.deepcopy(base.vae), text_encoders=[clip, t5])
    modules = {"transformer": stored.unet, "ae": stored.vae, "clip_l": clip, "t5xxl": t5}
    with torch.no_grad():
        for part, module in modules.items():
            for tensor in module.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(tensor.to(file_dtype(layout, part, tensor)).float())
    return stored


def _ae_tensors(vae) -> dict[str, torch.Tensor]:
    # The LDM names without SD's "first_stage_model.", mid-block attention as 1x1 convolutions, as ae.safetensors.
    ldm = vae_to_ldm(vae.state_dict(), dict(vae.config))
    return {k.removeprefix(VAE_PREFIX): v for k, v in ldm.items()}


def _text_config(encoder) -> dict:
    return json.loads(encoder.config.to_json_string(use_diff=False))


def _write_diffusers(base: BaseModel, path: Path) -> Path:
    """The folder layout of black-forest-labs/FLUX.1-dev: a part per subfolder, transformer and T5 sharded."""
    import diffusers

    clip, t5 = base.text_encoders
    path.mkdir(parents=True, exist_ok=True)
    base.unet.save_pretrained(path / "transformer", safe_serialization=True, max_shard_size="100KB")
    base.vae.save_pretrained(path / "vae", safe_serialization=True)
    # CLIP under the usual "text_model.*" names, as the hub's folders (transformers 5 writes flattened ones)
    (path / "text_encoder").mkdir(exist_ok=True)
    clip.config.save_pretrained(path / "text_encoder")
    write_safetensors(path / "text_encoder" / "model.safetensors", text_encoder_state_dict(clip), {"format": "pt"})
    t5.save_pretrained(path / "text_encoder_2", safe_serialization=True, max_shard_size="2MB")
    for part, tokenizer in zip(("tokenizer", "tokenizer_2"), base.tokenizers, strict=True):
        tokenizer.save_pretrained(path / part)
    base.noise_scheduler.save_pretrained(path / "scheduler")
    index = {
        "_class_name": "FluxPipeline", "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", "utf-8")
    return path
