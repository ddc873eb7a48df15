"""The dataset doctor: everything worth fixing before a training run, in one report.

Errors stop training (an image that cannot be decoded, a folder sd-scripts cannot read);
warnings are worth a look (small or extreme pictures, missing captions, duplicates). The report
also says which bucket each image trains in and gives the tutorial's advice: network rank by
image count (~30 -> 32, 50+ -> 64, 100+ -> 128), alpha half the rank, and repeats/epochs for
about 1500-3000 steps. Works on a kohya training folder, one `<repeats>_<name>` folder, or a
flat folder of images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorasmith.config.schema import parse_resolution
from lorasmith.dataset.buckets import assign_bucket, bucket_resolutions
from lorasmith.dataset.scan import is_image, is_subset_name, parse_subset_name
from lorasmith.errors import DatasetError, ToolError
from lorasmith.events import EventSink, Progress, ignore_events
from lorasmith.tools.caption.common import caption_extension as check_extension, caption_path, read_text
from lorasmith.tools.image_checks import ImageFacts, exact_duplicates, inspect_image, near_duplicates
from lorasmith.tools.prepare import planned_steps

MAX_ASPECT = 3.0  # beyond 3:1 a picture trains as a thin strip of its bucket
MAX_UPSCALE = 1.25  # a picture enlarged more than this to fill its bucket trains blurry
STEP_RANGE = (1500, 3000)  # the tutorial's total steps for a character
AIM_STEPS = 2000


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning"
    kind: str  # unreadable, truncated, folder_name, too_small, aspect_ratio, missing_caption, ...
    message: str
    path: Path | None = None


@dataclass
class ImageEntry:
    """One image as training will see it: its folder's repeats and name, its caption file."""

    path: Path
    repeats: int
    folder_name: str  # the caption sd-scripts falls back to
    kohya_folder: bool


@dataclass
class DoctorReport:
    root: Path
    layout: str  # "kohya" (folder of '<repeats>_<name>' folders) or "flat" (a folder of images)
    image_count: int = 0
    findings: list[Finding] = field(default_factory=list)
    buckets: dict[Path, tuple[int, int]] = field(default_factory=dict)
    advice: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def lines(self) -> list[str]:
        out = [f"{self.root} ({self.layout} layout): {self.image_count} images"]
        out += [f"{f.level}: {f.message}" for f in self.errors + self.warnings]
        by_bucket: dict[tuple[int, int], list[str]] = {}
        for path, bucket in self.buckets.items():
            by_bucket.setdefault(bucket, []).append(path.name)
        for (width, height), names in sorted(by_bucket.items()):
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            out.append(f"bucket {width}x{height}: {len(names)} image(s): {shown}")
        out += [f"advice: {line}" for line in self.advice]
        out.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return out


# --- which images, in which folders ---


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image(p))



def collect_images(root: Path, report: DoctorReport) -> list[ImageEntry]:
    """The images training would see, with their repeats; layout problems become findings."""
    loose = _images_in(root)
    subsets = [d for d in _visible_dirs(root) if _images_in(d)]
    if not subsets or (loose and not any(is_subset_name(d.name) for d in subsets)):
        report.layout = "flat"
        kohya = is_subset_name(root.name)
        repeats, name = parse_subset_name(root.name) if kohya else (1, root.name)
        return [ImageEntry(path, repeats, name, kohya) for path in loose]
    report.layout = "kohya"
    if loose:
        report.findings.append(Finding("warning", "loose_images", f"{len(loose)} image(s) directly in {root} are "
                                       "not trained; move them into a '<repeats>_<name>' folder", root))
    entries = []
    for folder in subsets:
        try:
            repeats, name = parse_subset_name(folder.name)
        except DatasetError as error:
            report.findings.append(Finding("error", "folder_name", str(error), folder))
            continue
        entries += [ImageEntry(path, repeats, name, True) for path in _images_in(folder)]
    return entries


# --- the checks ---


def check_caption(entry: ImageEntry, extension: str, text: str | None) -> Finding | None:
    """`text`: the caption file's text, None when there is none."""
    fallback = f"; training will use the folder name '{entry.folder_name}'" if entry.kohya_folder else ""
    if text is None:
        return Finding("warning", "missing_caption",
                       f"{entry.path} has no caption file ({extension}){fallback}; caption it", entry.path)
    if not text:
        return Finding("warning", "empty_caption", f"{caption_path(entry.path, extension)} is empty; write its tags",
                       entry.path)
    return None


