"""What every captioner shares: finding images, composing tag lists, writing caption files safely.

Captions sit beside their image as `<image stem><caption_extension>` (sd-scripts' rule). A
caption writer never touches an image: an extension that names an image format is refused,
and only files that sit beside an image with the same stem are ever read or written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from lorasmith.dataset.scan import IMAGE_EXTENSIONS, is_image
from lorasmith.errors import ToolError
from lorasmith.events import EventSink, FileWritten, Message, Progress, ignore_events

# Booru "kaomoji" tags whose underscore is part of the face; SmilingWolf's taggers keep them as is.
KAOMOJIS = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
    "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
})


# --- folders and caption files ---


def caption_extension(extension: str) -> str:
    """'.txt' from 'txt' or '.txt'; an image extension is refused so a caption never replaces a picture."""
    extension = (extension or "").strip()
    if not extension or extension == ".":
        raise ToolError("the caption extension is empty; use .txt (or .caption)")
    if not extension.startswith("."):
        extension = "." + extension
    if extension.lower() in IMAGE_EXTENSIONS:
        raise ToolError(f"caption extension '{extension}' is an image format; use .txt (or .caption)")
    return extension


def find_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Every image in `folder` (and its sub-folders, hidden ones skipped), sorted; ToolError if none."""
    root = Path(folder).expanduser()
    if root.is_file():
        raise ToolError(f"'{root}' is a file; give the folder that holds your images ('{root.parent}')")
    if not root.is_dir():
        raise ToolError(f"folder '{root}' does not exist; give the folder that holds your images")
    candidates = root.rglob("*") if recursive else root.iterdir()
    images = sorted(
        path for path in candidates
        if is_image(path) and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    if not images:
        where = " or its sub-folders" if recursive else ""
        raise ToolError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in '{root}'{where}; check the folder")
    return images


def caption_path(image: Path, extension: str) -> Path:
    return image.with_suffix(extension)


def read_text(path: Path) -> str | None:
    """A caption file's text (stripped), or None when there is no such file."""
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8", errors="replace").strip()


def write_text(path: Path, text: str) -> None:
    """Write a caption (one line, no trailing newline, as kohya's taggers write them)."""
    path.write_text(text.strip(), encoding="utf-8")


def open_rgb(path: Path):
    """The picture as RGB, transparency flattened onto white (as the WD14 taggers' own code does)."""
    from PIL import Image

    with Image.open(path) as opened:
        opened.load()
        if opened.mode in ("RGBA", "LA") or (opened.mode == "P" and "transparency" in opened.info):
            rgba = opened.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
        return opened.convert("RGB")


# --- tags ---


def split_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in (caption or "").split(",") if tag.strip()]


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def tag_key(tag: str) -> str:
    """How two spellings of a tag are matched: 'Long_Hair' == 'long hair'; kaomojis stay themselves."""
    tag = tag.strip()
    return tag if tag in KAOMOJIS else tag.replace("_", " ").casefold()


def as_tag_list(tags: str | Sequence[str] | None) -> list[str]:
    """'a, b' or ['a', 'b'] -> ['a', 'b']."""
    if not tags:
        return []
    if isinstance(tags, str):
        return split_tags(tags)
    return [tag.strip() for tag in tags if tag and tag.strip()]


def dedupe(tags: Iterable[str]) -> list[str]:
    """Tags in order, each once (the first spelling wins)."""
    seen: set[str] = set()
    out = []
    for tag in tags:
        if tag_key(tag) not in seen:
            seen.add(tag_key(tag))
            out.append(tag)
    return out


def put_first(tags: Sequence[str], first: Sequence[str]) -> list[str]:
    """`first` at the front in its order, the rest after, nothing twice (the trigger-word rule)."""
    return dedupe([*first, *tags])


