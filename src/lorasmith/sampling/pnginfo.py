"""AUTOMATIC1111's `parameters` PNG text chunk: write it with each image, read it back.

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: name, Lora hashes: "a: 0123abcd4567"

The last line is comma-separated `Key: value` pairs; a value holding a comma or colon is
quoted, as A1111 does, so that web UIs and image browsers read our files like theirs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PNG_KEY = "parameters"
_NEGATIVE = "Negative prompt:"
_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


@dataclass
class GenerationParameters:
    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    sampler: str = "Euler a"  # A1111's label
    cfg_scale: float = 7.0
    seed: int = 0
    width: int = 512
    height: int = 512
    model: str = ""
    clip_skip: int = 1
    lora_hashes: dict[str, str] = field(default_factory=dict)  # LoRA name -> first 12 of its sshs hash
    extra: dict[str, str] = field(default_factory=dict)  # other keys, kept as text

    def to_text(self) -> str:
        return format_parameters(self)


def _number(value: float) -> str:
    return f"{value:g}"


def _quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n') else value


def format_parameters(p: GenerationParameters) -> str:
    pairs: list[tuple[str, str]] = [
        ("Steps", str(p.steps)), ("Sampler", p.sampler), ("CFG scale", _number(p.cfg_scale)),
        ("Seed", str(p.seed)), ("Size", f"{p.width}x{p.height}"),
    ]
    if p.model:
        pairs.append(("Model", p.model))
    if p.clip_skip > 1:
        pairs.append(("Clip skip", str(p.clip_skip)))
    if p.lora_hashes:
        pairs.append(("Lora hashes", ", ".join(f"{name}: {h}" for name, h in p.lora_hashes.items())))
    pairs += list(p.extra.items())
    lines = [p.prompt]
    if p.negative_prompt:
        lines.append(f"{_NEGATIVE} {p.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quoted(str(value))}" for key, value in pairs))
    return "\n".join(lines)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value[1:-1]
    return value


def parse_pairs(line: str) -> dict[str, str]:
    return {key.strip(): _unquote(value) for key, value in _PAIR.findall(line)}


def parse_parameters(text: str) -> GenerationParameters:
    """The inverse of `format_parameters`; keys we do not know are kept in `extra`."""
    lines = text.strip("\n").split("\n")
    pairs = parse_pairs(lines[-1]) if len(lines) > 1 or "Steps:" in lines[-1] else {}
    body = lines[:-1] if pairs else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE):].strip()
        (negative if in_negative else prompt).append(line)
    p = GenerationParameters(prompt="\n".join(prompt), negative_prompt="\n".join(negative))
    _apply_pairs(p, pairs)
    return p


def _apply_pairs(p: GenerationParameters, pairs: dict[str, str]) -> None:
    simple = {"Steps": ("steps", int), "Sampler": ("sampler", str), "CFG scale": ("cfg_scale", float),
              "Seed": ("seed", int), "Model": ("model", str), "Clip skip": ("clip_skip", int)}
    for key, value in pairs.items():
        if key in simple:
            name, kind = simple[key]
            setattr(p, name, kind(value))
        elif key == "Size":
            width, _, height = value.partition("x")
            p.width, p.height = int(width), int(height)
        elif key == "Lora hashes":
            p.lora_hashes = parse_pairs(value)
        else:
            p.extra[key] = value


def save_png(image: Any, path: str | Path, parameters: GenerationParameters) -> Path:
    """Save a PIL image as PNG with the `parameters` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_KEY, parameters.to_text())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=info)
    return path


def read_parameters(path: str | Path) -> GenerationParameters | None:
    """The parameters stored in a PNG, or None when it has none."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.info.get(PNG_KEY) or getattr(image, "text", {}).get(PNG_KEY)
    return parse_parameters(text) if text else None
