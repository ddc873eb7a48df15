"""cache_text_encoder_outputs(_to_disk): each caption encoded once, in memory or in files beside the images.

A file is sd-scripts' name for it (`<image>_te_outputs.npz`, Flux `<image>_flux_te.npz`) and holds the
caption it encodes and a fingerprint of the text encoders and of the settings that change their output
(clip_skip, token lengths, T5 mask, weighted captions), so a file is reused only while both are unchanged.
The tensors are stored in fp32 (numpy has no bf16) and come back in the dtype they were encoded in.
A file sd-scripts wrote (no fingerprint of ours) is left alone; that caption is encoded in memory.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

SUFFIXES = {"flux": "_flux_te.npz"}
DEFAULT_SUFFIX = "_te_outputs.npz"


def captions_at_a_time(config: Any) -> int:
    """text_encoder_batch_size, or by default (0) train_batch_size, as sd-scripts encodes them."""
    return config.text_encoder_batch_size or config.train_batch_size


def te_cache_path(image: Path, family_name: str) -> Path:
    """sd-scripts' name: the image's path without its extension, and the family's suffix."""
    return image.with_name(image.stem + SUFFIXES.get(family_name, DEFAULT_SUFFIX))


def encoders_fingerprint(encoders: list, config: Any) -> str:
    """A short id of the text encoders (every tensor's shape, dtype, sum and absolute sum) and the settings."""
    digest = hashlib.sha256()
    settings = (config.clip_skip, config.max_token_length, config.t5xxl_max_token_length,
                config.apply_t5_attn_mask, config.weighted_captions)
    digest.update(repr(settings).encode())
    with torch.no_grad():
        for encoder in encoders:
            tensors = list(encoder.parameters())
            digest.update(repr([(tuple(t.shape), str(t.dtype)) for t in tensors]).encode())
            sums = torch.stack([torch.stack([t.float().sum(), t.float().abs().sum()]).cpu() for t in tensors])
            digest.update(sums.numpy().tobytes())
    return digest.hexdigest()[:16]


def _read(path: Path, caption: str, fingerprint: str) -> tuple | None:
    """(context, pooled) from a file of ours for this caption and these encoders; None otherwise."""
    try:
        with np.load(path) as data:
            if "lorasmith" not in data or str(data["lorasmith"]) != fingerprint or str(data["caption"]) != caption:
                return None
            dtype = getattr(torch, str(data["dtype"]))
            pooled = torch.from_numpy(data["pooled"]).to(dtype) if "pooled" in data else None
            return torch.from_numpy(data["context"]).to(dtype), pooled
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def _foreign(path: Path) -> bool:
    """A cache file another tool (sd-scripts) wrote: ours carry a 'lorasmith' fingerprint."""
    try:
        with np.load(path) as data:
            return "lorasmith" not in data
    except (OSError, ValueError):
        return False  # unreadable: ours to write again


def _write(path: Path, caption: str, fingerprint: str, context: torch.Tensor, pooled: torch.Tensor | None) -> None:
    extra = {} if pooled is None else {"pooled": pooled.detach().float().cpu().numpy()}
    temp = path.with_name(path.name + ".tmp.npz")
    np.savez(temp, context=context.detach().float().cpu().numpy(), caption=np.array(caption),
             lorasmith=np.array(fingerprint), dtype=np.array(str(context.dtype).removeprefix("torch.")), **extra)
    temp.replace(path)


def cache_text_outputs(samples: list, rules: Any, encode: Callable[[list[str]], Any], base: Any, config: Any,
                       device: Any, to_disk: bool) -> tuple[dict, int]:
    """{caption as trained: (context, pooled)} for every sample; returns it and how many came from files.

    `samples` are the epoch's `dataset.batches.Sample`s; `encode(captions)` gives their TextEmbeddings."""
    # captions that never vary still get their prefix, suffix and separator: cache them as trained
    caption_of = {s.item.path: rules.apply(s.item.caption, random.Random(0), 1) for s in samples}
    fingerprint = encoders_fingerprint(list(base.text_encoders), config) if to_disk else ""
    cache: dict[str, tuple] = {}
    fresh: set = set()  # images whose file holds their caption's outputs
    for image, caption in caption_of.items() if to_disk else ():
        found = _read(te_cache_path(image, base.family.name), caption, fingerprint)
        if found is not None:
            fresh.add(image)
            cache.setdefault(caption, tuple(None if t is None else t.to(device) for t in found))
    missing = sorted({c for c in caption_of.values() if c not in cache})
    at_a_time = captions_at_a_time(config)
    with torch.no_grad():
        for start in range(0, len(missing), at_a_time):
            chunk = missing[start: start + at_a_time]
            text = encode(chunk)
            for index, caption in enumerate(chunk):
                cache[caption] = (text.context[index], None if text.pooled is None else text.pooled[index])
    for image, caption in caption_of.items() if to_disk else ():
        path = te_cache_path(image, base.family.name)
        if image not in fresh and not (path.exists() and _foreign(path)):
            _write(path, caption, fingerprint, *cache[caption])
    return cache, len(fresh)
