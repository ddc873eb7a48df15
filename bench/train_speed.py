"""Training speed and memory, on the workload of shared/reference/peers.md. Run by hand; prints figures.

    python bench/train_speed.py                 # tiny demo model and real SD1.5 architecture, 64 and 128 px
    python bench/train_speed.py --model tiny    # only the tiny model (seconds)
    python bench/train_speed.py --model flux-tiny   # the tiny random Flux.1-dev (BFL file + ae, clip_l, t5xxl)
    python bench/train_speed.py --model sd15 --resolution 128 --steps 12
    python bench/train_speed.py --model sd15 --resolution 512 --mixed_precision fp16 --batch_size 1 4   # on a GPU
    python bench/train_speed.py --model sd15 --resolution 512 --preset 8gb                              # on a GPU

Workload: an 8-image character set in kohya layout (`10_mychar`), batch 1, rank 32 / alpha 16,
UNet + text encoder, fp32, AdamW, constant LR, 2 CPU threads. The real SD1.5 architecture is
built once with random weights and saved as an fp16 single-file checkpoint, as users download.

Each run is a fresh process (`python -m lorasmith train ...`-equivalent through the library):
start-up = launch to the end of optimizer step 1; steady s/step = median gap between steps
after the first; peak RSS = the child's maximum resident set size; on a GPU also peak VRAM
(torch.cuda.max_memory_allocated). `--preset` starts from a VRAM preset (its optimizer, precision,
checkpointing), the other options still apply over it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from lorasmith import api
from lorasmith.config.schema import TrainConfig, with_values
from lorasmith.events import Progress
values = json.loads(sys.argv[1])
stamps = []
def sink(event):
    if isinstance(event, Progress) and event.task == "train":
        stamps.append(time.time())
preset = values.pop("preset", None)
if preset:
    from lorasmith.config.presets import load_preset
    values = {**{k: v for k, v in load_preset(preset).__dict__.items()}, **values}
result = api.train(with_values(TrainConfig(), values), events=sink)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import torch
vram = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
print("BENCH" + json.dumps({"stamps": stamps, "file": result.final_file, "peak_kib": peak, "vram": vram}))
"""


def make_dataset(root: Path, count: int = 8) -> Path:
    from PIL import Image, ImageDraw

    folder = root / "10_mychar"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", (512, 512), (40 * i % 255, 90, 160))
        ImageDraw.Draw(image).ellipse([100 + 10 * i, 120, 380, 400], fill=(240, 200, 170))
        image.save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text("mychar, 1girl, smile")
    return root


def make_model(kind: str, folder: Path) -> tuple[Path, dict]:
    """The checkpoint, and the other files it needs as config values (Flux: ae, clip_l, t5xxl)."""
    if kind == "flux-tiny":
        files = {"model": folder / "flux-tiny" / "flux1-tiny.safetensors"}
        files.update({name: folder / "flux-tiny" / f"{name}.safetensors" for name in ("ae", "clip_l", "t5xxl")})
        if not all(p.exists() for p in files.values()):
            from lorasmith.families.flux.tiny import tiny_flux_base_model
            from lorasmith.families.flux.tiny_files import write_tiny_flux

            files = write_tiny_flux(tiny_flux_base_model("dev"), folder / "flux-tiny", "bfl")
        recipe = {"guidance_scale": 1.0, "timestep_sampling": "shift", "discrete_flow_shift": 3.1582,
                  "model_prediction_type": "raw", "t5xxl_max_token_length": 64}
        return files["model"], {**{k: str(v) for k, v in files.items() if k != "model"}, **recipe}
    path = folder / f"{kind}.safetensors"
    if path.exists():
        return path, {}
    import torch

    from lorasmith.models.single_file import save_single_file

    if kind == "tiny":
        from lorasmith.models.tiny import tiny_base_model

        save_single_file(tiny_base_model("sd1"), str(path))
    else:
        started = time.time()
        base = real_sd15_random()
        save_single_file(base, str(path), dtype=torch.float16)
        print(f"  built the SD1.5 architecture with random weights in {time.time() - started:.0f} s")
    return path, {}


