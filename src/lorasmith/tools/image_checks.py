"""Per-image facts for the doctor: can Pillow decode it fully, its size, and its two fingerprints.

One decode per image gives everything: Pillow's `verify()` (structure, checksums) then a full
`load()` (catches truncated pixel data that `verify()` lets through), the size, a sha256 of the
file's bytes (exact duplicates) and imagehash's perceptual and colour hashes (near duplicates: the
perceptual hash sees only the brightness pattern, so a red and a blue image of the same shapes share it;
the colour hash tells them apart).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path


@dataclass(frozen=True)
class ImageFacts:
    path: Path
    size: tuple[int, int] | None = None  # None when the image cannot be decoded
    problem: str = ""  # "unreadable" or "truncated" when size is None
    reason: str = ""  # Pillow's words
    sha256: str = ""
    phash: int | None = None  # 64-bit perceptual hash as an int
    colour_hash: int | None = None  # imagehash.colorhash (binbits 3: 42 bits) as an int
    orientation: int = 1  # EXIF orientation: 1 upright; 3, 6, 8 (and mirrored 2, 4, 5, 7) shown turned


_EXIF_ORIENTATION = 0x0112
COLOUR_BINBITS = 3
# Colour-hash bits two copies of one picture may differ in (a re-encode, a slight crop); a change of colour
# moves whole bins (red against blue: 6 bits).
MAX_COLOUR_DISTANCE = 3


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _problem(reason: str) -> str:
    return "truncated" if "truncat" in reason.lower() else "unreadable"


def inspect_image(path: Path) -> ImageFacts:
    """Decode `path` fully; never raises for a bad image, says why instead."""
    import imagehash
    from PIL import Image

    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # Pillow raises many kinds (SyntaxError, OSError, ...): all mean "bad file"
        return ImageFacts(path, problem=_problem(_reason(error)), reason=_reason(error), sha256=digest)
    try:
        with Image.open(path) as image:  # verify() leaves the image unusable: open it again
            image.load()
            size = image.size
            rgb = image.convert("RGB")
            phash = int(str(imagehash.phash(rgb)), 16)
            colour_hash = int(str(imagehash.colorhash(rgb, binbits=COLOUR_BINBITS)), 16)
            orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception as error:
        # verify() passed, so the structure is fine and the pixel data stops short
        reason = _reason(error)
        return ImageFacts(path, problem="truncated", reason=reason, sha256=digest)
    return ImageFacts(path, size=size, sha256=digest, phash=phash, colour_hash=colour_hash, orientation=orientation)


def exact_duplicates(facts: list[ImageFacts]) -> list[list[Path]]:
    """Groups (of 2 or more) of files with the same bytes."""
    groups: dict[str, list[Path]] = {}
    for fact in facts:
        groups.setdefault(fact.sha256, []).append(fact.path)
    return [paths for paths in groups.values() if len(paths) > 1]


def near_duplicates(facts: list[ImageFacts], max_distance: int) -> list[tuple[Path, Path, int]]:
    """Pairs whose perceptual hashes differ in at most `max_distance` of 64 bits and whose colours match
    (byte-identical pairs are left to `exact_duplicates`)."""
    hashed = [fact for fact in facts if fact.phash is not None]
    pairs = []
    for a, b in combinations(hashed, 2):
        distance = (a.phash ^ b.phash).bit_count()
        colours = (a.colour_hash ^ b.colour_hash).bit_count()
        if distance <= max_distance and colours <= MAX_COLOUR_DISTANCE and a.sha256 != b.sha256:
            pairs.append((a.path, b.path, distance))
    return pairs
