"""Weighted captions (sd-scripts' `weighted_captions`): "(word:1.3)", "(word)", "[word]" in a caption.

The AUTOMATIC1111 syntax: "(text)" weighs its tokens by 1.1, "[text]" by 1 / 1.1, "(text:1.3)" by 1.3;
they nest and multiply; "\\(" and "\\)" are plain brackets. The caption is tokenized piece by piece, and the
text encoder's output for each token is multiplied by its weight, as sd-scripts does; the start, end and
padding tokens keep weight 1.
"""

from __future__ import annotations

import re

import torch

_TOKEN = re.compile(r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
ROUND, SQUARE = 1.1, 1 / 1.1


def parse_attention(text: str) -> list[tuple[str, float]]:
    """'a (red:1.2) [hat]' -> [('a ', 1.0), ('red', 1.2), (' ', 1.0), ('hat', 0.909...)]; unclosed brackets
    still count, as in AUTOMATIC1111."""
    pieces: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _TOKEN.finditer(text):
        token, number = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            pieces.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif number is not None and round_open:
            scale(round_open.pop(), float(number))
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            pieces.append([token, 1.0])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    merged: list[tuple[str, float]] = []
    for piece, weight in pieces:  # neighbours of one weight read as one piece
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


def weighted_ids(tokenizer, caption: str, max_token_length: int) -> tuple[list[int], list[float]]:
    """<start> tokens <end> <pad>... ids (max_token_length + 2 of them) and a weight for each."""
    ids, weights = [], []
    for piece, weight in parse_attention(caption):
        tokens = tokenizer(piece, add_special_tokens=False).input_ids if piece.strip() else []
        ids += tokens
        weights += [weight] * len(tokens)
    ids, weights = ids[:max_token_length], weights[:max_token_length]
    pad = max_token_length - len(ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [pad_id] * pad
    return ids, [1.0, *weights, 1.0] + [1.0] * pad


def tokenize_weighted(base, captions: list[str], max_token_length: int = 75) -> tuple[list[torch.Tensor],
                                                                                       torch.Tensor]:
    """(token ids per tokenizer, laid out as `models.text.tokenize` lays them, and [batch, tokens] weights
    for the encoder's output)."""
    from lorasmith.models.text import _windows

    ids, weights = [], None
    for tokenizer in base.tokenizers:
        rows = [weighted_ids(tokenizer, caption, max_token_length) for caption in captions]
        full = torch.tensor([row for row, _ in rows])
        ids.append(full if full.shape[1] <= tokenizer.model_max_length else _windows(full, tokenizer))
        if weights is None:  # one weight per position: the tokenizers of SDXL's two encoders split alike
            weights = torch.tensor([w for _, w in rows])
    return ids, weights
