"""Encode every training image with the VAE once, in memory or in .npz files reused across runs.

A disk cache entry lives in a hidden `.lorasmith-cache` folder beside the image (the scanner
skips hidden folders) and is reused only while the image file (size and modification time),
the bucket and the VAE are the same; anything else is encoded again. We take the mean of the
VAE's latent distribution, so cached and uncached runs see identical latents. With flip_aug the
mirrored image is encoded too (a VAE's latents of a mirrored image are not the mirrored latents).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lorasmith.dataset.images import load_image

CACHE_FOLDER = ".lorasmith-cache"


@dataclass
class CachedImage:
    latents: torch.Tensor  # [4, h, w], already multiplied by the family's latent scale
    original_hw: tuple[int, int]
    crop_top_left: tuple[int, int]
    flipped: torch.Tensor | None = None  # latents of the mirrored image (flip_aug)


def vae_fingerprint(vae) -> str:
    """A short id of the VAE's weights, so a cache made with another VAE is never reused."""
    digest = hashlib.sha256()
    for tensor in (vae.encoder.conv_in.weight, vae.quant_conv.weight if vae.quant_conv is not None else None):
        if tensor is not None:
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_path(image: Path, bucket: tuple[int, int]) -> Path:
    return image.parent / CACHE_FOLDER / f"{image.name}.{bucket[0]}x{bucket[1]}.npz"


def _source_stamp(image: Path) -> np.ndarray:
    stat = image.stat()
    return np.array([stat.st_size, stat.st_mtime_ns], dtype=np.int64)


def _read_disk_entry(image: Path, bucket: tuple[int, int], fingerprint: str, flip: bool) -> CachedImage | None:
    path = cache_path(image, bucket)
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            if str(data["vae"]) != fingerprint or not np.array_equal(data["stamp"], _source_stamp(image)):
                return None
            if flip and "flipped" not in data:
                return None  # made by a run without flip_aug
            flipped = torch.from_numpy(data["flipped"].copy()) if flip else None
            return CachedImage(torch.from_numpy(data["latents"].copy()), tuple(data["original_hw"]),
                               tuple(data["crop"]), flipped)
    except (OSError, KeyError, ValueError):  # a damaged cache entry is simply made again
        return None


def _write_disk_entry(image: Path, bucket: tuple[int, int], fingerprint: str, entry: CachedImage) -> None:
    path = cache_path(image, bucket)
    path.parent.mkdir(exist_ok=True)
    temp = path.with_suffix(".tmp.npz")
    extra = {} if entry.flipped is None else {"flipped": entry.flipped.numpy()}
    np.savez(temp, latents=entry.latents.numpy(), original_hw=np.array(entry.original_hw),
             crop=np.array(entry.crop_top_left), stamp=_source_stamp(image), vae=np.array(fingerprint), **extra)
    temp.replace(path)


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, scale: float) -> torch.Tensor:
    """Pixels [B, 3, H, W] in [-1, 1] -> scaled latents [B, C, H/8, W/8] (C: 4, or Flux's 16).

    A VAE held in fp16 (mixed precision on a GPU) encodes in fp32 when its config asks for it
    (`force_upcast`, as diffusers' pipelines do when decoding): SDXL's VAE overflows in fp16 and
    would give NaN latents. It is put back in fp16 afterwards.
    """
    parameter = next(vae.parameters())
    upcast = parameter.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        distribution = vae.encode(pixels.to(parameter.device, next(vae.parameters()).dtype)).latent_dist
        shift = getattr(vae.config, "shift_factor", None) or 0.0  # Flux's AE centres its latents first
        return (distribution.mode().float() - shift) * scale
    finally:
        if upcast:
            vae.to(torch.float16)


def cache_latents(vae, bucket_of: dict[Path, tuple[int, int]], scale: float, to_disk: bool = False,
                  batch_size: int = 4, progress=None, flip: bool = False) -> dict[Path, CachedImage]:
    """Latents for every image in `bucket_of` (path -> bucket), and of its mirror image when `flip`.

    `progress(done, total)` is optional.
    """
    fingerprint = vae_fingerprint(vae) if to_disk else ""
    cached: dict[Path, CachedImage] = {}
    todo: dict[tuple[int, int], list[Path]] = {}
    for image, bucket in bucket_of.items():
        entry = _read_disk_entry(image, bucket, fingerprint, flip) if to_disk else None
        if entry is not None:
            cached[image] = entry
        else:
            todo.setdefault(bucket, []).append(image)
    total, done = len(bucket_of), len(cached)
    for bucket, images in todo.items():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            loaded = [load_image(path, bucket) for path in chunk]
            pixels = torch.stack([pixels for pixels, _, _ in loaded])
            latents = encode_latents(vae, pixels, scale).cpu()
            mirrored = encode_latents(vae, pixels.flip(-1), scale).cpu() if flip else [None] * len(chunk)
            for path, (_, original_hw, crop), latent, flipped in zip(chunk, loaded, latents, mirrored):
                cached[path] = CachedImage(latent.clone(), original_hw, crop,
                                           None if flipped is None else flipped.clone())
                if to_disk:
                    _write_disk_entry(path, bucket, fingerprint, cached[path])
            done += len(chunk)
            if progress:
                progress(done, total)
    return cached
