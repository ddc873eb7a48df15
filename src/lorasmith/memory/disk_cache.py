"""The planner's measurements kept on disk, so a plan asked again in a new process costs nothing.

A measurement (an SDXL step takes ~10 s on two cores) depends on its arguments (architecture and
settings) and on the code that measured it: lorasmith's own files and the versions of the libraries
whose modules it runs. The file's name hashes all of them, so a changed line in lorasmith or an
upgraded diffusers measures afresh and an old entry is simply never read again.

    @on_disk
    def step(family, configs_json, dtype, bucket, key) -> StepMeasure: ...

One small JSON file per measurement under `measurements_dir()`: `$LORASMITH_CACHE_DIR/memory`, by
default `$XDG_CACHE_HOME/lorasmith/memory` (~/.cache/lorasmith/memory). `LORASMITH_MEMORY_CACHE=0`
turns it off. A file that cannot be read is measured again; one that cannot be written is skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path

# The libraries whose code runs inside a measurement (the step's modules, the LoRA's layers, the kernels).
MEASURED_WITH = ("torch", "diffusers", "transformers", "peft", "lycoris-lora", "accelerate")
_FORMAT = 1  # bump when the file layout below changes
# Files kept at most; past it the oldest half goes (entries of older code are never read again). An SDXL
# step's file is about 50 KB with its LoRA's shapes, most are under 1 KB.
MAX_FILES = 2000


def measurements_dir() -> Path | None:
    """Where measurements are kept, or None when the cache is off."""
    if os.environ.get("LORASMITH_MEMORY_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    root = os.environ.get("LORASMITH_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lorasmith"
    return Path(root) / "memory"


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of lorasmith's source and shipped configs, and of the measuring libraries' versions."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"format {_FORMAT}".encode())
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
            digest.update(path.relative_to(package).as_posix().encode())
            digest.update(path.read_bytes())
    for name in MEASURED_WITH:
        try:
            digest.update(f"{name}=={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name} absent".encode())
    return digest.hexdigest()


def on_disk(func):
    """Keep `func`'s results on disk by its arguments (str, int, float, bool, None and tuples of them)."""
    name = f"{func.__module__}.{func.__qualname__}"

    @functools.wraps(func)
    def cached(*args):
        folder = measurements_dir()
        if folder is None:
            return func(*args)
        key = hashlib.sha256(f"{code_fingerprint()}\n{name}\n{args!r}".encode()).hexdigest()[:32]
        path = folder / f"{func.__name__}-{key}.json"
        try:
            return decode(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError):
            pass  # not measured yet, or a file from an interrupted write: measure it
        value = func(*args)
        _write(path, json.dumps(encode(value)))
        _prune(folder)
        return value

    return cached


def _write(path: Path, text: str) -> None:
    """Written whole or not at all (a temporary file renamed), so two processes never read half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only or full disk: the estimate stands, only the next process measures again


def _prune(folder: Path) -> None:
    """Past MAX_FILES files, delete the least recently written, down to half of it."""
    keep = MAX_FILES
    try:
        files = list(folder.glob("*.json"))
        if len(files) <= keep:
            return
        files.sort(key=lambda path: path.stat().st_mtime)
        for path in files[: len(files) - keep // 2]:
            path.unlink(missing_ok=True)
    except OSError:
        pass  # another process pruning at the same time


def encode(value):
    """A measurement as JSON: dataclasses of lorasmith.memory by name, tuples marked (JSON has lists only)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        fields = {field.name: encode(getattr(value, field.name)) for field in dataclasses.fields(value)}
        return {"dataclass": f"{kind.__module__}:{kind.__qualname__}", "fields": fields}
    if isinstance(value, tuple):
        return {"tuple": [encode(item) for item in value]}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot keep a {type(value).__name__} on disk")


def decode(value):
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "tuple" in value:
        return tuple(decode(item) for item in value["tuple"])
    module, qualname = value["dataclass"].split(":")
    if not module.startswith("lorasmith.memory."):  # only our own result types are ever made from a file
        raise TypeError(f"unexpected type {module}:{qualname} in a measurement file")
    kind = getattr(importlib.import_module(module), qualname)
    return kind(**{name: decode(item) for name, item in value["fields"].items()})


def forget() -> None:
    """Delete every kept measurement (this lorasmith's and older ones')."""
    folder = measurements_dir()
    if folder is None or not folder.is_dir():
        return
    for path in folder.glob("*.json"):
        path.unlink(missing_ok=True)
