"""A validation-loss-per-epoch chart drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

SIZE = (640, 360)
MARGIN = (60, 20, 20, 40)  # left, top, right, bottom
LINE, POINT, BEST, BASE, AXIS = (30, 90, 200), (30, 90, 200), (220, 40, 40), (140, 140, 140), (0, 0, 0)


def draw_loss_plot(losses: dict[int, float], recommended: int | None, path: str | Path,
                   base_loss: float | None = None) -> Path:
    """Loss against epoch, the recommended epoch circled, the base model's loss as a dashed line."""
    from PIL import Image, ImageDraw, ImageFont

    epochs = sorted(losses)
    values = [losses[e] for e in epochs] + ([base_loss] if base_loss is not None else [])
    low, high = min(values), max(values)
    span = (high - low) or abs(high) or 1.0
    low, high = low - 0.05 * span, high + 0.05 * span
    first, last = epochs[0], epochs[-1] if epochs[-1] != epochs[0] else epochs[0] + 1
    left, top, right, bottom = MARGIN[0], MARGIN[1], SIZE[0] - MARGIN[2], SIZE[1] - MARGIN[3]

    def xy(epoch: float, value: float) -> tuple[float, float]:
        return (left + (epoch - first) / (last - first) * (right - left),
                bottom - (value - low) / (high - low) * (bottom - top))

    image = Image.new("RGB", SIZE, (255, 255, 255))
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS)
    for value in (low, (low + high) / 2, high):
        y = xy(first, value)[1]
        draw.text((left - 4, y), f"{value:.4g}", fill=AXIS, font=font, anchor="rm")
    for epoch in epochs:
        draw.text((xy(epoch, low)[0], bottom + 4), str(epoch), fill=AXIS, font=font, anchor="ma")
    draw.text(((left + right) / 2, SIZE[1] - 4), "epoch", fill=AXIS, font=font, anchor="md")
    draw.text((left, 4), "validation loss", fill=AXIS, font=font, anchor="la")
    if base_loss is not None:
        y = xy(first, base_loss)[1]
        for x in range(left, right, 12):
            draw.line([(x, y), (min(x + 6, right), y)], fill=BASE)
        draw.text((right, y - 2), "base model", fill=BASE, font=font, anchor="rd")
    points = [xy(e, losses[e]) for e in epochs]
    if len(points) > 1:
        draw.line(points, fill=LINE, width=2)
    for x, y in points:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=POINT)
    if recommended in losses:
        x, y = xy(recommended, losses[recommended])
        draw.ellipse([x - 8, y - 8, x + 8, y + 8], outline=BEST, width=2)
        draw.text((x, y - 12), f"epoch {recommended}", fill=BEST, font=font, anchor="md")
    path = Path(path)
    image.save(path)
    return path
