"""Scan training folders in the kohya layout: `<train_data_dir>/<repeats>_<name>/image + caption`.

Pure file-system work: no torch, no image decoding beyond a header check, so `lorasmith plan`
and the GUI's live step count stay instant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lorasmith.errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_SUBSET_NAME = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    caption_path: Path | None  # None when the caption came from the folder name


@dataclass
class Subset:
    folder: Path
    name: str  # the part after '<repeats>_', e.g. "mychar girl"
    repeats: int
    images: list[ImageItem] = field(default_factory=list)

    @property
    def samples_per_epoch(self) -> int:
        return len(self.images) * self.repeats


@dataclass
class Dataset:
    root: Path
    subsets: list[Subset]
    is_reg: bool = False

    @property
    def image_count(self) -> int:
        return sum(len(s.images) for s in self.subsets)

    @property
    def samples_per_epoch(self) -> int:
        return sum(s.samples_per_epoch for s in self.subsets)

    def items(self) -> list[tuple[Subset, ImageItem]]:
        return [(subset, item) for subset in self.subsets for item in subset.images]


def parse_subset_name(folder_name: str) -> tuple[int, str]:
    """'10_mychar girl' -> (10, 'mychar girl'); anything else is a DatasetError showing the form."""
    match = _SUBSET_NAME.match(folder_name)
    if not match or int(match.group(1)) < 1:
        raise DatasetError(
            f"folder '{folder_name}' must be named '<repeats>_<name>', e.g. '{_suggested_name(folder_name)}' "
            "(repeats: how many times each image is seen per epoch, 1 or more)"
        )
    return int(match.group(1)), match.group(2)


def is_subset_name(folder_name: str) -> bool:
    """Whether a folder is named as a kohya training folder ('<repeats>_<name>')."""
    try:
        parse_subset_name(folder_name)
    except DatasetError:
        return False
    return True


def _suggested_name(folder_name: str) -> str:
    """The name the user probably meant: 'mychar_10' -> '10_mychar', '10 mychar' -> '10_mychar', '0_x' -> '10_x'."""
    for pattern, repeats, name in ((r"^(.+?)[_ -](\d+)$", 2, 1), (r"^(\d+)[ -](.+)$", 1, 2), (r"^(0+)_(.+)$", 0, 2)):
        match = re.match(pattern, folder_name)
        if match:
            count = match.group(repeats) if repeats and int(match.group(repeats)) > 0 else "10"
            return f"{count}_{match.group(name)}"
    return f"10_{folder_name}"


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def read_caption(image: Path, caption_extension: str, fallback: str) -> tuple[str, Path | None]:
    """The caption beside the image (same stem), else the folder's name part, as sd-scripts does."""
    caption_path = image.with_suffix(caption_extension)
    if caption_path.is_file():
        text = caption_path.read_text(encoding="utf-8", errors="replace").strip()
        # sd-scripts reads the first line only; multi-line captions are usually an editing slip.
        text = text.splitlines()[0].strip() if text else ""
        return text, caption_path
    return fallback, None


def scan_dataset(folder: str | Path, caption_extension: str = ".txt", is_reg: bool = False) -> Dataset:
    """Read `<repeats>_<name>` sub-folders of `folder`; errors name the folder and what to do."""
    kind = "regularisation" if is_reg else "training"
    root = Path(folder).expanduser()
    if not str(folder).strip():
        raise DatasetError(f"no {kind} folder given; set {'reg_data_dir' if is_reg else 'train_data_dir'}")
    if not root.is_dir():
        raise DatasetError(f"{kind} folder '{root}' does not exist; create it or fix the path")
    if not caption_extension.startswith("."):
        caption_extension = "." + caption_extension
    subsets = []
    loose_images = [p.name for p in sorted(root.iterdir()) if is_image(p)]
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        repeats, name = parse_subset_name(sub.name)
        images = [
            ImageItem(path, *read_caption(path, caption_extension, name))
            for path in sorted(sub.iterdir())
            if is_image(path)
        ]
        subsets.append(Subset(folder=sub, name=name, repeats=repeats, images=images))
    if not any(s.images for s in subsets):
        hint = (
            f"; its {len(loose_images)} images must go into a sub-folder such as '{root / '10_mychar'}'"
            if loose_images
            else f"; put images ({', '.join(IMAGE_EXTENSIONS)}) in a sub-folder such as '10_mychar'"
        )
        raise DatasetError(f"{kind} folder '{root}' has no images in '<repeats>_<name>' sub-folders{hint}")
    return Dataset(root=root, subsets=[s for s in subsets if s.images], is_reg=is_reg)


def find_unreadable_images(dataset: Dataset) -> list[tuple[Path, str]]:
    """Every image Pillow cannot open and decode, with the reason, found in one pass."""
    from PIL import Image

    bad = []
    for _, item in dataset.items():
        try:
            with Image.open(item.path) as image:
                image.load()  # full decode: catches truncated files that verify() lets through
        except Exception as error:  # Pillow raises many kinds; all mean "cannot train on this"
            bad.append((item.path, f"{type(error).__name__}: {error}".splitlines()[0]))
    return bad


def check_images_readable(dataset: Dataset) -> None:
    """Raise one DatasetError listing every unreadable image, before any training work starts."""
    bad = find_unreadable_images(dataset)
    if bad:
        listing = "; ".join(f"{path} ({reason})" for path, reason in bad)
        raise DatasetError(f"{len(bad)} unreadable image(s), fix or remove them: {listing}")
