"""Decode an image into the tensor a bucket expects: resized to cover it, centre-cropped, in [-1, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lorasmith.dataset.buckets import fit_to_bucket


def load_image(path: Path, bucket: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """(tensor [3, H, W] in [-1, 1], original (height, width), crop (top, left)) for one image."""
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")  # drops alpha and palettes the way sd-scripts does
    original_hw = (image.height, image.width)
    (width, height), (left, top) = fit_to_bucket(image.size, bucket)
    if (width, height) != image.size:
        image = image.resize((width, height), Image.LANCZOS if width < image.width else Image.BICUBIC)
    image = image.crop((left, top, left + bucket[0], top + bucket[1]))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), original_hw, (top, left)