def check_caption_lengths(captions: dict[Path, str], max_token_length: int) -> list[Finding]:
    """One warning for all captions the text encoder would cut (CLIP tokens, the start/end tokens aside)."""
    if not captions:
        return []
    from lorasmith.models.tokenizer import clip_tokenizer

    tokenizer = clip_tokenizer()
    lengths = {path: len(tokenizer(text).input_ids) - 2 for path, text in captions.items()}
    long = {path: n for path, n in lengths.items() if n > max_token_length}
    if not long:
        return []
    longest = max(long, key=long.get)
    longer = {75: " or set max_token_length 150 or 225", 150: " or set max_token_length 225"}.get(max_token_length, "")
    return [Finding("warning", "long_caption", f"{len(long)} captions are longer than {max_token_length} tokens "
                    f"(longest: {long[longest]}, the caption of {longest.name}); the text encoder cuts the rest: shorten them"
                    f"{longer}", longest)]


def check_shape(facts: ImageFacts, bucket: tuple[int, int]) -> list[Finding]:
    width, height = facts.size
    found = []
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        found.append(Finding("warning", "aspect_ratio", f"{facts.path} is {width}x{height} ({aspect:.1f}:1, more "
                             f"than {MAX_ASPECT:g}:1); crop it closer to the character", facts.path))
    upscale = max(bucket[0] / width, bucket[1] / height)
    if upscale > MAX_UPSCALE:
        found.append(Finding("warning", "too_small", f"{facts.path} is {width}x{height}, enlarged {upscale:.1f}x to "
                             f"its {bucket[0]}x{bucket[1]} bucket; use a larger picture or remove it", facts.path))
    return found


def check_orientation(facts: ImageFacts) -> list[Finding]:
    """Photos from phones are often stored sideways with an EXIF note to turn them; training (like
    sd-scripts) reads the pixels as stored, so the picture is learnt sideways."""
    if facts.orientation in (0, 1):
        return []
    return [Finding("warning", "rotated", f"{facts.path} is stored turned or mirrored and shown upright only by its "
                    f"EXIF orientation ({facts.orientation}); training sees it as stored: save it upright", facts.path)]


def check_duplicates(facts: list[ImageFacts], max_distance: int) -> list[Finding]:
    found = []
    for paths in exact_duplicates(facts):
        names = ", ".join(str(p) for p in paths)
        found.append(Finding("warning", "duplicate", f"identical files: {names}; keep one", paths[1]))
    for a, b, distance in near_duplicates(facts, max_distance):
        found.append(Finding("warning", "near_duplicate", f"{a} and {b} look alike (perceptual hash distance "
                             f"{distance}); keep the better one unless they differ on purpose", b))
    return found


def check_masks(root: Path, facts: list[ImageFacts], conditioning_data_dir: str | Path,
                alpha_mask: bool) -> list[Finding]:
    """masked_loss: each image needs a mask of its own size (or an alpha channel)."""
    if not conditioning_data_dir and not alpha_mask:
        return []
    from PIL import Image

    from lorasmith.dataset.masks import mask_path_for

    found = []
    folder = Path(conditioning_data_dir).expanduser() if conditioning_data_dir else None
    if folder is not None and not folder.is_dir():
        raise ToolError(f"conditioning_data_dir '{folder}' does not exist; give the folder of mask images")
    for fact in facts:
        if fact.size is None:
            continue
        if folder is None:
            with Image.open(fact.path) as image:
                has_alpha = "A" in image.getbands() or "transparency" in image.info
            if not has_alpha:
                found.append(Finding("warning", "missing_mask", f"{fact.path} has no alpha channel to mask the "
                                     "loss with; save it with transparency, or it trains everywhere", fact.path))
            continue
        mask = mask_path_for(fact.path, root, folder)
        if mask is None:
            found.append(Finding("warning", "missing_mask", f"{fact.path} has no mask in {folder} (a file named "
                                 f"'{fact.path.stem}' with an image extension); training refuses it", fact.path))
            continue
        with Image.open(mask) as image:
            size = image.size
        if size != fact.size:
            found.append(Finding("warning", "mask_size", f"{mask} is {size[0]}x{size[1]} but its image "
                                 f"{fact.path.name} is {fact.size[0]}x{fact.size[1]}; it is stretched to fit: "
                                 "make it the image's size", fact.path))
    return found


