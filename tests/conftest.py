"""Shared fixtures: small image datasets in the kohya layout, written by the tests themselves."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest

# Tests never reach a model hub; keep libraries from trying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The planner's measurements go to a folder of this run's, never the user's ~/.cache (subprocesses inherit it).
os.environ.setdefault("LORASMITH_CACHE_DIR", tempfile.mkdtemp(prefix="lorasmith-test-cache-"))


def write_image(path: Path, size=(64, 64), seed: int = 0) -> Path:
    """A small RGB picture with some structure (not flat), so hashes and VAEs see content."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        draw.ellipse([x0, y0, x0 + size[0] // 3, y0 + size[1] // 3], fill=tuple(rng.randrange(256) for _ in range(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def make_dataset(tmp_path):
    """make_dataset({"10_mychar": 3}, captions=True, size=(64, 64)) -> the training folder."""

    def make(layout: dict, captions: bool = True, size=(64, 64), root: Path | None = None) -> Path:
        root = root or tmp_path / "train"
        seed = 0
        for folder, count in layout.items():
            for index in range(count):
                seed += 1
                image = write_image(root / folder / f"img{index:02d}.png", size, seed)
                if captions:
                    image.with_suffix(".txt").write_text(f"mychar, 1girl, tag{index}", encoding="utf-8")
        return root

    return make
