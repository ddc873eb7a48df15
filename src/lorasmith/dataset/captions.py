"""Caption handling at training time: tag shuffling with kept tokens, and caption dropout."""

from __future__ import annotations

import random


def split_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def prepare_caption(caption: str, rng: random.Random, shuffle: bool = False, keep_tokens: int = 0,
                    dropout_rate: float = 0.0, tag_dropout_rate: float = 0.0) -> str:
    """The caption a step trains on: maybe dropped, maybe with its tags shuffled, some left out.

    The first `keep_tokens` comma-separated tags (usually the trigger word) never move and are
    never left out, as in sd-scripts (which shuffles first, then drops tags).
    """
    if dropout_rate > 0 and rng.random() < dropout_rate:
        return ""
    if not shuffle and not tag_dropout_rate:
        return caption
    tags = split_tags(caption)
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    if shuffle:
        rng.shuffle(rest)
    if tag_dropout_rate:
        rest = [tag for tag in rest if rng.random() >= tag_dropout_rate]
    return ", ".join(kept + rest)


def tag_frequency(captions_by_folder: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """sd-scripts' ss_tag_frequency: folder name -> tag -> count."""
    frequency: dict[str, dict[str, int]] = {}
    for folder, captions in captions_by_folder.items():
        counts = frequency.setdefault(folder, {})
        for caption in captions:
            for tag in split_tags(caption):
                counts[tag] = counts.get(tag, 0) + 1
    return frequency
