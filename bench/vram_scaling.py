"""The scaled SD step (memory/scaling.py) against a direct measurement, for the real architectures on meta.

    python bench/vram_scaling.py            # SD1.5 and SDXL, the 8gb and 12gb presets
    python bench/vram_scaling.py sdxl       # one family

For each preset, batch (1, 4) and bucket (512x512, 768x1024, 1024x1024): the step's peak read off the one
measurement at prime sizes, the peak measured directly at that batch and bucket, the error, and the time
of each (the first scaled row pays for the prime-size measurement; the rest read it off).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

os.environ.setdefault("LORASMITH_MEMORY_CACHE", "0")  # time the measurements, not the disk


def main(families: list[str]) -> None:
    from lorasmith.config.presets import load_preset
    from lorasmith.memory import measure
    from lorasmith.memory.estimate import STEP_FIELDS, _frozen
    from lorasmith.memory.weights import base_dtype_for

    worst = 0.0
    for family in families:
        for preset in ("8gb", "12gb"):
            for batch in (1, 4):
                for bucket in ((512, 512), (768, 1024), (1024, 1024)):
                    config = replace(load_preset(preset), train_batch_size=batch)
                    key = tuple((name, _frozen(getattr(config, name))) for name in STEP_FIELDS)
                    dtype = base_dtype_for(config.mixed_precision)
                    started = time.perf_counter()
                    scaled = measure.step.__wrapped__.__wrapped__(family, None, dtype, bucket, key).peak
                    between = time.perf_counter()
                    direct = measure._measured_step(family, None, dtype, bucket, key).peak
                    took = time.perf_counter() - between
                    error = (scaled - direct) / direct
                    worst = max(worst, abs(error))
                    print(f"{family:<5} {preset:<5} batch {batch} {bucket[0]:>4}x{bucket[1]:<4}  scaled "
                          f"{scaled / 2**20:>8,.1f} MiB  direct {direct / 2**20:>8,.1f} MiB  {100 * error:+.4f} %  "
                          f"({between - started:.2f} s vs {took:.2f} s)", flush=True)
    print(f"worst error {100 * worst:.4f} %")


if __name__ == "__main__":
    main(sys.argv[1:] or ["sd1", "sdxl"])
