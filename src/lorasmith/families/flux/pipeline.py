"""Flux.1 images with diffusers' FluxPipeline, built from a BaseModel's own parts (no copy, no download).

Prompts are encoded by `encode_flux_captions`, the code training uses, and handed to the pipeline as
embeddings, so samples are conditioned exactly as training was. The pipeline samples with Euler over
sigmas shifted for the image's size (BFL's resolution-dependent shift). Dev takes `guidance_scale` into
its guidance embedding (3.5 is BFL's default, about 20-28 steps); schnell has no such embedding and
ignores it (about 4 steps). There is no negative prompt: Flux.1 is guidance-distilled, not run with CFG.
"""

from __future__ import annotations

from typing import Any

from lorasmith.errors import ToolError
from lorasmith.models.base import BaseModel

SIZE_MULTIPLE = 16  # the AE's 8x, then 2x2 packing


def flux_pipeline(base: BaseModel) -> Any:
    """A diffusers FluxPipeline sharing `base`'s modules, with a fresh scheduler from the shipped config
    (sampling changes a scheduler's state; the training one stays untouched)."""
    from lorasmith.sampling.generate import _quiet_transformers

    with _quiet_transformers():
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from lorasmith.models.configs import shipped_config

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(shipped_config("flux", "scheduler"))
    clip, t5 = base.text_encoders
    pipe = FluxPipeline(scheduler=scheduler, vae=base.vae, text_encoder=clip, tokenizer=base.tokenizers[0],
                        text_encoder_2=t5, tokenizer_2=base.tokenizers[1], transformer=base.unet)
    pipe.set_progress_bar_config(disable=True)  # progress goes through our events
    return pipe


def check_flux_size(width: int, height: int) -> None:
    """Sides must be multiples of 16; FluxPipeline would only warn and silently crop the image."""
    for name, value in (("width", width), ("height", height)):
        if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
            raise ToolError(f"{name} must be a multiple of {SIZE_MULTIPLE} for Flux (e.g. 1024), got {value}")


def generate_flux_images(base: BaseModel, prompts: list[str], *, width: int, height: int, steps: int,
                         guidance_scale: float, seeds: list[int], t5_max_length: int | None = None,
                         apply_t5_attn_mask: bool = False, pipe: Any = None) -> list:
    """One PIL image per prompt, prompt i drawn from `seeds[i]` by a CPU generator, so the same seed gives
    the same image on any device. Runs in the modules' own dtype with the modules in eval mode; `pipe`
    (from `flux_pipeline`) saves building one per call.

    Sides that are not multiples of 16 are refused (ToolError), as SD requests refuse non-multiples of 8:
    sd-scripts and FluxPipeline would round them down and hand back an image of another size."""
    import torch

    from lorasmith.families.flux.text import encode_flux_captions
    from lorasmith.sampling.generate import eval_mode

    check_flux_size(width, height)
    if steps < 1:
        raise ToolError(f"steps must be 1 or more, got {steps}")
    if len(seeds) != len(prompts):
        raise ToolError(f"give one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
    pipe = flux_pipeline(base) if pipe is None else pipe
    images = []
    with eval_mode(base), torch.no_grad():
        for prompt, seed in zip(prompts, seeds):
            text = encode_flux_captions(base, [prompt], t5_max_length, apply_t5_attn_mask)
            generator = torch.Generator("cpu").manual_seed(int(seed))
            output = pipe(prompt_embeds=text.t5, pooled_prompt_embeds=text.clip_pooled, width=width, height=height,
                          num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator,
                          output_type="pil")
            images.append(output.images[0])
    return images
