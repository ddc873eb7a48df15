"""Draw the small character dataset that ships with lorasmith for `lorasmith demo`.

"smithy": a cartoon girl with orange hair, blue eyes and a green shirt, drawn with Pillow in
different poses, sizes and backgrounds, with kohya-style tag captions. Run once; the images
are committed under src/lorasmith/demo_data/. Deterministic: the same files every time.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "src" / "lorasmith" / "demo_data" / "10_smithy"
BACKGROUNDS = {"white": (240, 240, 240), "blue": (120, 160, 230), "pink": (235, 170, 200),
               "yellow": (240, 220, 120), "grey": (150, 150, 150), "green": (140, 200, 140)}


def draw_character(size, background, cx, cy, scale, tilt, smile) -> Image.Image:
    image = Image.new("RGB", size, BACKGROUNDS[background])
    d = ImageDraw.Draw(image)
    r = int(22 * scale)
    # shirt
    d.rectangle([cx - int(1.2 * r), cy + int(0.9 * r), cx + int(1.2 * r), cy + int(3 * r)], fill=(40, 150, 70))
    # hair behind the head
    d.ellipse([cx - int(1.25 * r), cy - int(1.3 * r) + tilt, cx + int(1.25 * r), cy + int(1.1 * r) + tilt],
              fill=(235, 120, 30))
    # face
    d.ellipse([cx - r, cy - r + tilt, cx + r, cy + r + tilt], fill=(250, 215, 185))
    # fringe
    d.pieslice([cx - r, cy - int(1.2 * r) + tilt, cx + r, cy + int(0.3 * r) + tilt], 180, 360, fill=(235, 120, 30))
    # eyes
    for side in (-1, 1):
        ex = cx + side * int(0.4 * r)
        ey = cy + int(0.15 * r) + tilt
        d.ellipse([ex - int(0.17 * r), ey - int(0.2 * r), ex + int(0.17 * r), ey + int(0.2 * r)], fill=(40, 90, 220))
    # mouth
    mouth = [cx - int(0.3 * r), cy + int(0.4 * r) + tilt, cx + int(0.3 * r), cy + int(0.7 * r) + tilt]
    d.arc(mouth, 0, 180, fill=(150, 40, 40), width=max(1, r // 10)) if smile else d.line(
        [mouth[0], mouth[1] + r // 6, mouth[2], mouth[1] + r // 6], fill=(150, 40, 40), width=max(1, r // 10))
    return image


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    shots = [
        ((128, 128), "white", "portrait"), ((128, 128), "blue", "portrait"), ((128, 128), "pink", "upper body"),
        ((128, 128), "yellow", "portrait"), ((128, 192), "grey", "upper body"), ((128, 192), "green", "upper body"),
        ((192, 128), "blue", "upper body"), ((128, 128), "green", "portrait"),
    ]
    for index, (size, background, view) in enumerate(shots):
        scale = 1.5 if view == "portrait" else 1.0
        cx = size[0] // 2 + rng.randint(-10, 10)
        cy = size[1] // 2 - (0 if view == "portrait" else 15) + rng.randint(-6, 6)
        smile = index % 2 == 0
        image = draw_character(size, background, cx, cy, scale, rng.randint(-4, 4), smile)
        stem = f"smithy_{index:02d}"
        image.save(OUT / f"{stem}.png", optimize=True)
        tags = ["smithy", "1girl", "orange hair", "blue eyes", "green shirt", view, f"{background} background",
                "smile" if smile else "closed mouth"]
        (OUT / f"{stem}.txt").write_text(", ".join(tags) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
