"""The planner's step against the real step of the real SD1.5 architecture, on the CPU. Run by hand; prints figures.

    python bench/vram_check_sd15.py                      # 64 and 128 px, fp32 and fp16 + checkpointing
    python bench/vram_check_sd15.py --resolution 64

The real model is SD1.5's shipped architecture with random weights (about 4.3 GB in fp32: a 24 GB machine is
enough); its training step runs under the same live-bytes tracking and CUDA rules the planner uses, and the
planner's estimate of that step comes from the meta device. Issue 14 asks them to agree within 10 %.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace


def real_sd15(mixed_precision: str):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorasmith.memory.weights import DTYPES, base_dtype_for
    from lorasmith.models.base import BaseModel
    from lorasmith.models.configs import shipped_config
    from lorasmith.models.families import get_family
    from lorasmith.models.tiny import noise_scheduler_config
    from lorasmith.models.tokenizer import clip_tokenizer

    text = {k: v for k, v in shipped_config("sd1", "text_encoder").items() if k not in ("architectures", "model_type")}
    base = BaseModel(
        family=get_family("sd1"), v_prediction=False,
        unet=UNet2DConditionModel.from_config(shipped_config("sd1", "unet")),
        vae=AutoencoderKL.from_config(shipped_config("sd1", "vae")),
        text_encoders=[CLIPTextModel(CLIPTextConfig(**text))], tokenizers=[clip_tokenizer()],
        noise_scheduler=DDPMScheduler(**noise_scheduler_config(False)), name="sd15-random")
    dtype = DTYPES[base_dtype_for(mixed_precision)]
    for module in (base.unet, base.vae, *base.text_encoders):
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(dtype)
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, nargs="*", default=[64, 128])
    args = parser.parse_args()
    import torch

    from lorasmith.config.schema import TrainConfig
    from lorasmith.memory import measure
    from lorasmith.memory.activations import inject_network, tracked_step
    from lorasmith.memory.estimate import STEP_FIELDS, _frozen, largest_bucket
    from lorasmith.memory.weights import base_dtype_for

    torch.set_num_threads(2)
    settings = {"fp32": {}, "fp16 + checkpointing": {"mixed_precision": "fp16", "gradient_checkpointing": True}}
    print(f"{'setting':22} {'px':>4} {'real MiB':>9} {'planned MiB':>11} {'error':>7} {'real s':>7} {'plan s':>7}")
    for name, values in settings.items():
        for resolution in args.resolution:
            config = replace(TrainConfig(network_dim=32, network_alpha=16, train_batch_size=1,
                                         resolution=f"{resolution},{resolution}"), **values)
            started = time.perf_counter()
            base = real_sd15(config.mixed_precision)
            torch.manual_seed(0)
            real = tracked_step(base, inject_network(base, config), config, largest_bucket(config))
            real_s = time.perf_counter() - started
            del base
            key = tuple((field, _frozen(getattr(config, field))) for field in STEP_FIELDS)
            started = time.perf_counter()
            planned = measure.step("sd1", None, base_dtype_for(config.mixed_precision), largest_bucket(config), key)
            plan_s = time.perf_counter() - started
            error = planned.peak / real.peak - 1
            print(f"{name:22} {resolution:>4} {real.peak / 2**20:>9.1f} {planned.peak / 2**20:>11.1f} "
                  f"{error:>+7.1%} {real_s:>7.1f} {plan_s:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
