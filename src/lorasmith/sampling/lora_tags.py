"""AUTOMATIC1111's `<lora:name:weight>` prompt syntax: take the tags out and find their files.

`<lora:mychar:0.8>` asks for `mychar.safetensors` at weight 0.8; `<lora:mychar>` means weight 1.
A third number (A1111's separate UNet weight) is accepted and ignored: we merge one weight.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lorasmith.errors import ToolError

_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")
LORA_SUFFIXES = (".safetensors",)


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """(prompt without the tags, [(name, weight)]); a weight that is not a number is a ToolError."""
    found: list[tuple[str, float]] = []

    def take(match: re.Match) -> str:
        name, weight = match.group(1).strip(), (match.group(2) or "").strip()
        try:
            found.append((name, float(weight) if weight else 1.0))
        except ValueError:
            raise ToolError(f"'{match.group(0)}' has weight {weight!r}; write it as <lora:{name}:0.8>") from None
        return ""

    cleaned = _TAG.sub(take, prompt)
    cleaned = re.sub(r"\s*,(\s*,)+", ",", cleaned)  # "a, <lora:x:1>, b" leaves no empty tag
    return re.sub(r"\s{2,}", " ", cleaned).strip().strip(",").strip(), found


def resolve_lora(name: str, places: list[str | os.PathLike]) -> Path:
    """The LoRA file called `name`: a given file with that stem, or `<folder>/<name>.safetensors`."""
    candidates = []
    for place in places:
        place = Path(place).expanduser()
        if place.is_file():
            if place.stem == name or place.name == name:
                return place
        elif place.is_dir():
            candidates += [place / name] + [place / f"{name}{suffix}" for suffix in LORA_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if not places:  # the README's first try: a tag, but no folder to look in
        raise ToolError(f"no LoRA file named '{name}': no folder to look in; give the folder holding "
                        f"{name}.safetensors with --lora_dir (e.g. your output_dir), or its path with --lora")
    where = ", ".join(str(p) for p in places)
    raise ToolError(f"no LoRA file named '{name}' in {where}; give its folder or path with --lora_dir/--lora")
