"""Turn a batch of samples into tensors: latents (cached or encoded now), captions, SDXL time ids."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from lorasmith.dataset.batches import Sample
from lorasmith.dataset.captions import prepare_caption
from lorasmith.dataset.images import load_image
from lorasmith.dataset.latent_cache import CachedImage, encode_latents
from lorasmith.models.text import sdxl_time_ids


@dataclass
class TensorBatch:
    latents: torch.Tensor  # [B, 4, h, w]
    captions: list[str]
    weights: torch.Tensor  # per-sample loss weight (prior_loss_weight for regularisation images)
    time_ids: torch.Tensor  # [B, 6] SDXL micro-conditioning (unused by SD1/SD2)
    masks: torch.Tensor | None = None  # [B, 1, h, w] loss masks on the latent grid (masked_loss)


@dataclass
class CaptionRules:
    shuffle: bool = False
    keep_tokens: int = 0
    dropout_rate: float = 0.0
    tag_dropout_rate: float = 0.0
    prefix: str = ""
    suffix: str = ""
    dropout_every_n_epochs: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str = ""

    @classmethod
    def from_config(cls, config) -> "CaptionRules":
        return cls(config.shuffle_caption, config.keep_tokens, config.caption_dropout_rate,
                   config.caption_tag_dropout_rate, config.caption_prefix, config.caption_suffix,
                   config.caption_dropout_every_n_epochs, config.keep_tokens_separator, config.secondary_separator)

    def apply(self, caption: str, rng: random.Random, epoch: int) -> str:
        """The caption a step of epoch `epoch` (from 1) trains on."""
        return prepare_caption(caption, rng, self.shuffle, self.keep_tokens, self.dropout_rate, self.tag_dropout_rate,
                               prefix=self.prefix, suffix=self.suffix, epoch=epoch,
                               dropout_every_n_epochs=self.dropout_every_n_epochs,
                               keep_tokens_separator=self.keep_tokens_separator,
                               secondary_separator=self.secondary_separator)


def collate(samples: list[Sample], bucket: tuple[int, int], rng: random.Random, rules: CaptionRules,
            prior_loss_weight: float, cache: dict[object, CachedImage] | None, vae=None,
            latent_scale: float = 1.0, flip: bool = False, epoch: int = 1, masks=None) -> TensorBatch:
    """Latents come from the cache when there is one, else the VAE encodes the images now.

    `flip` (flip_aug): each sample is mirrored with probability 1/2, drawn from `rng` after the
    captions, so that runs without it draw exactly as before.
    """
    captions = [rules.apply(s.item.caption, rng, epoch) for s in samples]
    mirrored = [flip and rng.random() < 0.5 for _ in samples]
    if cache is not None:
        entries = [cache[s.item.path] for s in samples]
        latents = [e.flipped if m else e.latents for e, m in zip(entries, mirrored)]
    else:
        loaded = [load_image(s.item.path, bucket) for s in samples]
        pixels = torch.stack([p.flip(-1) if m else p for (p, _, _), m in zip(loaded, mirrored)])
        latents = list(encode_latents(vae, pixels, latent_scale).cpu())
        entries = [CachedImage(latent, hw, crop) for latent, (_, hw, crop) in zip(latents, loaded)]
    target_hw = (bucket[1], bucket[0])
    loss_masks = None
    if masks is not None:  # masked_loss: `masks` is a dataset.masks.MaskSource
        loss_masks = torch.stack([masks.for_latents(s.item.path, bucket, tuple(latent.shape[-2:]), m)
                                  for s, latent, m in zip(samples, latents, mirrored)])
    return TensorBatch(
        latents=torch.stack(latents),
        captions=captions,
        weights=torch.tensor([prior_loss_weight if s.is_reg else 1.0 for s in samples]),
        time_ids=torch.stack([sdxl_time_ids(e.original_hw, e.crop_top_left, target_hw) for e in entries]),
        masks=loss_masks,
    )