def rank_for(image_count: int) -> int:
    """The tutorial's rule of thumb: ~30 images -> 32, 50+ -> 64, 100+ -> 128."""
    return 128 if image_count >= 100 else 64 if image_count >= 50 else 32


def schedule_advice(image_count: int, samples_per_epoch: int, batch_size: int) -> str:
    """Epochs for the folders' repeats, or repeats for 10 epochs when epochs alone cannot do it."""
    low, high = STEP_RANGE
    epochs = max(1, round(AIM_STEPS * batch_size / samples_per_epoch))
    steps = -(-samples_per_epoch // batch_size) * epochs
    if 5 <= epochs <= 20 and low <= steps <= high:
        return (f"{samples_per_epoch} images x repeats per epoch at batch size {batch_size}: {epochs} epochs make "
                f"{steps} steps (aim for {low}-{high})")
    repeats = max(1, round(AIM_STEPS * batch_size / (image_count * 10)))
    return (f"use {repeats} repeats (folder '{repeats}_<name>') and 10 epochs at batch size {batch_size}: "
            f"{planned_steps(image_count, repeats, 10, batch_size)} steps (aim for {low}-{high})")


def advise(entries: list[ImageEntry], batch_size: int) -> list[str]:
    count = len(entries)
    if not count:
        return []
    rank = rank_for(count)
    samples = sum(entry.repeats for entry in entries)
    return [f"{count} images: network_dim {rank}, network_alpha {rank // 2} (tutorial: ~30 images -> 32, "
            "50+ -> 64, 100+ -> 128; alpha half the rank)", schedule_advice(count, samples, batch_size)]


def doctor_dataset(
    folder: str | Path,
    *,
    resolution: str | tuple[int, int] = "512,512",
    caption_extension: str = ".txt",
    min_bucket_reso: int = 256,
    max_bucket_reso: int = 1024,
    bucket_reso_steps: int = 64,
    batch_size: int = 1,
    near_duplicate_distance: int = 5,
    max_token_length: int = 75,
    conditioning_data_dir: str | Path = "",
    alpha_mask: bool = False,
    events: EventSink = ignore_events,
) -> DoctorReport:
    """Check every image under `folder` and return the report (it never changes a file)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ToolError(f"folder '{root}' does not exist; give your training folder or a folder of images")
    if batch_size < 1:
        raise ToolError(f"batch_size must be at least 1, got {batch_size}")
    extension = check_extension(caption_extension)
    wh = resolution if isinstance(resolution, tuple) else parse_resolution(resolution)
    if bucket_reso_steps % 8:  # the same rule as training's: buckets of another size would mislead
        raise ToolError(f"bucket_reso_steps must be a multiple of 8 (64 is usual), got {bucket_reso_steps}; "
                        "give the one you will train with")
    buckets = bucket_resolutions(wh, min_bucket_reso, max_bucket_reso, bucket_reso_steps)
    report = DoctorReport(root, "flat")
    entries = collect_images(root, report)
    report.image_count = len(entries)
    if not entries and not report.errors:  # a misnamed folder already said what to do
        report.findings.append(Finding("error", "no_images", f"no images in {root} or its '<repeats>_<name>' "
                                       "folders; put your pictures there", root))
    facts, captions = [], {}
    for done, entry in enumerate(entries, 1):
        fact = inspect_image(entry.path)
        facts.append(fact)
        if fact.size is None:
            what = "is truncated" if fact.problem == "truncated" else "cannot be read"
            report.findings.append(Finding("error", fact.problem, f"{entry.path} {what} ({fact.reason}); "
                                           "replace or remove it", entry.path))
        else:
            report.buckets[entry.path] = assign_bucket(fact.size, buckets, step=bucket_reso_steps)
            report.findings += check_shape(fact, report.buckets[entry.path]) + check_orientation(fact)
        text = read_text(caption_path(entry.path, extension))
        caption = check_caption(entry, extension, text)
        if caption:
            report.findings.append(caption)
        else:
            captions[entry.path] = text
        events(Progress("checking images", done, len(entries)))
    report.findings += check_masks(root, facts, conditioning_data_dir, alpha_mask)
    report.findings += check_caption_lengths(captions, max_token_length)
    report.findings += check_duplicates(facts, near_duplicate_distance)
    report.advice = advise(entries, batch_size)
    return report
