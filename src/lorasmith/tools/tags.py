"""The tag editor: how often each tag occurs, and bulk edits over every caption file.

Part 03 of the tutorial: look at the frequency table, prune tags the character always has
(so the trigger word learns them), put the trigger word first. Every edit is previewed with
`dry_run` or applied after a timestamped backup of all the caption files it will touch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from lorasmith.errors import ToolError
from lorasmith.events import EventSink, FileWritten, Message, Progress, ignore_events
from lorasmith.tools.backup import backup_captions
from lorasmith.tools.caption.common import (
    as_tag_list, caption_extension as check_extension, caption_path, dedupe, find_images, join_tags, put_first,
    read_text, split_tags, tag_key, write_text,
)


def caption_files(folder: str | Path, caption_extension: str = ".txt", recursive: bool = True) -> list[Path]:
    """The caption files that belong to an image (same stem) under `folder`; other text files are not ours."""
    extension = check_extension(caption_extension)
    found = (caption_path(image, extension) for image in find_images(folder, recursive))
    return sorted({path for path in found if path.is_file()})


def tag_frequencies(folder: str | Path, caption_extension: str = ".txt", recursive: bool = True) -> dict[str, int]:
    """tag -> number of captions holding it, most frequent first (ties by name).

    Spellings of one tag ('long_hair', 'long hair') count together, under the most used one.
    """
    counts: Counter = Counter()
    spellings: dict[str, Counter] = {}
    for path in caption_files(folder, caption_extension, recursive):
        for tag in dedupe(split_tags(read_text(path) or "")):
            counts[tag_key(tag)] += 1
            spellings.setdefault(tag_key(tag), Counter())[tag] += 1
    table = {spellings[key].most_common(1)[0][0]: count for key, count in counts.items()}
    return dict(sorted(table.items(), key=lambda pair: (-pair[1], pair[0])))


@dataclass(frozen=True)
class TagEdits:
    """The edits, applied in this order: replace, remove, dedupe, add (at the front), move to front."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    move_to_front: tuple[str, ...] = ()
    dedupe: bool = False

    def is_empty(self) -> bool:
        return not (self.add or self.remove or self.replace or self.move_to_front or self.dedupe)

    def apply(self, tags: list[str]) -> list[str]:
        for old, new in self.replace:
            tags = [new if tag_key(tag) == tag_key(old) else tag for tag in tags]
            tags = _without_later_copies(tags, new)
        removed = {tag_key(tag) for tag in self.remove}
        tags = [tag for tag in tags if tag_key(tag) not in removed]
        if self.dedupe:
            tags = dedupe(tags)
        present = {tag_key(tag) for tag in tags}
        tags = [tag for tag in self.add if tag_key(tag) not in present] + tags
        front = [tag for tag in self.move_to_front if tag_key(tag) in {tag_key(t) for t in tags}]
        return put_first(tags, front) if front else tags


def _without_later_copies(tags: list[str], tag: str) -> list[str]:
    """A replacement must not leave its new tag twice; other duplicates stay unless asked."""
    out, seen = [], False
    for item in tags:
        if tag_key(item) == tag_key(tag):
            if seen:
                continue
            seen = True
        out.append(item)
    return out


def parse_replacements(replace: dict | Sequence[str] | None) -> tuple[tuple[str, str], ...]:
    """{'old': 'new'} or ['old=new'] -> (('old', 'new'),); an empty side is an error."""
    if not replace:
        return ()
    if isinstance(replace, dict):
        pairs = list(replace.items())
    else:
        pairs = []
        for item in replace:
            if "=" not in item:
                raise ToolError(f"replace '{item}' must be written OLD=NEW, e.g. 'long_hair=long hair'")
            pairs.append(tuple(item.split("=", 1)))
    out = tuple((old.strip(), new.strip()) for old, new in pairs)
    for old, new in out:
        if not old or not new:
            raise ToolError(f"replace needs both tags, got '{old}={new}'; use remove to drop a tag")
    return out


@dataclass
class TagChange:
    path: Path
    before: str
    after: str


@dataclass
class TagEditResult:
    changes: list[TagChange] = field(default_factory=list)
    unchanged: int = 0
    backup: Path | None = None
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would change" if self.dry_run else "changed"
        out = [f"{change.path}: '{change.before}' -> '{change.after}'" for change in self.changes]
        out.append(f"{verb} {len(self.changes)} caption(s); {self.unchanged} unchanged")
        if self.backup:
            out.append(f"backup of the captions before the change: {self.backup}")
        return out


def edit_tags(
    folder: str | Path,
    *,
    add: str | Sequence[str] = (),
    remove: str | Sequence[str] = (),
    replace: dict | Sequence[str] | None = None,
    move_to_front: str | Sequence[str] = (),
    dedupe: bool = False,
    dry_run: bool = False,
    caption_extension: str = ".txt",
    recursive: bool = True,
    backup_dir: str | Path | None = None,
    events: EventSink = ignore_events,
) -> TagEditResult:
    """Apply the edits to every caption under `folder`; back them all up first, or only preview."""
    edits = TagEdits(tuple(as_tag_list(add)), tuple(as_tag_list(remove)), parse_replacements(replace),
                     tuple(as_tag_list(move_to_front)), dedupe)
    if edits.is_empty():
        raise ToolError("no tag edit given; use add, remove, replace OLD=NEW, move_to_front or dedupe")
    root = Path(folder).expanduser()
    files = caption_files(root, caption_extension, recursive)
    if not files:
        raise ToolError(f"no caption files ({check_extension(caption_extension)}) beside the images in '{root}'; "
                        "caption them first or check the extension")
    result = TagEditResult(dry_run=dry_run)
    for path in files:
        before = read_text(path) or ""
        after = join_tags(edits.apply(split_tags(before)))
        if after == before:
            result.unchanged += 1
        else:
            result.changes.append(TagChange(path, before, after))
    if result.changes and not dry_run:
        # Every caption file, not only the changed ones: the backup restores the whole folder's state.
        result.backup = backup_captions(root, files, Path(backup_dir) if backup_dir else None)
        events(FileWritten(str(result.backup), "backup"))
        for done, change in enumerate(result.changes, 1):
            write_text(change.path, change.after)
            events(Progress("editing tags", done, len(result.changes)))
    for line in result.lines():
        events(Message(line))
    return result
