"""The LoRA tools' speed and file sizes on the real SD1.5 architecture. Run by hand; prints figures.

    python bench/lora_tools.py              # every bench_* section
    python bench/lora_tools.py resize       # only bench_resize

The LoRAs have sd-scripts' exact SD1.5 key list and shapes (264 modules: UNet + text encoder,
read off the architecture built on the meta device, no download) with random fp16 weights,
as `train_network.py --network_dim 32 --network_alpha 16 --save_precision fp16` writes them.
Each section is a function `bench_<name>()` that prints its figures; add yours below.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def sd15_lora(rank: int = 32, alpha: float = 16.0, conv_rank: int = 0, seed: int = 0) -> dict:
    """kohya tensors of an SD1.5 LoRA (fp16) with random non-zero weights."""
    import torch

    from lorasmith.network.size import family_targets, lora_tensor_shapes

    targets = family_targets("sd1", conv_rank > 0, True, True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in lora_tensor_shapes(targets, rank, conv_rank).items():
        if key.endswith(".alpha"):
            tensors[key] = torch.tensor(alpha, dtype=torch.float16)
        else:
            tensors[key] = (torch.randn(shape, generator=generator) * 0.02).half()
    return tensors


def _timed(call, *args, **kwargs):
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return result, time.perf_counter() - start


def _mib(path: Path) -> str:
    size = path.stat().st_size
    return f"{size:,} bytes ({size / 2**20:.2f} MiB)"


def bench_resize() -> None:
    """Resize an SD1.5 rank-32 LoRA to rank 8, and by sv_fro 0.9 (cap 32), at 1 and 2 threads.

    On 2 cores the many small QR/SVD calls run faster on one thread when anything else is busy.
    """
    import torch

    from lorasmith.network.files import save_lora_file
    from lorasmith.tools.lora.resize import resize_lora_file

    with tempfile.TemporaryDirectory() as folder:
        source = save_lora_file(Path(folder) / "rank32.safetensors", sd15_lora(),
                                {"ss_network_module": "networks.lora", "ss_network_dim": "32",
                                 "ss_network_alpha": "16.0", "ss_base_model_version": "sd_v1"})
        print(f"resize: input {source.name}, 264 modules, {_mib(source)}")
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for label, rank, options in (("rank 8", 8, {}),
                                         ("sv_fro 0.9, cap 32", 32,
                                          {"dynamic_method": "sv_fro", "dynamic_param": 0.9})):
                out = Path(folder) / f"resized-{threads}-{rank}.safetensors"
                report, seconds = _timed(resize_lora_file, source, out, rank, **options)
                mean = sum(m.energy_kept for m in report.modules) / len(report.modules)
                ranks = sorted({m.new_rank for m in report.modules})
                print(f"  {label:18} {threads} thread(s): {seconds:6.2f} s (load, SVD, save), output {_mib(out)}, "
                      f"ranks {ranks[0]}-{ranks[-1]}, energy kept {mean:.1%} on average")


def bench_merge() -> None:
    """Merge two SD1.5 rank-32 LoRAs: ranks joined (exact), and by SVD to rank 32, at 1 and 2 threads."""
    import torch

    from lorasmith.network.files import save_lora_file
    from lorasmith.tools.lora.merge_loras import merge_lora_files

    with tempfile.TemporaryDirectory() as folder:
        sources = [save_lora_file(Path(folder) / f"{name}.safetensors", sd15_lora(seed=seed), {})
                   for seed, name in enumerate(("a", "b"))]
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for label, options in (("joined (rank 64)", {}), ("SVD to rank 32", {"new_rank": 32})):
                out = Path(folder) / f"merged-{threads}-{len(options)}.safetensors"
                _, seconds = _timed(merge_lora_files, sources, [0.7, 0.3], out, **options)
                print(f"merge: {label:18} {threads} thread(s): {seconds:6.2f} s, output {_mib(out)}")


# --- whole checkpoints: merge into a checkpoint, extract ---------------------------------------

# Each measured call runs in a fresh process, so peak RSS is the tool's own (imports included).
_CHILD = r"""
import json, resource, sys, time
import torch
job = json.loads(sys.argv[1])
torch.set_num_threads(job["threads"])
if job["tool"] == "build":  # the real SD1.5 architecture with random weights, saved as users download it
    from lorasmith.models.base import BaseModel
    from lorasmith.models.configs import shipped_config
    from lorasmith.models.families import get_family
    from lorasmith.models.load import diffusers_model_from_config, text_model_from_config
    from lorasmith.models.single_file import save_single_file
    torch.manual_seed(0)
    base = BaseModel(family=get_family("sd1"), v_prediction=False,
                     unet=diffusers_model_from_config("UNet2DConditionModel", shipped_config("sd1", "unet")),
                     vae=diffusers_model_from_config("AutoencoderKL", shipped_config("sd1", "vae")),
                     text_encoders=[text_model_from_config(shipped_config("sd1", "text_encoder"), 0)],
                     tokenizers=[], noise_scheduler=None)
    save_single_file(base, job["out"], dtype=torch.float16)
    lines = []
