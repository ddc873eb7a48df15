"""What one epoch is made of: samples (images x repeats, plus regularisation) grouped into batches.

Shared by the step plan and the trainer so that `lorasmith plan` counts exactly the steps
that `lorasmith train` makes. Pure Python: the image sizes come in from the caller.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from lorasmith.dataset.scan import Dataset, ImageItem, Subset


@dataclass(frozen=True)
class Sample:
    item: ImageItem
    subset: Subset
    is_reg: bool


def epoch_samples(train: Dataset, reg: Dataset | None = None) -> list[Sample]:
    """Each training image `repeats` times; regularisation images cycled to the same count.

    This is sd-scripts' rule: with a regularisation folder every epoch holds as many
    regularisation samples as training samples, so it has twice the samples (and steps).
    """
    samples = [Sample(item, subset, False) for subset, item in train.items() for _ in range(subset.repeats)]
    if reg is not None:
        pool = [Sample(item, subset, True) for subset, item in reg.items() for _ in range(subset.repeats)]
        samples += [pool[i % len(pool)] for i in range(len(samples))]
    return samples


def make_batches(samples: list[Sample], bucket_of: dict, batch_size: int,
                 rng: random.Random | None = None) -> list[list[Sample]]:
    """Group samples by bucket (`bucket_of[item.path]`), shuffle within and across buckets.

    A batch never mixes buckets, so a bucket's last batch may be short, as in sd-scripts.
    With `rng` None the order is deterministic (used for counting).
    """
    by_bucket: dict = {}
    for sample in samples:
        by_bucket.setdefault(bucket_of[sample.item.path], []).append(sample)
    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        if rng is not None:
            rng.shuffle(members)
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def count_batches(samples: list[Sample], bucket_of: dict, batch_size: int) -> int:
    counts: dict = {}
    for sample in samples:
        key = bucket_of[sample.item.path]
        counts[key] = counts.get(key, 0) + 1
    return sum(math.ceil(n / batch_size) for n in counts.values())
