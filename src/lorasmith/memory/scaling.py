"""One measured SD step stands for every batch size and bucket: sizes are tagged by the primes they carry.

A UNet's training step runs the same operators in the same order whatever the batch and the bucket; only
the tensors' sizes change, each as a product of powers of the batch and of the latent's height and width
(a conv's output is B x C x h x w, a self-attention's tokens h x w, a cross-attention's B x h x w x 77).
So the step is measured once with the batch and the bucket's sides set to primes that divide no number of
the architecture or the settings (`scale_primes`): every allocation's byte count then says by its prime
factors how it grows (`SizeClasses`), and the live bytes at each local peak are kept split by those
classes. The peak for another batch and bucket is the highest of those moments with each class scaled.

This holds where every level of the UNet halves exactly (buckets in multiples of 64 px) and for the SD
families only: Flux's joint attention concatenates text and image tokens (a sum, not a product), so its
sizes carry no clean factor; Flux's step is cheap by its cut-down models instead (`flux.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

PRIMES = (23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71)
MAX_POWER = 2  # attention matrices carry (h w)^2; higher powers are not expected (the step is then measured)
SIDE_PX = 64  # bucket sides that are multiples of this halve exactly through SD1/SD2/SDXL's levels
# The measured bucket: 256 px x prime per side (32 x prime latent rows), so that every attention level's
# token count stays a multiple of 32: fp32 attention keeps a logsumexp padded to 32 tokens, and padding
# would hide the primes.
MEASURED_SIDE_PX = 256
MAX_BATCH = 63  # diffusers' upsampling makes a tensor contiguous from batch 64 on (another trace)


def numbers_in(value) -> set[int]:
    """Every integer in a (JSON-like) structure: the architecture's and the settings' sizes."""
    found: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            found.add(abs(item))
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return found


def scale_primes(numbers: set[int], count: int = 3) -> tuple[int, ...] | None:
    """`count` primes that divide none of `numbers` (batch, height, width), or None if PRIMES run out."""
    chosen = [p for p in PRIMES if not any(n >= p and n % p == 0 for n in numbers)][:count]
    return tuple(chosen) if len(chosen) == count else None


def scalable(family: str, bucket: tuple[int, int], batch: int) -> bool:
    """Whether `bucket` and `batch` can be read off a scaled measurement (else the step is measured)."""
    return (family in ("sd1", "sd2", "sdxl") and 1 <= batch <= MAX_BATCH
            and all(side > 0 and side % SIDE_PX == 0 for side in bucket))


class SizeClasses:
    """Live bytes split by how they grow, kept at every local peak (what `LiveBytes` books, by class).

    A class is the powers (batch, height, width) in an allocation's byte count; bytes whose count carries a
    prime to a higher power than MAX_POWER make the measurement unusable (`usable` False)."""

    def __init__(self, primes: tuple[int, int, int]) -> None:
        self.primes = primes
        self.classes: dict[tuple[int, int, int], int] = {(0, 0, 0): 0}  # powers -> column
        self.live: list[int] = [0]
        self.moments: list[tuple[int, ...]] = []
        self.usable = True
        self._rising = False

    def powers(self, nbytes: int) -> tuple[int, ...]:
        """How `nbytes` grows: the power of each prime in it (called outside LiveBytes' lock: it allocates)."""
        powers = []
        for prime in self.primes:
            power = 0
            while nbytes and nbytes % prime == 0:
                nbytes //= prime
                power += 1
            powers.append(power)
        if max(powers) > MAX_POWER:
            self.usable = False
        return tuple(powers)

    def column(self, powers: tuple[int, ...]) -> int:
        """The class's column (a dict lookup, a new column at most: nothing the garbage collector counts)."""
        found = self.classes.get(powers)
        if found is None:
            found = self.classes[powers] = len(self.live)
            self.live.append(0)
        return found

    def add(self, column: int, raw: int, slack: int) -> None:
        self.live[column] += raw
        self.live[0] += slack  # the allocator's rounding: taken as the same at any size
        self._rising = True

    def remove(self, column: int, raw: int, slack: int) -> None:
        if self._rising:  # the moment before the first free after allocations is a local peak
            self.moments.append(tuple(self.live))
            self._rising = False
        self.live[column] -= raw
        self.live[0] -= slack

    def profile(self, measured: tuple[int, int, int]) -> ScaledPeak:
        """The local peaks (and the end), to be scaled from `measured` (batch, latent height, latent width)."""
        moments = [*self.moments, tuple(self.live)]
        width = len(self.live)
        rows = tuple(tuple(m) + (0,) * (width - len(m)) for m in set(moments))
        classes = tuple(sorted(self.classes, key=self.classes.get))
        return ScaledPeak(classes, _frontier(rows), measured)


def _frontier(rows: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    """The rows no other row matches or exceeds in every class (only those can be the peak anywhere)."""
    ordered = sorted(rows, key=sum, reverse=True)
    kept: list[tuple[int, ...]] = []
    for row in ordered:
        if not any(all(a >= b for a, b in zip(other, row)) for other in kept):
            kept.append(row)
    return tuple(kept)


@dataclass(frozen=True)
class ScaledPeak:
    classes: tuple[tuple[int, int, int], ...]  # per column: powers of (batch, height, width)
    rows: tuple[tuple[int, ...], ...]  # live bytes per column at the moments that can be the peak
    measured: tuple[int, int, int]  # (batch, latent height, latent width) it was measured at

    def peak_at(self, batch: int, latent_height: int, latent_width: int) -> int:
        ratios = [batch / self.measured[0], latent_height / self.measured[1], latent_width / self.measured[2]]
        scale = [ratios[0] ** b * ratios[1] ** h * ratios[2] ** w for b, h, w in self.classes]
        return round(max(sum(size * factor for size, factor in zip(row, scale)) for row in self.rows))


def architecture_numbers(family: str, configs_json: str | None, key: tuple) -> set[int]:
    """The sizes a step's tensors are made of: the architecture's configs and the step settings."""
    from lorasmith.memory.weights import part_config, text_parts

    parts = ("unet", *text_parts(family))
    configs = [part_config(family, configs_json, part) for part in parts]
    return numbers_in(configs) | numbers_in(key) | {77}
