"""The VRAM planner's estimates for the real architectures at the presets, and how long each takes.

    python bench/vram_plan.py            # the table
    python bench/vram_plan.py --lines    # and each estimate's full breakdown

No weights are needed: every model is built on the meta device from the configs lorasmith ships.
"seconds" is the estimate's first run, nothing measured before (the libraries already imported: the
first row pays nothing for that; the import time is printed apart; measurements shared with an earlier
row, as Flux's cut models are, are not measured twice); "cached" a repeat in this process; "disk" the
same estimate in a new process (in-memory caches emptied), read back from the disk cache
(memory/disk_cache.py; a temporary folder here, ~/.cache/lorasmith for a user);
"method" says how the step was found: measured (the whole step on meta) or fitted (Flux: the step of
the model cut to one and two blocks, extended to its depth; fp8 and block swap reuse it).

    python bench/vram_plan.py --check    # and the Flux fit against a direct full-depth measurement
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace


def rows():
    """(label, family, config) for each row of the table."""
    from lorasmith.config.presets import load_preset

    low, high = load_preset("8gb"), load_preset("12gb")
    flux = replace(load_preset("flux-24gb"), train_batch_size=1, fp8_base=False)
    flux_rows = []
    for px in (512, 1024):
        sized = replace(flux, resolution=f"{px},{px}")
        flux_rows += [(f"Flux.1-dev {px} px, bf16, batch 1", "flux", sized),
                      (f"Flux.1-dev {px} px, fp8 (flux-16gb without swap)", "flux", replace(sized, fp8_base=True)),
                      (f"Flux.1-dev {px} px, fp8 + swap 16 (flux-12gb)", "flux",
                       replace(sized, fp8_base=True, blocks_to_swap=16))]
    return [
        ("SD1.5 512 px, 8gb preset", "sd1", low),
        ("SD1.5 512 px, 12gb preset", "sd1", replace(high, resolution="512,512")),
        ("SD1.5 768 px, 12gb preset (as shipped)", "sd1", high),
        ("SDXL 1024 px, 8gb preset", "sdxl", replace(low, resolution="1024,1024")),
        ("SDXL 1024 px, 8gb preset, UNet only, text cached", "sdxl",
         replace(low, resolution="1024,1024", network_train_unet_only=True, cache_text_encoder_outputs=True)),
        ("SDXL 1024 px, 12gb preset", "sdxl", replace(high, resolution="1024,1024")),
        *flux_rows,
        ("Flux.1-dev 1024 px, flux-8gb preset (fp8, swap 32)", "flux", load_preset("flux-8gb")),
        ("Flux.1-dev 1024 px, flux-24gb preset (fp8, batch 2)", "flux", load_preset("flux-24gb")),
    ]


def check_flux_fit() -> None:
    """The fitted Flux.1-dev step against the whole step measured on meta, at 512 and 1024 px."""
    from lorasmith.config.presets import load_preset
    from lorasmith.memory import flux

    for px in (512, 1024):
        config = replace(load_preset("flux-12gb"), resolution=f"{px},{px}", blocks_to_swap=0, fp8_base=False)
        key, bucket = flux.flux_step_key(config), (px, px)
        started = time.perf_counter()
        direct = flux.tracked_flux_step(flux.cut_base(None, (19, 38, 24)), config, bucket).peak
        took = time.perf_counter() - started
        fitted = flux.fitted_peak(None, bucket, key, (19, 38, 24), False, False)
        print(f"Flux.1-dev {px} px step: fitted {fitted / 2**20:,.0f} MiB, measured {direct / 2**20:,.0f} MiB "
              f"({took:.1f} s), error {100 * (fitted - direct) / direct:+.2f} %")


def main(show_lines: bool) -> None:
    started = time.perf_counter()
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401  (the import is timed apart from the estimates)
    import transformers  # noqa: F401

    from lorasmith.memory import estimate_training_memory
    from lorasmith.memory.measure import forget_in_memory

    print(f"libraries imported in {time.perf_counter() - started:.1f} s")
    header = (f"{'configuration':<52} {'peak GiB':>8} {'total GiB':>9}  {'peak while':<16} "
              f"{'8':>3} {'12':>3} {'16':>3} {'24':>3}  {'seconds':>7} {'cached':>7} {'disk':>7}  method")
    print(header)
    print("-" * len(header))
    table = rows()
    firsts = []
    for label, family, config in table:
        estimate = estimate_training_memory(config, family)
        repeat = estimate_training_memory(config, family)
        firsts.append((estimate, repeat))
    forget_in_memory()  # a new process: every row again, from the disk
    for (label, family, config), (estimate, repeat) in zip(table, firsts):
        disk = estimate_training_memory(config, family)
        assert disk.parts == estimate.parts, f"{label}: the disk gave another estimate"
        fits = " ".join(f"{'yes' if estimate.fits(size) else 'no':>3}" for size in (8, 12, 16, 24))
        phase = {"a training step": "training step", "caching text-encoder outputs": "caching text"}.get(
            estimate.phase, estimate.phase)
        print(f"{label:<52} {estimate.peak / 2**30:>8.2f} {estimate.total / 2**30:>9.2f}  {phase:<16} {fits}  "
              f"{estimate.seconds:>7.2f} {repeat.seconds:>7.3f} {disk.seconds:>7.3f}  {estimate.method.split(' ')[0]}")
        if show_lines:
            print("\n".join(estimate.lines()), end="\n\n")


if __name__ == "__main__":
    import os
    import tempfile

    # cold figures: a cache folder of this run's (set LORASMITH_CACHE_DIR to time a warm one)
    os.environ.setdefault("LORASMITH_CACHE_DIR", tempfile.mkdtemp(prefix="vram-plan-"))
    main("--lines" in sys.argv[1:])
    if "--check" in sys.argv[1:]:
        check_flux_fit()
