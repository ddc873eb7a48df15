"""A timestamped zip of caption files, written before a tool changes any of them.

The zip goes to `<folder>/.lorasmith_backups/captions-<YYYYmmdd-HHMMSS>.zip` (a hidden folder,
which dataset scans skip) and keeps paths relative to the folder, so unzipping it there puts
every caption back.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Iterable

from lorasmith.errors import ToolError

BACKUP_FOLDER = ".lorasmith_backups"


def backup_captions(root: Path, captions: Iterable[Path], backup_dir: Path | None = None) -> Path:
    """Zip `captions` (paths under `root`); never replaces an earlier backup."""
    target_dir = backup_dir or root / BACKUP_FOLDER
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            target = target_dir / f"captions-{stamp}{f'-{attempt}' if attempt else ''}.zip"
            try:
                handle = target.open("xb")  # exclusive: two backups in one second get distinct names
            except FileExistsError:
                continue
            with handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
                for caption in sorted(set(captions)):
                    archive.write(caption, caption.relative_to(root).as_posix())
            return target
    except OSError as error:
        raise ToolError(f"cannot write the caption backup in '{target_dir}' ({error.strerror}); "
                        "make the folder writable or give another backup folder") from None
    raise ToolError(f"too many caption backups named captions-{stamp}*.zip in '{target_dir}'; try again")