def real_sd15_random():
    """The real SD1.5 architecture from the shipped configs, with random weights."""
    import json as _json
    from importlib import resources

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorasmith.models.base import BaseModel
    from lorasmith.models.families import get_family
    from lorasmith.models.tiny import noise_scheduler_config
    from lorasmith.models.tokenizer import clip_tokenizer

    def config(name):
        return _json.loads(resources.files("lorasmith.models").joinpath(f"configs/sd1/{name}.json").read_text())

    return BaseModel(
        family=get_family("sd1"), v_prediction=False, unet=UNet2DConditionModel.from_config(config("unet")),
        vae=AutoencoderKL.from_config(config("vae")),
        text_encoders=[CLIPTextModel(CLIPTextConfig(**config("text_encoder")))], tokenizers=[clip_tokenizer()],
        noise_scheduler=DDPMScheduler(**noise_scheduler_config(False)), name="sd15-random",
    )


def run_once(model: Path, data: Path, out: Path, resolution: int, steps: int, threads: int,
             batch_size: int = 1, mixed_precision: str | None = None, preset: str | None = None,
             extra: dict | None = None) -> dict:
    values = {**(extra or {}),
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
        "output_name": "bench", "resolution": f"{resolution},{resolution}", "min_bucket_reso": 64,
        "train_batch_size": batch_size, "max_train_epochs": 0, "max_train_steps": steps, "network_dim": 32,
        "network_alpha": 16, "mixed_precision": "no", "optimizer_type": "AdamW", "lr_scheduler": "constant",
        "num_cpu_threads_per_process": threads, "overwrite": True, "save_every_n_epochs": 0,
    }
    if preset:  # the preset's optimizer, precision and checkpointing; size, steps and folders stay ours
        for key in ("mixed_precision", "optimizer_type", "lr_scheduler", "num_cpu_threads_per_process"):
            values.pop(key)
        values["preset"] = preset
    if mixed_precision:
        values["mixed_precision"] = mixed_precision
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    started = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(values)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    line = next(l for l in proc.stdout.splitlines() if l.startswith("BENCH"))
    report = json.loads(line[5:])
    stamps = report["stamps"]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {
        "startup_s": stamps[0] - started,
        "s_per_step": statistics.median(gaps) if gaps else float("nan"),
        "range": (min(gaps), max(gaps)) if gaps else (0, 0),
        "peak_rss_mib": report["peak_kib"] / 1024,
        "peak_vram_mib": report["vram"] / 2**20,
        "lora_bytes": Path(report["file"]).stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "sd15", "flux-tiny", "all"), default="all")
    parser.add_argument("--resolution", type=int, nargs="*", default=[64, 128])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lorasmith-bench"))
    parser.add_argument("--batch_size", type=int, nargs="*", default=[1])
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    parser.add_argument("--preset", choices=("8gb", "12gb", "flux-24gb"), default=None)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = make_dataset(work / "data")
    kinds = ["tiny", "sd15"] if args.model == "all" else [args.model]
    print(f"{'model':9} {'px':>4} {'batch':>5} {'start-up s':>10} {'s/step':>8} {'(min-max)':>13} {'it/s':>6} "
          f"{'peak RSS MiB':>12} {'peak VRAM MiB':>13} {'LoRA bytes':>12}")
    for kind in kinds:
        model, extra = make_model(kind, work)
        for resolution in args.resolution:
            for batch in args.batch_size:
                r = run_once(model, data, work / f"out-{kind}-{resolution}-{batch}", resolution, args.steps,
                             args.threads, batch, args.mixed_precision, args.preset, extra)
                low, high = r["range"]
                print(f"{kind:9} {resolution:>4} {batch:>5} {r['startup_s']:>10.1f} {r['s_per_step']:>8.2f} "
                      f"{f'({low:.2f}-{high:.2f})':>13} {1 / r['s_per_step']:>6.2f} {r['peak_rss_mib']:>12.0f} "
                      f"{r['peak_vram_mib']:>13.0f} {r['lora_bytes']:>12,}", flush=True)


if __name__ == "__main__":
    main()
