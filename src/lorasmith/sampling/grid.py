"""X/Y comparison grids: the same prompt and seed across LoRA weights (X) and epochs or prompts (Y).

One PNG with labelled axes (Pillow's default font) and an HTML page beside it that shows the
individual images in a table with their labels, for zooming in on one cell.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorasmith.errors import ToolError
from lorasmith.events import EventSink, FileWritten, Progress, ignore_events
from lorasmith.models.base import BaseModel
from lorasmith.sampling.generate import GenerationRequest, generate_images
from lorasmith.sampling.pnginfo import GenerationParameters, save_png

PAD = 6  # pixels around each label
BACKGROUND, INK = (255, 255, 255), (0, 0, 0)


@dataclass
class GridResult:
    path: Path  # the grid PNG
    html_path: Path
    cells: list[list[Path]]  # [row][column] image files
    x_labels: list[str]
    y_labels: list[str]
    margins: tuple[int, int] = (0, 0)  # (left, top): the label space before the first cell
    cell_size: tuple[int, int] = (0, 0)


def make_grid(base: BaseModel, prompt: str, seed: int, x_weights: list[float], *,
              y_loras: list[str | os.PathLike] | None = None, y_prompts: list[str] | None = None,
              lora: str | os.PathLike | None = None, y_labels: list[str] | None = None,
              output_dir: str | os.PathLike, name: str = "xy_grid", negative_prompt: str = "",
              steps: int = 20, cfg_scale: float = 7.0, width: int = 512, height: int = 512,
              sampler: str = "euler_a", clip_skip: int = 1, lora_dirs: list = (), precision: str = "no",
              events: EventSink = ignore_events) -> GridResult:
    """Write `<output_dir>/<name>.png` and `<name>.html`; the cells go to `<output_dir>/<name>_cells/`.

    Rows are `y_loras` (each LoRA at each weight) or `y_prompts` (each prompt with `lora`,
    if any, at each weight). Every cell uses the same seed, so only the row and column differ.
    """
    if not x_weights:
        raise ToolError("no LoRA weights for the grid's columns; give some, e.g. 0.4,0.6,0.8,1.0")
    rows = _rows(prompt, y_loras, y_prompts, lora)
    labels = y_labels or [Path(r[1]).stem if y_loras else r[0] for r in rows]
    x_labels = [f"weight {w:g}" for w in x_weights]
    out = Path(output_dir).expanduser()
    cells_dir = out / f"{name}_cells"
    cells: list[list[Any]] = []
    total, done = len(rows) * len(x_weights), 0
    for r, (row_prompt, row_lora) in enumerate(rows):
        cells.append([])
        for c, weight in enumerate(x_weights):
            request = GenerationRequest(row_prompt, negative_prompt, width, height, steps, cfg_scale, seed,
                                        sampler, 1, clip_skip)
            loras = [(row_lora, weight)] if row_lora is not None else []
            cells[r].append(generate_images(base, [request], loras, lora_dirs, output_dir=cells_dir,
                                            file_stem=f"r{r:02d}_c{c:02d}", precision=precision)[0])
            done += 1
            events(Progress("grid", done, total))
    picture, margins = compose_grid([[cell.image for cell in row] for row in cells], x_labels, labels)
    params = GenerationParameters(prompt, negative_prompt, steps, cells[0][0].parameters.sampler, cfg_scale, seed,
                                  width, height, cells[0][0].parameters.model, cells[0][0].parameters.clip_skip)
    png = save_png(picture, out / f"{name}.png", params)
    page = write_html(out / f"{name}.html", png, [[cell.path for cell in row] for row in cells], x_labels, labels,
                      prompt, seed)
    events(FileWritten(str(png), "grid"))
    events(FileWritten(str(page), "grid"))
    return GridResult(png, page, [[cell.path for cell in row] for row in cells], x_labels, labels, margins,
                      (width, height))


def _rows(prompt: str, y_loras, y_prompts, lora) -> list[tuple[str, Any]]:
    """[(prompt, LoRA or None)] per row."""
    if y_loras and y_prompts:
        raise ToolError("give the grid's rows as LoRA files or as prompts, not both")
    if y_loras:
        return [(prompt, path) for path in y_loras]
    if y_prompts:
        return [(text, lora) for text in y_prompts]
    raise ToolError("the grid has no rows; give a run folder or LoRA files, or prompts")


def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default()


def label_margins(x_labels: list[str], y_labels: list[str]) -> tuple[int, int]:
    """(left, top) label space: the widest row label, the tallest column label, plus padding."""
    from PIL import Image, ImageDraw

    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), _font()

    def size(text: str) -> tuple[int, int]:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    left = max(size(label)[0] for label in y_labels) + 2 * PAD
    top = max(size(label)[1] for label in x_labels) + 2 * PAD
    return left, top


def compose_grid(images: list[list[Any]], x_labels: list[str], y_labels: list[str]) -> tuple[Any, tuple[int, int]]:
    """One picture: column labels on top, row labels on the left, cells in rows x columns."""
    from PIL import Image, ImageDraw

    cell_w, cell_h = images[0][0].size
    left, top = label_margins(x_labels, y_labels)
    grid = Image.new("RGB", (left + cell_w * len(x_labels), top + cell_h * len(y_labels)), BACKGROUND)
    draw, font = ImageDraw.Draw(grid), _font()
    for c, label in enumerate(x_labels):
        draw.text((left + c * cell_w + cell_w // 2, top // 2), label, fill=INK, font=font, anchor="mm")
    for r, label in enumerate(y_labels):
        draw.text((PAD, top + r * cell_h + cell_h // 2), label, fill=INK, font=font, anchor="lm")
        for c, image in enumerate(images[r]):
            grid.paste(image.convert("RGB").resize((cell_w, cell_h)), (left + c * cell_w, top + r * cell_h))
    return grid, (left, top)


def write_html(path: Path, grid_png: Path, cells: list[list[Path]], x_labels: list[str], y_labels: list[str],
               prompt: str, seed: int) -> Path:
    """A page with the grid and a table of the individual images (links relative to the page)."""
    def rel(target: Path) -> str:
        return html.escape(os.path.relpath(target, path.parent).replace(os.sep, "/"))

    head = "".join(f"<th>{html.escape(label)}</th>" for label in x_labels)
    rows = []
    for label, row in zip(y_labels, cells):
        tds = "".join(f'<td><a href="{rel(p)}"><img src="{rel(p)}" alt="{html.escape(label)}"></a></td>' for p in row)
        rows.append(f"<tr><th>{html.escape(label)}</th>{tds}</tr>")
    page = (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>X/Y grid</title>\n"
        "<style>body{font-family:sans-serif} td img{max-width:256px} th{padding:4px}</style></head><body>\n"
        f"<h1>X/Y grid</h1>\n<p>Prompt: {html.escape(prompt)}<br>Seed: {seed}</p>\n"
        f"<table>\n<tr><th></th>{head}</tr>\n" + "\n".join(rows) + "\n</table>\n"
        f'<p><img src="{rel(grid_png)}" alt="the whole grid"></p>\n</body></html>\n'
    )
    path.write_text(page, encoding="utf-8")
    return path
