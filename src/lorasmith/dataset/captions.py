"""Caption handling at training time, as sd-scripts does it: prefix and suffix, caption dropout, tag shuffling
with kept tokens (or a keep-tokens separator), tag dropout and the secondary separator."""

from __future__ import annotations

import random


def split_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def fixed_caption(caption: str, prefix: str = "", suffix: str = "") -> str:
    """The caption with sd-scripts' caption_prefix / caption_suffix, joined with a space."""
    if prefix:
        caption = f"{prefix} {caption}"
    if suffix:
        caption = f"{caption} {suffix}"
    return caption


def prepare_caption(caption: str, rng: random.Random, shuffle: bool = False, keep_tokens: int = 0,
                    dropout_rate: float = 0.0, tag_dropout_rate: float = 0.0, *, prefix: str = "", suffix: str = "",
                    epoch: int = 0, dropout_every_n_epochs: int = 0, keep_tokens_separator: str = "",
                    secondary_separator: str = "") -> str:
    """The caption a step trains on, in sd-scripts' order: prefix and suffix added, maybe dropped (at a rate,
    or every N-th epoch, `epoch` counting from 1), tags maybe shuffled and some left out, then the secondary
    separator read as a comma.

    The first `keep_tokens` comma-separated tags (usually the trigger word) never move and are never left out;
    with `keep_tokens_separator` in the caption ("mychar, 1girl ||| tags ||| suffix tags") the part before it
    (and after a second one) stays instead.
    """
    caption = fixed_caption(caption, prefix, suffix)
    dropped = dropout_rate > 0 and rng.random() < dropout_rate
    if dropped or (dropout_every_n_epochs > 0 and epoch % dropout_every_n_epochs == 0):
        return ""
    if shuffle or tag_dropout_rate:
        head, rest, tail = _fixed_and_flexible(caption, keep_tokens, keep_tokens_separator)
        if shuffle:
            rng.shuffle(rest)
        if tag_dropout_rate:
            rest = [tag for tag in rest if rng.random() >= tag_dropout_rate]
        caption = ", ".join(head + rest + tail)
    if secondary_separator:
        caption = caption.replace(secondary_separator, ",")
    return caption


def _fixed_and_flexible(caption: str, keep_tokens: int, separator: str) -> tuple[list, list, list]:
    """(tags that stay in front, tags that may move or drop, tags that stay at the end)."""
    if separator and separator in caption:
        front, flexible = caption.split(separator, 1)
        back = ""
        if separator in flexible:
            flexible, back = flexible.split(separator, 1)
        return split_tags(front), split_tags(flexible), split_tags(back)
    tags = split_tags(caption)
    return tags[:keep_tokens], tags[keep_tokens:], []


def tag_frequency(captions_by_folder: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """sd-scripts' ss_tag_frequency: folder name -> tag -> count."""
    frequency: dict[str, dict[str, int]] = {}
    for folder, captions in captions_by_folder.items():
        counts = frequency.setdefault(folder, {})
        for caption in captions:
            for tag in split_tags(caption):
                counts[tag] = counts.get(tag, 0) + 1
    return frequency
