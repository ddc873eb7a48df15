"""Basic captioning: a fixed caption for images that have none, prefix/postfix/trigger for all.

The tutorial's first captioning step ("mychar, 1girl" for every picture). Existing captions
keep their text (unless `overwrite` with a caption text) and only gain the prefix, postfix or
trigger; every caption file that will change is backed up first.
"""

from __future__ import annotations

from pathlib import Path

from lorasmith.events import EventSink, FileWritten, Message, Progress, ignore_events
from lorasmith.tools.backup import backup_captions
from lorasmith.tools.caption.common import (
    CaptionSummary, add_affixes, as_tag_list, caption_extension as check_extension, caption_path, find_images,
    join_tags, put_first, read_text, split_tags, write_text,
)


def basic_caption(existing: str | None, caption_text: str, prefix: str, postfix: str, trigger: str,
                  overwrite: bool) -> str | None:
    """The caption an image should have, or None when it has none and no text was given."""
    base = caption_text.strip() if (existing is None or overwrite) and caption_text.strip() else existing
    if base is None:
        return None
    text = add_affixes(base, prefix, postfix)
    first = as_tag_list(trigger)
    return join_tags(put_first(split_tags(text), first)) if first else text


def caption_basic(
    folder: str | Path,
    caption_text: str = "",
    *,
    prefix: str = "",
    postfix: str = "",
    trigger: str = "",
    caption_extension: str = ".txt",
    overwrite: bool = False,
    recursive: bool = True,
    backup_dir: str | Path | None = None,
    events: EventSink = ignore_events,
) -> CaptionSummary:
    """Write `caption_text` where there is no caption; add prefix/postfix/trigger everywhere."""
    extension = check_extension(caption_extension)
    root = Path(folder).expanduser()
    images = find_images(root, recursive)
    summary = CaptionSummary()
    plans: list[tuple[Path, str]] = []
    for image in images:
        target = caption_path(image, extension)
        existing = read_text(target)
        wanted = basic_caption(existing, caption_text, prefix, postfix, trigger, overwrite)
        if wanted is None:
            summary.uncaptioned.append(image)
        elif wanted == existing:
            summary.kept.append(image)
        else:
            plans.append((target, wanted))
    changed = [target for target, _ in plans if target.is_file()]
    if changed:
        summary.backup = backup_captions(root, changed, Path(backup_dir) if backup_dir else None)
        events(FileWritten(str(summary.backup), "backup"))
    for done, (target, text) in enumerate(plans, 1):
        write_text(target, text)
        summary.written.append(target)
        events(FileWritten(str(target), "caption"))
        events(Progress("captioning", done, len(plans)))
    for line in summary.lines():
        events(Message(line))
    return summary
