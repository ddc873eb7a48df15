"""The VRAM planner's estimates for the real architectures at the presets, and how long each takes.

    python bench/vram_plan.py            # the table
    python bench/vram_plan.py --lines    # and each estimate's full breakdown

No weights are needed: every model is built on the meta device from the configs lorasmith ships.
"seconds" is the estimate's first run in this process (the libraries already imported: the first
row pays nothing for that; the import time is printed apart) and then a repeat, from the cache.
Flux.1-dev rows (bf16 / fp8 / fp8 + block swap at 512 and 1024 px) come with the Flux family.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace


def rows():
    """(label, family, config) for each row of the table."""
    from lorasmith.config.presets import load_preset

    low, high = load_preset("8gb"), load_preset("12gb")
    return [
        ("SD1.5 512 px, 8gb preset", "sd1", low),
        ("SD1.5 512 px, 12gb preset", "sd1", replace(high, resolution="512,512")),
        ("SD1.5 768 px, 12gb preset (as shipped)", "sd1", high),
        ("SDXL 1024 px, 8gb preset", "sdxl", replace(low, resolution="1024,1024")),
        ("SDXL 1024 px, 8gb preset, UNet only, text cached", "sdxl",
         replace(low, resolution="1024,1024", network_train_unet_only=True, cache_text_encoder_outputs=True)),
        ("SDXL 1024 px, 12gb preset", "sdxl", replace(high, resolution="1024,1024")),
    ]


def main(show_lines: bool) -> None:
    started = time.perf_counter()
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401  (the import is timed apart from the estimates)
    import transformers  # noqa: F401

    from lorasmith.memory import estimate_training_memory

    print(f"libraries imported in {time.perf_counter() - started:.1f} s")
    header = (f"{'configuration':<50} {'peak GiB':>8} {'total GiB':>9}  {'peak while':<16} "
              f"{'8':>3} {'12':>3} {'16':>3} {'24':>3}  {'seconds':>7} {'cached':>7}")
    print(header)
    print("-" * len(header))
    for label, family, config in rows():
        estimate = estimate_training_memory(config, family)
        repeat = estimate_training_memory(config, family)
        fits = " ".join(f"{'yes' if estimate.fits(size) else 'no':>3}" for size in (8, 12, 16, 24))
        phase = "caching latents" if estimate.phase == "caching latents" else "training step"
        print(f"{label:<50} {estimate.peak / 2**30:>8.2f} {estimate.total / 2**30:>9.2f}  {phase:<16} {fits}  "
              f"{estimate.seconds:>7.2f} {repeat.seconds:>7.3f}")
        if show_lines:
            print("\n".join(estimate.lines()), end="\n\n")


if __name__ == "__main__":
    main("--lines" in sys.argv[1:])
