"""The hashes AUTOMATIC1111 and model sites show for a checkpoint, read while a run starts.

A training run writes the base checkpoint's full sha256 into every LoRA (`ss_new_sd_model_hash`).
`hash_in_background` starts reading the file the moment a run begins, in a daemon thread at the
lowest CPU priority: the checkpoint is read once, on the core that Python's imports leave idle,
and the loader then finds it in the page cache (a checkpoint that has dropped out of the cache
costs seconds to read cold). sd-scripts hashes up front instead, adding that time to start-up.
No torch here, so a run can start this before its heavy imports.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future
from pathlib import Path

from lorasmith.background import run_in_background

_BLOCK = 16 << 20  # large reads: few hand-offs of the GIL between this thread and the loader


def legacy_hash(path: str | Path) -> str:
    """AUTOMATIC1111's old model hash: sha256 of 64 KiB at offset 1 MiB, first 8 hex digits."""
    with open(path, "rb") as file:
        file.seek(0x100000)
        return hashlib.sha256(file.read(0x10000)).hexdigest()[:8]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(_BLOCK))
    with open(path, "rb", buffering=0) as file:
        while size := file.readinto(buffer):
            digest.update(buffer[:size])
    return digest.hexdigest()


def model_hashes(path: str | Path) -> dict[str, str]:
    """A1111's hashes of a checkpoint file: the legacy 8-hex one and the full sha256 (reads the whole file)."""
    return {"sd_model_hash": legacy_hash(path), "new_sd_model_hash": file_sha256(path)}


def vae_hashes(path: str | Path) -> dict[str, str]:
    """The same two hashes of a separate VAE file, under the names sd-scripts' metadata gives them."""
    return {"vae_hash": legacy_hash(path), "new_vae_hash": file_sha256(path)}


def hash_in_background(path: str | Path | None, vae_path: str | Path | None = None) -> Future:
    """`model_hashes(path)` (and `vae_hashes(vae_path)`) read beside the main thread at the lowest
    priority (exiting never waits for it); a None path is left out."""
    def hashes() -> dict[str, str]:
        return {**(model_hashes(path) if path else {}), **(vae_hashes(vae_path) if vae_path else {})}

    return run_in_background(hashes, name="hash", lowest_priority=True)