def add_affixes(text: str, prefix: str = "", postfix: str = "") -> str:
    """'a photo of' + 'a girl' -> 'a photo of a girl'; 'mychar,' + '1girl' -> 'mychar, 1girl'.

    Each is added once: a caption that already starts with the prefix (ends with the postfix)
    keeps it as it is, so running a tool twice changes nothing.
    """
    left, right = prefix.strip(), postfix.strip()
    if left and not text.startswith(left):
        text = f"{left} {text}" if text else left
    if right and not text.endswith(right):
        text = (text + right if right[0] in ",." else f"{text} {right}") if text else right
    return text


# --- one captioning pass over a folder ---


@dataclass(frozen=True)
class WriteOptions:
    """What to do where a caption already exists: keep it (default), overwrite it, or append to it."""

    caption_extension: str = ".txt"
    overwrite: bool = False
    append: bool = False
    trigger: str = ""  # put first in every caption written

    def __post_init__(self) -> None:
        if self.overwrite and self.append:
            raise ToolError("choose either overwrite or append for existing captions, not both")


@dataclass
class CaptionSummary:
    """What a captioning pass did, file by file."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # images whose existing caption was left alone
    failed: list[tuple[Path, str]] = field(default_factory=list)  # images that could not be read
    uncaptioned: list[Path] = field(default_factory=list)  # images still without a caption file
    backup: Path | None = None  # the zip of captions taken before existing ones were changed

    def lines(self) -> list[str]:
        out = [f"wrote {len(self.written)} caption(s); kept {len(self.kept)} existing"]
        out += [f"skipped {path}: {reason}" for path, reason in self.failed]
        if self.uncaptioned:
            out.append(f"skipped {len(self.uncaptioned)} image(s) without a caption: give a caption text for them")
        if self.backup:
            out.append(f"backup of the previous captions: {self.backup}")
        return out


def final_caption(new_text: str, existing: str | None, options: WriteOptions) -> str:
    """The text to write: the new caption, or the existing one merged with it; trigger first."""
    tags = split_tags(new_text)
    if existing and options.append:
        tags = dedupe(split_tags(existing) + tags)
    trigger = as_tag_list(options.trigger)
    return join_tags(put_first(tags, trigger) if trigger else dedupe(tags))


def run_captioner(
    folder: str | Path,
    caption_batch: Callable[[list], list[str]],
    options: WriteOptions,
    *,
    batch_size: int = 1,
    recursive: bool = True,
    task: str = "caption",
    events: EventSink = ignore_events,
) -> CaptionSummary:
    """Caption every image under `folder` in batches; existing captions are kept unless asked.

    `caption_batch` gets RGB PIL images and answers one caption each. Images whose caption
    would be kept are never sent to the model, so re-running on a half-done folder is cheap.
    """
    if batch_size < 1:
        raise ToolError(f"batch_size must be at least 1, got {batch_size}")
    extension = caption_extension(options.caption_extension)
    summary = CaptionSummary()
    todo = []
    for image in find_images(folder, recursive):
        keep = caption_path(image, extension).is_file() and not (options.overwrite or options.append)
        (summary.kept if keep else todo).append(image)
    if summary.kept:
        events(Message(f"{len(summary.kept)} image(s) already have captions; kept (use overwrite or append)"))
    for start in range(0, len(todo), batch_size):
        _caption_chunk(todo[start:start + batch_size], caption_batch, options, extension, summary, events)
        events(Progress(task, min(start + batch_size, len(todo)), len(todo)))
    for line in summary.lines():
        events(Message(line, "warning" if line.startswith("skipped") else "info"))
    return summary


def _caption_chunk(paths: list[Path], caption_batch, options: WriteOptions, extension: str,
                   summary: CaptionSummary, events: EventSink) -> None:
    loaded = []
    for path in paths:
        try:
            loaded.append((path, open_rgb(path)))
        except Exception as error:  # Pillow raises many kinds; each means "cannot read this picture"
            summary.failed.append((path, f"{type(error).__name__}: {error}".splitlines()[0]))
    if not loaded:
        return
    captions = caption_batch([image for _, image in loaded])
    for (path, _), text in zip(loaded, captions):
        target = caption_path(path, extension)
        write_text(target, final_caption(text, read_text(target), options))
        summary.written.append(target)
        events(FileWritten(str(target), "caption"))
