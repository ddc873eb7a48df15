"""Captions to text-encoder conditioning, the way each family was trained.

SD1.x/SD2.x: one CLIP encoder; `clip_skip` n takes the n-th last hidden layer and applies the
final layer norm to it (sd-scripts' rule). SDXL: both encoders' penultimate layers side by
side, plus the second encoder's pooled projection; clip_skip does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorasmith.models.base import BaseModel


@dataclass
class TextEmbeddings:
    context: torch.Tensor  # [batch, 77, width]: the UNet's cross-attention input
    pooled: torch.Tensor | None  # [batch, width]: SDXL's pooled text embedding


def tokenize(base: BaseModel, captions: list[str]) -> list[torch.Tensor]:
    """Token ids [batch, 77] for each tokenizer (padded, truncated to 75 tokens + start/end)."""
    return [
        tokenizer(captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                  return_tensors="pt").input_ids
        for tokenizer in base.tokenizers
    ]


def encode_tokens(base: BaseModel, token_ids: list[torch.Tensor], clip_skip: int = 1) -> TextEmbeddings:
    """Run the text encoder(s); gradients flow when their LoRA layers are being trained."""
    device = next(base.text_encoders[0].parameters()).device
    if base.family.name == "sdxl":
        first = base.text_encoders[0](token_ids[0].to(device), output_hidden_states=True)
        second = base.text_encoders[1](token_ids[1].to(device), output_hidden_states=True)
        context = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return TextEmbeddings(context=context, pooled=second.text_embeds)
    encoder = base.text_encoders[0]
    output = encoder(token_ids[0].to(device), output_hidden_states=clip_skip > 1)
    if clip_skip <= 1:
        return TextEmbeddings(context=output.last_hidden_state, pooled=None)
    hidden = output.hidden_states[-clip_skip]
    # transformers 5 flattened CLIPTextModel (no `.text_model`); older releases nest it.
    final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
    return TextEmbeddings(context=final_norm(hidden), pooled=None)


def encode_prompts(base: BaseModel, prompts: list[str], clip_skip: int = 1) -> TextEmbeddings:
    return encode_tokens(base, tokenize(base, prompts), clip_skip)


def sdxl_time_ids(original_hw: tuple[int, int], crop_top_left: tuple[int, int],
                  target_hw: tuple[int, int]) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop corner and target size, (height, width) each."""
    return torch.tensor([*original_hw, *crop_top_left, *target_hw], dtype=torch.float32)
