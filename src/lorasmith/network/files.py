"""Saving and loading kohya LoRA files (.safetensors with string metadata), as sd-scripts does.

Saving is atomic: the bytes go to a temporary file in the target folder, which is then
renamed over the target, so a crash never leaves a half-written LoRA behind. Like sd-scripts
we add two hashes that A1111's additional-networks extension and model sites use:

- `sshs_model_hash`: sha256 of the file's bytes after the header, for the file saved with
  only the `ss_*` metadata (the tensor bytes do not depend on the metadata, but we hash
  exactly that file to stay faithful to sd-scripts' definition);
- `sshs_legacy_hash`: the first 8 hex digits of the sha256 of 64 KiB at offset 1 MiB of it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from lorasmith.config.files import default_file_mode
from lorasmith.errors import ModelError

SAVE_PRECISIONS = ("fp16", "bf16", "float")


def save_dtype(precision: str) -> Any:
    """The torch dtype of a save precision: "fp16", "bf16" or "float"."""
    import torch

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}
    if precision not in dtypes:
        raise ModelError(f"unknown save precision '{precision}'; use one of: {', '.join(SAVE_PRECISIONS)}")
    return dtypes[precision]


def model_hashes(data: bytes) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of a safetensors file's bytes."""
    header_length = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_length:]).hexdigest()
    legacy_hash = hashlib.sha256(data[0x100000:0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_lora_file(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str],
                   precision: str | None = None) -> Path:
    """Write `tensors` with `metadata` (+ the sshs hashes) to `path`, atomically.

    `precision` ("fp16", "bf16", "float") converts floating tensors first; None keeps them.
    """
    from safetensors.torch import save

    if precision is not None:
        dtype = save_dtype(precision)
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ModelError(f"LoRA metadata '{bad[0]}' must be text; convert the value with str()")
    training_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    model_hash, legacy_hash = model_hashes(save(tensors, training_only))
    data = save(tensors, {**metadata, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash})
    return _write_atomically(Path(path), data)


def _write_atomically(path: Path, data: bytes) -> Path:
    folder = path.parent
    if not folder.is_dir():
        raise ModelError(f"cannot save the LoRA: folder '{folder}' does not exist; create it or pick another output_dir")
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, default_file_mode())  # mkstemp makes it owner-only; a LoRA is meant to be shared
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise
    return path


def read_lora_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a LoRA file, without reading its tensors."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as file:
            return dict(file.metadata() or {})
    except Exception as error:  # safetensors raises several kinds for damaged files
        raise _corrupt(path, error) from None


def load_lora_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a kohya-named LoRA or LyCORIS file; ModelError if it is missing, damaged or not one."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = dict(file.metadata() or {})
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except Exception as error:
        raise _corrupt(path, error) from None
    from lorasmith.network.deltas import MODULE_MARKERS, module_deltas

    if not any(k.endswith(MODULE_MARKERS) for k in tensors):
        raise _not_a_lora(path)
    module_deltas(tensors)  # names the first tensor of a kind we cannot use
    return tensors, metadata


def check_start_weights(path: str | os.PathLike, network_dim: int, conv_dim: int, train_unet: bool,
                        train_text_encoder: bool) -> None:
    """network_weights: a LoRA that fits the network about to be trained, told from its header alone.

    Checked before a model loads, so a rank that differs is said in a second, not after minutes.
    """
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as file:
            downs = {k: file.get_slice(k).get_shape() for k in file.keys() if k.endswith(".lora_down.weight")}
    except Exception as error:
        raise _corrupt(path, error) from None
    if not downs:
        raise _not_a_lora(path)
    # A 3x3 kernel is LoCon's conv rank; linears and SD1's 1x1 proj_in/proj_out carry network_dim.
    conv = {shape[0] for shape in downs.values() if len(shape) == 4 and tuple(shape[2:]) != (1, 1)}
    linear = {shape[0] for shape in downs.values() if len(shape) != 4 or tuple(shape[2:]) == (1, 1)}
    found = f"network_weights '{path.name}'"
    if linear and linear != {network_dim}:
        raise ModelError(f"{found} has rank {min(linear)}; set network_dim {min(linear)} to train it further")
    if conv != ({conv_dim} if conv_dim else set()):
        raise ModelError(f"{found} has " + (f"conv rank {min(conv)}; set conv_dim {min(conv)}" if conv
                                            else "no 3x3 convolution layers; set conv_dim 0"))
    parts = {"UNet": any(k.startswith("lora_unet_") for k in downs),
             "text encoder": any(k.startswith("lora_te") for k in downs)}
    for part, wanted, setting in (("UNet", train_unet, "network_train_text_encoder_only"),
                                  ("text encoder", train_text_encoder, "network_train_unet_only")):
        if parts[part] != wanted:
            raise ModelError(f"{found} {'has no' if wanted else 'also has'} {part} weights; "
                             f"set {setting} {'true' if wanted else 'false'} as it was trained")


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"LoRA file '{path}' does not exist; check the path")
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise ModelError(f"'{path}' is a pickle file; lorasmith reads LoRAs only as .safetensors, convert it first")
    return path


def _not_a_lora(path: Path) -> ModelError:
    return ModelError(f"'{path}' holds no kohya LoRA weights (no .lora_down/.lora_up or LyCORIS tensors); "
                      "pick a LoRA file, not a checkpoint or embedding (a diffusers-format LoRA: lorasmith lora convert)")


def _corrupt(path: Path, error: Exception) -> ModelError:
    return ModelError(f"'{path}' is not a readable safetensors file ({type(error).__name__}); "
                      "it may be truncated: save or download it again")
