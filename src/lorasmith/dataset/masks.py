"""Loss masks, as sd-scripts' masked_loss reads them: a mask image per training image, or its alpha channel.

Masks live in `conditioning_data_dir`, named as the images (any image extension): at the same place
relative to the folder (`cond/10_mychar/a.png` for `img/10_mychar/a.png`) or flat (`cond/a.png`).
White trains, black is left out, grey in between. A mask gets the resize and centre crop of its image,
then is averaged down to the latent grid; the per-pixel loss is multiplied by it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lorasmith.dataset.buckets import fit_to_bucket

MASK_EXTENSIONS = (".png", ".webp", ".jpg", ".jpeg", ".bmp")


def mask_path_for(image: Path, train_data_dir: Path, conditioning_data_dir: Path) -> Path | None:
    """The mask file of `image`, or None when there is none."""
    try:
        relative = image.relative_to(train_data_dir).with_suffix("")
    except ValueError:
        relative = Path(image.stem)
    for stem in (conditioning_data_dir / relative, conditioning_data_dir / image.stem):
        for extension in MASK_EXTENSIONS:
            candidate = stem.with_suffix(extension)
            if candidate.is_file():
                return candidate
    return None


def load_mask(path: Path, bucket: tuple[int, int], from_alpha: bool = False) -> torch.Tensor:
    """[1, H, W] in [0, 1] for the bucket, cropped as `dataset.images.load_image` crops the image."""
    from PIL import Image

    with Image.open(path) as opened:
        if from_alpha:
            mask = opened.convert("RGBA").getchannel("A")
        else:
            mask = opened.convert("L")
    (width, height), (left, top) = fit_to_bucket(mask.size, bucket)
    if (width, height) != mask.size:
        mask = mask.resize((width, height), Image.BILINEAR)
    mask = mask.crop((left, top, left + bucket[0], top + bucket[1]))
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """The mask averaged down to the latent grid ([1, h, w])."""
    return F.interpolate(mask[None], size=latent_hw, mode="area")[0]


class MaskSource:
    """Masks for the training images, read once per image and bucket."""

    def __init__(self, train_data_dir: str, conditioning_data_dir: str = "", alpha_mask: bool = False) -> None:
        self.train_data_dir = Path(train_data_dir).expanduser()
        self.folder = Path(conditioning_data_dir).expanduser() if conditioning_data_dir else None
        self.alpha_mask = alpha_mask
        self._cache: dict = {}

    def file_for(self, image: Path) -> Path | None:
        if self.folder is None:
            return image  # the image's own alpha channel
        return mask_path_for(image, self.train_data_dir, self.folder)

    def missing(self, images: list[Path]) -> list[Path]:
        return [image for image in images if self.file_for(image) is None]

    def for_latents(self, image: Path, bucket: tuple[int, int], latent_hw: tuple[int, int],
                    mirrored: bool = False) -> torch.Tensor:
        key = (image, bucket, latent_hw)
        if key not in self._cache:
            path = self.file_for(image)
            if path is None:  # regularisation images have no mask: all of them trains
                self._cache[key] = torch.ones(1, *latent_hw)
            else:
                self._cache[key] = latent_mask(load_mask(path, bucket, from_alpha=self.folder is None), latent_hw)
        mask = self._cache[key]
        return mask.flip(-1) if mirrored else mask
