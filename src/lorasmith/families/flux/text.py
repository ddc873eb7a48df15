"""Captions to Flux.1's conditioning, as sd-scripts encodes them (library/strategy_flux.py).

CLIP-L reads 77 tokens and gives its pooled output (the transformer's `pooled_projections`); T5-XXL reads
the caption padded and cut to `t5xxl_max_token_length` tokens (512 for dev, 256 for schnell, as BFL's
reference code) and gives its last hidden states (the transformer's `encoder_hidden_states`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorasmith.errors import ConfigError
from lorasmith.models.base import BaseModel

CLIP_LENGTH = 77
T5_MAX_LENGTH = 512  # T5-XXL was trained on 512 tokens, and FluxPipeline refuses more


@dataclass
class FluxText:
    clip_pooled: torch.Tensor  # [B, 768]: CLIP-L's pooler_output
    t5: torch.Tensor  # [B, L, 4096]: T5's last hidden states
    t5_mask: torch.Tensor  # [B, L]: 1 for the caption's tokens, 0 for padding

    # The names of SD's TextEmbeddings(context, pooled), so code written for it reads Flux's too.
    @property
    def context(self) -> torch.Tensor:
        return self.t5

    @property
    def pooled(self) -> torch.Tensor:
        return self.clip_pooled


@dataclass
class FluxTokens:
    clip: torch.Tensor  # [B, 77] CLIP-L ids
    t5: torch.Tensor  # [B, L] T5 ids
    t5_mask: torch.Tensor  # [B, L]


def t5_length(base: BaseModel, t5_max_length: int | None = None) -> int:
    """`t5xxl_max_token_length`, or sd-scripts' default: 512 for dev (it has a guidance embedding), 256 schnell."""
    if t5_max_length is None:
        return 512 if base.unet.config.guidance_embeds else 256
    if not 1 <= t5_max_length <= T5_MAX_LENGTH:
        raise ConfigError(f"t5xxl_max_token_length must be between 1 and {T5_MAX_LENGTH} (512 dev, 256 schnell), "
                          f"got {t5_max_length}")
    return t5_max_length


def tokenize_flux(base: BaseModel, captions: list[str], t5_max_length: int | None = None) -> FluxTokens:
    """Both tokenizers' ids, padded and cut to their lengths (what a text-encoder cache keys on)."""
    clip_tokenizer, t5_tokenizer = base.tokenizers
    clip = clip_tokenizer(captions, max_length=CLIP_LENGTH, padding="max_length", truncation=True,
                          return_tensors="pt")
    t5 = t5_tokenizer(captions, max_length=t5_length(base, t5_max_length), padding="max_length", truncation=True,
                      return_tensors="pt")
    return FluxTokens(clip.input_ids, t5.input_ids, t5.attention_mask)


def encode_flux_tokens(base: BaseModel, tokens: FluxTokens, apply_t5_attn_mask: bool = False) -> FluxText:
    """Run CLIP-L and T5; gradients flow when their LoRA layers are being trained.

    With `apply_t5_attn_mask` T5 does not attend to the padding and the padded positions' states are
    zeroed. sd-scripts instead keeps them and masks them out of the DiT's joint attention as well
    (`txt_attention_mask`); diffusers' FluxTransformer2DModel takes no such mask, so here the padded
    tokens still take part in the transformer's attention, only with zero input states."""
    clip, t5 = base.text_encoders
    clip_device, t5_device = (next(encoder.parameters()).device for encoder in (clip, t5))
    pooled = clip(tokens.clip.to(clip_device)).pooler_output
    mask = tokens.t5_mask.to(t5_device)
    states = t5(tokens.t5.to(t5_device), attention_mask=mask if apply_t5_attn_mask else None).last_hidden_state
    if apply_t5_attn_mask:
        states = states * mask[..., None].to(states.dtype)
    return FluxText(clip_pooled=pooled, t5=states, t5_mask=mask)


def encode_flux_captions(base: BaseModel, captions: list[str], t5_max_length: int | None = None,
                         apply_t5_attn_mask: bool = False) -> FluxText:
    return encode_flux_tokens(base, tokenize_flux(base, captions, t5_max_length), apply_t5_attn_mask)
