"""WD14-style ONNX taggers (SmilingWolf's wd-v1-4 / wd-v3 models): booru tags per image.

A model folder holds `model.onnx` and `selected_tags.csv` (tag_id,name,category,count; category
9 = rating, 4 = character, 0 = general). The models expect what their own code feeds them:
RGB with transparency on white, padded to a square with white, resized to the model's input
side, channels in BGR order, float32 0-255, NHWC. Outputs are sigmoid probabilities per tag.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from lorasmith.errors import ToolError
from lorasmith.events import EventSink, Message, ignore_events
from lorasmith.tools.caption.common import (
    KAOMOJIS, CaptionSummary, WriteOptions, as_tag_list, join_tags, run_captioner, tag_key,
)

RATING, GENERAL, CHARACTER = 9, 0, 4


@dataclass(frozen=True)
class TagLabel:
    name: str  # as written in captions: underscores are spaces, kaomojis kept
    category: int


@dataclass(frozen=True)
class Thresholds:
    general: float = 0.35
    character: float = 0.85

    def __post_init__(self) -> None:
        for name, value in (("general_threshold", self.general), ("character_threshold", self.character)):
            if not 0.0 <= value <= 1.0:
                raise ToolError(f"{name} must be between 0 and 1, got {value}")


def caption_tag(name: str) -> str:
    """'long_hair' -> 'long hair'; '^_^' stays '^_^'."""
    return name if name in KAOMOJIS else name.replace("_", " ")


def read_labels(csv_path: Path) -> list[TagLabel]:
    """The model's tags in output order, from selected_tags.csv."""
    try:
        with csv_path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [TagLabel(caption_tag(row["name"]), int(row["category"])) for row in rows]
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise ToolError(f"cannot read tags from '{csv_path}' ({error}); it needs columns name and category") from None


class Wd14Tagger:
    """An onnxruntime session over a tagger folder; `tag(images)` answers tag lists."""

    def __init__(self, model_dir: str | Path):
        folder = Path(model_dir).expanduser()
        model_file = folder / "model.onnx" if folder.is_dir() else folder
        labels_file = model_file.parent / "selected_tags.csv"
        if not model_file.is_file() or not labels_file.is_file():
            raise ToolError(f"'{folder}' must be a folder with model.onnx and selected_tags.csv (a WD14 tagger)")
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's own exception types are not importable by name
            raise ToolError(f"cannot load '{model_file}' with onnxruntime: {str(error).splitlines()[0]}") from None
        self.labels = read_labels(labels_file)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        batch, height, width, channels = model_input.shape
        if channels != 3 or not isinstance(height, int) or height != width:
            raise ToolError(f"'{model_file}' is not a WD14 tagger: its input is {model_input.shape}, "
                            "expected [batch, side, side, 3]")
        self.size = height
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        outputs = self.session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(self.labels):
            raise ToolError(f"'{labels_file}' lists {len(self.labels)} tags but the model answers {outputs}; "
                            "use the csv that came with the model")

    def preprocess(self, image) -> np.ndarray:
        """One RGB PIL image -> [side, side, 3] float32 BGR 0-255, padded to a square with white."""
        from PIL import Image

        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        if side != self.size:
            square = square.resize((self.size, self.size), Image.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1]

    def probabilities(self, images: list) -> np.ndarray:
        """[len(images), tags]; models with a fixed batch size are run in chunks of it."""
        batch = np.ascontiguousarray(np.stack([self.preprocess(image) for image in images]))
        if self.fixed_batch is None:
            return self.session.run(None, {self.input_name: batch})[0]
        chunks = []
        for start in range(0, len(batch), self.fixed_batch):
            chunk = batch[start:start + self.fixed_batch]
            missing = self.fixed_batch - len(chunk)
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], missing, axis=0)]) if missing else chunk
            chunks.append(self.session.run(None, {self.input_name: padded})[0][:len(chunk)])
        return np.concatenate(chunks)

    def select(self, probabilities: np.ndarray, thresholds: Thresholds, exclude: Sequence[str] = ()) -> list[str]:
        """Character tags then general tags, each by confidence; ratings and excluded tags left out."""
        excluded = {tag_key(tag) for tag in exclude}
        picked: list[tuple[int, float, str]] = []
        for label, probability in zip(self.labels, probabilities):
            if label.category == CHARACTER and probability >= thresholds.character:
                picked.append((0, -float(probability), label.name))
            elif label.category not in (RATING, CHARACTER) and probability >= thresholds.general:
                picked.append((1, -float(probability), label.name))
        # sorted() is stable, so equal confidences keep the csv's order
        return [name for _, _, name in sorted(picked, key=lambda p: p[:2]) if tag_key(name) not in excluded]

    def tag(self, images: list, thresholds: Thresholds, exclude: Sequence[str] = ()) -> list[list[str]]:
        return [self.select(row, thresholds, exclude) for row in self.probabilities(images)]


def caption_wd14(
    folder: str | Path,
    model: str | Path,
    *,
    general_threshold: float = 0.35,
    character_threshold: float = 0.85,
    exclude_tags: str | Sequence[str] = (),
    trigger: str = "",
    batch_size: int = 8,
    caption_extension: str = ".txt",
    overwrite: bool = False,
    append: bool = False,
    recursive: bool = True,
    events: EventSink = ignore_events,
) -> CaptionSummary:
    """Tag every image under `folder` and write `<stem><caption_extension>` beside it."""
    options = WriteOptions(caption_extension, overwrite, append, trigger.strip())
    thresholds = Thresholds(general_threshold, character_threshold)
    tagger = Wd14Tagger(model)
    exclude = as_tag_list(exclude_tags)
    events(Message(f"WD14 tagger: {len(tagger.labels)} tags, {tagger.size}x{tagger.size} input; thresholds "
                   f"general {thresholds.general}, character {thresholds.character}"))

    def caption_batch(images: list) -> list[str]:
        return [join_tags(tags) for tags in tagger.tag(images, thresholds, exclude)]

    return run_captioner(folder, caption_batch, options, batch_size=batch_size, recursive=recursive,
                         task="WD14 tagging", events=events)
