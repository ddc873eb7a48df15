"""Where a LoRA tool may write: never over an input, never over an existing file unless asked.

Writes are atomic: the bytes go to a hidden temporary file beside the target, which is then
renamed over it, so a stopped tool leaves either the old state or the whole new file.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lorasmith.config.files import default_file_mode
from lorasmith.errors import ToolError


def checked_output(save_to: str | os.PathLike, inputs: list[str | os.PathLike], overwrite: bool = False) -> Path:
    """The output path, after checking it replaces no input and (without `overwrite`) no file."""
    path = Path(save_to)
    if path.exists() and any(_same(path, Path(source)) for source in inputs):
        raise ToolError(f"--save_to '{path}' is one of the inputs; pick another file name")
    if path.exists() and not overwrite:
        raise ToolError(f"'{path}' already exists; pick another --save_to or add --overwrite")
    if not path.parent.is_dir():
        raise ToolError(f"folder '{path.parent}' does not exist; create it or pick another --save_to")
    return path


def _same(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write to; renamed to `path` when the block ends without an error."""
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temp)
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        os.chmod(temp, default_file_mode())
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
