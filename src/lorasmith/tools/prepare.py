"""Dataset preparation: copy raw images into the kohya layout `<repeats>_<name> <class>/`.

As kohya_ss's "Dataset preparation" tab does: training images go to
`<train_data_dir>/<repeats>_<name> <class>/`, regularisation images to
`<reg_data_dir>/<repeats>_<class>/`. Files are copied, never moved or changed, and a file that
already exists at the destination is never replaced. Repeats can come from a target step count
with the tutorial's arithmetic: steps = images x repeats x epochs / batch size.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lorasmith.dataset.scan import is_subset_name, parse_subset_name
from lorasmith.errors import DatasetError, ToolError
from lorasmith.events import EventSink, FileWritten, Message, Progress, ignore_events
from lorasmith.tools.caption.common import caption_extension as check_extension, caption_path, find_images


def planned_steps(images: int, repeats: int, epochs: int, batch_size: int) -> int:
    """The step count of one folder, as `lorasmith plan` computes it with the kohya_ss GUI's formula."""
    return math.ceil(images * repeats / batch_size * epochs)


def repeats_for_steps(target_steps: int, images: int, epochs: int, batch_size: int) -> int:
    """The repeats that bring `images` closest to `target_steps` (at least 1)."""
    for name, value in (("target_steps", target_steps), ("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ToolError(f"{name} must be at least 1, got {value}")
    return max(1, round(target_steps * batch_size / (images * epochs)))


@dataclass
class PreparedDataset:
    """Where the images went; `train_data_dir`/`reg_data_dir` are the Folders settings to use."""

    train_data_dir: Path
    subset_dir: Path
    repeats: int
    images: int
    copied: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # already at the destination: not replaced
    reg_data_dir: Path | None = None
    reg_subset_dir: Path | None = None
    output_dir: Path | None = None
    logging_dir: Path | None = None

    def lines(self) -> list[str]:
        out = [f"{self.images} images x {self.repeats} repeats in {self.subset_dir}"]
        if self.reg_subset_dir:
            out.append(f"regularisation images in {self.reg_subset_dir}")
        out.append(f"copied {len(self.copied)} file(s)"
                   + (f"; {len(self.kept)} already there, kept as they were" if self.kept else ""))
        out.append(f"train_data_dir = {self.train_data_dir}")
        if self.reg_data_dir:
            out.append(f"reg_data_dir = {self.reg_data_dir}")
        return out


def check_name(value: str, what: str) -> str:
    value = " ".join((value or "").split())
    if not value or any(bad in value for bad in ("/", "\\")) or value in (".", ".."):
        raise ToolError(f"{what} '{value}' cannot name a folder; use a word such as 'mychar'")
    return value


def subset_folder_name(repeats: int, name: str, class_name: str = "") -> str:
    """'10_mychar girl' (kohya's '<repeats>_<instance> <class>'); checked with the scanner's own rule."""
    folder = f"{repeats}_{name} {class_name}".strip()
    try:
        parse_subset_name(folder)
    except DatasetError as error:
        raise ToolError(str(error)) from None
    return folder


def copy_new(source: Path, target: Path) -> bool:
    """Copy bytes and times; False, and nothing written, when `target` exists (checked atomically)."""
    try:
        handle = target.open("xb")
    except FileExistsError:
        return False
    with handle, source.open("rb") as data:
        shutil.copyfileobj(data, handle)
    shutil.copystat(source, target)
    return True


def check_destination(destination: Path, overwrite: bool) -> None:
    if destination.is_dir() and any(destination.iterdir()) and not overwrite:
        raise ToolError(f"'{destination}' already holds files; choose another name or add --overwrite "
                        "(existing files are never replaced)")


def source_images(source: str | Path, events: EventSink) -> list[Path]:
    """The images directly in `source`, the folder prepare copies; sub-folders are said, not copied.

    Copying sub-folders into one flat folder could mix two characters or clash on names, so the
    user is told what is left out (or, when only sub-folders hold images, which to give).
    """
    root = Path(source).expanduser()
    found = find_images(root)  # says when the folder is missing or holds no image at all
    images = [path for path in found if path.parent == root]
    nested = [path for path in found if path.parent != root]
    if not images:
        folders = sorted({path.relative_to(root).parts[0] for path in nested})
        if all(is_subset_name(folder) for folder in folders):
            raise ToolError(f"'{root}' is already laid out for training ({folders[0]}); use it as "
                            "train_data_dir, or give the folder of raw images")
        raise ToolError(f"'{root}' holds no images itself, only in sub-folders ({', '.join(folders[:3])}"
                        f"{', ...' if len(folders) > 3 else ''}); give the folder of one character's images")
    if nested:
        events(Message(f"{len(nested)} image(s) in sub-folders of '{root}' are not copied (e.g. "
                       f"{nested[0].relative_to(root)}); prepare each folder on its own", "warning"))
    return images


def copy_images(images: list[Path], destination: Path, caption_extension: str,
                events: EventSink, task: str) -> tuple[list[Path], list[Path]]:
    """Copy `images` (and their captions) into `destination`: (copied, kept)."""
    destination.mkdir(parents=True, exist_ok=True)
    copied, kept = [], []
    for done, image in enumerate(images, 1):
        caption = caption_path(image, caption_extension)
        for item in [image] + ([caption] if caption.is_file() else []):
            target = destination / item.name
            if item.resolve() != target.resolve() and copy_new(item, target):
                copied.append(target)
            else:
                kept.append(target)
        events(Progress(task, done, len(images)))
    if kept:
        events(Message(f"{len(kept)} file(s) already in {destination} were kept as they were", "warning"))
    events(FileWritten(str(destination), "dataset"))
    return copied, kept


def warn_same_name(parent: Path, folder: str, events: EventSink) -> None:
    """Another '<n>_<same name>' folder beside ours would train the character twice."""
    wanted = folder.split("_", 1)[1]
    for other in sorted(parent.iterdir()) if parent.is_dir() else []:
        if other.is_dir() and other.name != folder and other.name.split("_", 1)[-1] == wanted:
            events(Message(f"'{other}' also trains '{wanted}'; remove one of the two folders", "warning"))


def prepare_dataset(
    source: str | Path,
    train_data_dir: str | Path,
    trigger: str,
    class_name: str = "",
    *,
    repeats: int | None = None,
    target_steps: int | None = None,
    epochs: int = 10,
    batch_size: int = 1,
    reg_images_dir: str | Path | None = None,
    reg_data_dir: str | Path | None = None,
    reg_repeats: int = 1,
    caption_extension: str = ".txt",
    overwrite: bool = False,
    events: EventSink = ignore_events,
) -> PreparedDataset:
    """Copy `source` into `<train_data_dir>/<repeats>_<trigger> <class>/` (and reg images likewise)."""
    if (repeats is None) == (target_steps is None):
        raise ToolError("give either repeats or target_steps (with epochs and batch_size)")
    name, class_name = check_name(trigger, "name"), " ".join((class_name or "").split())
    extension = check_extension(caption_extension)
    images = source_images(source, events)
    image_count = len(images)
    if target_steps is not None:
        repeats = repeats_for_steps(target_steps, image_count, epochs, batch_size)
        steps = planned_steps(image_count, repeats, epochs, batch_size)
        events(Message(f"{image_count} images x {repeats} repeats x {epochs} epochs / batch size {batch_size} "
                       f"= {steps} steps (target {target_steps})"))
    elif repeats < 1:
        raise ToolError(f"repeats must be at least 1, got {repeats}")
    if reg_images_dir and not reg_data_dir:
        raise ToolError("regularisation images need a reg_data_dir (--reg_data_dir DIR) to be copied into")
    if reg_data_dir and not reg_images_dir:
        raise ToolError("a reg_data_dir needs the regularisation images to copy (--reg_src DIR)")
    if reg_images_dir and not class_name:
        raise ToolError("regularisation folders are named after the class; give the class (--class, e.g. girl)")
    train_root = Path(train_data_dir).expanduser()
    if train_root.resolve() == Path(source).expanduser().resolve():
        # Copying a folder into a sub-folder of itself mixes raw and prepared images in one place.
        raise ToolError(f"the training folder '{train_root}' is the folder of raw images; choose a new folder "
                        "(e.g. --train_data_dir img)")
    folder = subset_folder_name(repeats, name, class_name)
    if reg_images_dir:
        reg_root = Path(reg_data_dir).expanduser()
        reg_folder = reg_root / subset_folder_name(reg_repeats, check_name(class_name, "class"))
        reg_images = source_images(reg_images_dir, events)  # a wrong reg folder fails before anything is copied
        check_destination(reg_folder, overwrite)
    check_destination(train_root / folder, overwrite)
    warn_same_name(train_root, folder, events)
    copied, kept = copy_images(images, train_root / folder, extension, events, "copying images")
    result = PreparedDataset(train_root, train_root / folder, repeats, image_count, copied, kept)
    if reg_images_dir:
        reg_copied, reg_kept = copy_images(reg_images, reg_folder, extension, events,
                                              "copying regularisation images")
        result.copied += reg_copied
        result.kept += reg_kept
        result.reg_data_dir, result.reg_subset_dir = reg_root, reg_folder
    for line in result.lines():
        events(Message(line))
    return result


def prepare_project(source: str | Path, project_dir: str | Path, trigger: str, class_name: str = "",
                    **options) -> PreparedDataset:
    """kohya_ss's layout under one folder: img/ (training), reg/, model/ (output_dir), log/ (logging_dir)."""
    project = Path(project_dir).expanduser()
    if options.get("reg_images_dir") and not options.get("reg_data_dir"):
        options["reg_data_dir"] = project / "reg"
    result = prepare_dataset(source, project / "img", trigger, class_name, **options)
    result.output_dir, result.logging_dir = project / "model", project / "log"
    for folder in (result.output_dir, result.logging_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return result