start = time.perf_counter()
if job["tool"] == "imports":
    import lorasmith.tools.lora.extract, lorasmith.tools.lora.merge_checkpoint, diffusers, transformers  # noqa
    lines = []
elif job["tool"] == "merge":
    from lorasmith.tools.lora.merge_checkpoint import merge_into_checkpoint
    lines = merge_into_checkpoint(job["sd_model"], [job["lora"]], [1.0], job["out"], overwrite=True).summary_lines()
elif job["tool"] == "extract":
    from lorasmith.tools.lora.extract import extract_lora
    lines = extract_lora(job["org"], job["tuned"], job["out"], 32, save_precision="fp16", overwrite=True,
                         min_diff=float(job["min_diff"])).summary_lines()
seconds = time.perf_counter() - start
print("BENCH" + json.dumps({"seconds": seconds, "lines": lines,
                            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
_CHECKPOINTS: dict[str, Path] = {}


def _child(tool: str, threads: int = 2, **paths) -> dict:
    import json
    import os
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    job = json.dumps({"tool": tool, "threads": threads, **{k: str(v) for k, v in paths.items()}})
    done = subprocess.run([sys.executable, "-c", _CHILD, job], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.rsplit("BENCH", 1)[1])


def _sd15_checkpoints() -> dict[str, Path]:
    """The random SD1.5 (fp16 single file, ~2 GB) and a rank-32 LoRA, in a temporary folder removed at exit."""
    if not _CHECKPOINTS:
        import atexit
        import shutil

        from lorasmith.network.files import save_lora_file

        folder = Path(tempfile.mkdtemp(prefix="lorasmith-bench-"))
        atexit.register(shutil.rmtree, folder, True)
        base, seconds = _timed(_child, "build", out=folder / "sd15.safetensors")
        lora = save_lora_file(folder / "rank32.safetensors", sd15_lora(), {"ss_network_module": "networks.lora"})
        print(f"checkpoints: built the SD1.5 architecture with random weights, saved fp16 in {seconds:.0f} s: "
              f"{_mib(folder / 'sd15.safetensors')}")
        _CHECKPOINTS.update(folder=folder, sd15=folder / "sd15.safetensors", lora=lora)
    return _CHECKPOINTS


def bench_merge_into_checkpoint() -> None:
    """Merge an SD1.5 rank-32 LoRA into the fp16 SD1.5 single file (streamed), 2 threads."""
    files = _sd15_checkpoints()
    imports = _child("imports")
    merged = files["folder"] / "merged.safetensors"
    result = _child("merge", sd_model=files["sd15"], lora=files["lora"], out=merged)
    files["merged"] = merged
    print(f"merge into checkpoint: {result['seconds']:.1f} s, peak RSS {result['peak_mib']:.0f} MiB "
          f"(a process that only imports the libraries: {imports['peak_mib']:.0f} MiB), output {_mib(merged)}")
    for line in result["lines"]:
        print("  " + line)


def bench_extract() -> None:
    """Extract a rank-32 LoRA from the fp16 SD1.5 and the same with a rank-32 LoRA merged, 1 and 2 threads.

    The random LoRA changes the text encoder by at most ~0.009, under sd-scripts' --min_diff 0.01, which
    would leave it out; min_diff 0.001 here, so that all 264 modules are timed.
    """
    files = _sd15_checkpoints()
    if "merged" not in files:
        files["merged"] = files["folder"] / "merged.safetensors"
        _child("merge", sd_model=files["sd15"], lora=files["lora"], out=files["merged"])
    for threads in (1, 2):
        out = files["folder"] / f"extracted-{threads}.safetensors"
        result = _child("extract", threads, org=files["sd15"], tuned=files["merged"], out=out, min_diff=0.001)
        print(f"extract rank 32, {threads} thread(s): {result['seconds']:.1f} s, peak RSS "
              f"{result['peak_mib']:.0f} MiB, output {_mib(out)}")
        for line in result["lines"]:
            print("  " + line)


def main(names: list[str]) -> None:
    sections = {name[len("bench_"):]: call for name, call in globals().items()
                if name.startswith("bench_") and callable(call)}
    unknown = [name for name in names if name not in sections]
    if unknown:
        sys.exit(f"unknown section {unknown[0]!r}; pick from: {', '.join(sections)}")
    for name, call in sections.items():
        if not names or name in names:
            call()


if __name__ == "__main__":
    main(sys.argv[1:])
