"""Captions to text-encoder conditioning, the way each family was trained.

SD1.x/SD2.x: one CLIP encoder; `clip_skip` n takes the n-th last hidden layer and applies the
final layer norm to it (sd-scripts' rule). SDXL: both encoders' penultimate layers side by
side, plus the second encoder's pooled projection; clip_skip does not apply.

CLIP reads 75 tokens between its start and end tokens. With `max_token_length` 150 or 225 a
caption is cut into windows of 75 tokens, each encoded on its own between a start and an end
token, and the windows' states are joined (sd-scripts' long captions): start, 75 x n, end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorasmith.models.base import BaseModel


@dataclass
class TextEmbeddings:
    context: torch.Tensor  # [batch, 77, width]: the UNet's cross-attention input
    pooled: torch.Tensor | None  # [batch, width]: SDXL's pooled text embedding


def tokenize(base: BaseModel, captions: list[str], max_token_length: int = 75) -> list[torch.Tensor]:
    """Token ids for each tokenizer, padded and cut at `max_token_length` tokens plus start/end:
    [batch, 77], or [batch, windows, 77] when max_token_length is 150 or 225."""
    ids = []
    for tokenizer in base.tokenizers:
        full = tokenizer(captions, padding="max_length", truncation=True, max_length=max_token_length + 2,
                         return_tensors="pt").input_ids
        ids.append(full if full.shape[1] <= tokenizer.model_max_length else _windows(full, tokenizer))
    return ids


def _windows(full: torch.Tensor, tokenizer) -> torch.Tensor:
    """[batch, n*75 + 2] ids -> [batch, n, 77]: each window <start> 75 ids <end or pad>."""
    body, end, pad = tokenizer.model_max_length - 2, tokenizer.eos_token_id, tokenizer.pad_token_id
    windows = []
    for offset in range(1, full.shape[1] - 1, body):
        window = torch.cat([full[:, :1], full[:, offset : offset + body], full[:, -1:]], dim=1)
        cut_here = (window[:, -2] != end) & (window[:, -2] != pad)  # the caption goes on past this window
        window[cut_here, -1] = end
        window[window[:, 1] == pad, 1] = end  # a window past the caption's end is <start> <end> <pad>...
        windows.append(window)
    return torch.stack(windows, dim=1)


def encode_tokens(base: BaseModel, token_ids: list[torch.Tensor], clip_skip: int = 1) -> TextEmbeddings:
    """Run the text encoder(s); gradients flow when their LoRA layers are being trained."""
    if token_ids[0].dim() == 2:
        return _encode_windows(base, token_ids, clip_skip)
    count = token_ids[0].shape[1]
    text = _encode_windows(base, [ids.flatten(0, 1) for ids in token_ids], clip_skip)
    states = text.context.unflatten(0, (-1, count))  # [batch, windows, 77, width]
    context = torch.cat([states[:, 0, :1], states[:, :, 1:-1].flatten(1, 2), states[:, -1, -1:]], dim=1)
    pooled = None if text.pooled is None else text.pooled.unflatten(0, (-1, count))[:, 0]  # the first window's
    return TextEmbeddings(context=context, pooled=pooled)


def _encode_windows(base: BaseModel, token_ids: list[torch.Tensor], clip_skip: int) -> TextEmbeddings:
    """[batch, 77] ids -> states [batch, 77, width] (and SDXL's pooled embedding)."""
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


def windows_needed(base: BaseModel, texts: list[str]) -> int:
    """Windows of 75 tokens the longest of `texts` fills (at least one)."""
    tokenizer = base.tokenizers[0]
    body = tokenizer.model_max_length - 2
    longest = max(len(ids) - 2 for ids in tokenizer(texts).input_ids)
    return max(1, -(-longest // body))


def encode_prompts(base: BaseModel, prompts: list[str], clip_skip: int = 1, max_token_length: int = 75) -> TextEmbeddings:
    return encode_tokens(base, tokenize(base, prompts, max_token_length), clip_skip)


def sdxl_time_ids(original_hw: tuple[int, int], crop_top_left: tuple[int, int],
                  target_hw: tuple[int, int]) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop corner and target size, (height, width) each."""
    return torch.tensor([*original_hw, *crop_top_left, *target_hw], dtype=torch.float32)
