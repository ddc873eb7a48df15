"""Aspect-ratio buckets, with sd-scripts' arithmetic so that users see the same buckets.

Each image trains at the bucket whose aspect ratio is closest to its own; every bucket's
area is at most the max resolution's area and its sides are multiples of `step`.
"""

from __future__ import annotations

import math


def bucket_resolutions(max_wh: tuple[int, int], min_reso: int = 256, max_reso: int = 1024,
                       step: int = 64) -> list[tuple[int, int]]:
    """All (width, height) buckets for a max resolution, sorted by aspect ratio."""
    max_area = max_wh[0] * max_wh[1]
    buckets = {(max_wh[0] // step * step, max_wh[1] // step * step)}
    width = min_reso
    while width <= max_reso:
        height = min(max_reso, (max_area // width) // step * step)
        if height >= min_reso:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return sorted(buckets, key=lambda wh: (wh[0] / wh[1], wh[0]))


def assign_bucket(image_wh: tuple[int, int], buckets: list[tuple[int, int]],
                  no_upscale: bool = False, step: int = 64) -> tuple[int, int]:
    """The bucket for an image: nearest aspect ratio; with `no_upscale`, never larger than the image."""
    width, height = image_wh
    aspect = width / height
    if no_upscale:
        max_area = max(w * h for w, h in buckets)
        if width * height <= max_area:
            # Keep the image's own size, trimmed to multiples of `step` (as sd-scripts does).
            return max(step, width // step * step), max(step, height // step * step)
        scale = math.sqrt(max_area / (width * height))
        return max(step, int(width * scale) // step * step), max(step, int(height * scale) // step * step)
    return min(buckets, key=lambda wh: (abs(wh[0] / wh[1] - aspect), -wh[0] * wh[1]))


def fit_to_bucket(image_wh: tuple[int, int], bucket: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Resize size that covers the bucket, and the (left, top) of a centre crop to it."""
    width, height = image_wh
    scale = max(bucket[0] / width, bucket[1] / height)
    resized = (max(bucket[0], round(width * scale)), max(bucket[1], round(height * scale)))
    return resized, ((resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2)
