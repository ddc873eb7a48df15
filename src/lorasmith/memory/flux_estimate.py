"""Flux.1's estimate put into parts, in the phases where its memory peaks.

Flux is trained as sd-scripts trains it on small cards: each encoder works alone before training, so
memory peaks in one of three phases:
- caching latents: the AE encoding four images at a time (the rest still on the CPU);
- caching text-encoder outputs: CLIP-L and T5 encoding text_encoder_batch_size captions at a time (by
  default train_batch_size, as sd-scripts), then freed;
- a training step: the transformer (less its swapped blocks, plus two in flight), the encoders whose
  work is not cached, the LoRA with its gradients and optimizer state, and the step's peak.
"""

from __future__ import annotations

import json
import time

from lorasmith.memory.estimate import MemoryEstimate, MemoryPart, largest_bucket
from lorasmith.memory.flux import (
    IN_FLIGHT_BLOCKS,
    fitted_peak,
    flux_step_key,
    flux_weights,
    swapped_blocks,
    text_caching_bytes,
)
from lorasmith.train.text_cache import captions_at_a_time


def estimate_flux_memory(config, configs: dict | None = None, bucket: tuple[int, int] | None = None) -> MemoryEstimate:
    """The peak GPU memory of training `config` on Flux.1 (`configs`: the checkpoint's own architecture)."""
    from dataclasses import replace

    from lorasmith.families.flux import network_spec
    from lorasmith.memory import measure
    from lorasmith.memory.activations import text_mode
    from lorasmith.memory.measure import MODEL_FIELDS
    from lorasmith.memory.optimizer import state_bytes, step_scratch_bytes
    from lorasmith.memory.weights import base_dtype_for

    started = time.perf_counter()
    if config.cache_text_encoder_outputs_to_disk:
        config = replace(config, cache_text_encoder_outputs=True)
    configs_json = json.dumps(configs, sort_keys=True, default=list) if configs else None
    bucket = tuple(bucket or largest_bucket(config))
    key = flux_step_key(config)
    fp8_unet = config.fp8_base or config.fp8_base_unet
    fp8_text = config.fp8_base and not config.fp8_base_unet
    dtype = base_dtype_for(config.mixed_precision)
    w = flux_weights(configs_json, dtype, fp8_unet, fp8_text, flux_step_key(config, MODEL_FIELDS))
    spec = network_spec(config)
    text = text_mode(config, spec.train_text_encoder)
    depth = (w.double, w.single, w.t5_layers)
    offload = config.cpu_offload_checkpointing and config.gradient_checkpointing
    step_peak = fitted_peak(configs_json, bucket, key, depth, text != "cached", offload)

    # the LoRA, its gradients and the optimizer state: float32, or bf16 with full_bf16
    scale = 2 if config.full_bf16 else 4
    numel = sum(_numel(shape) for shape in w.lora_shapes)
    lora = numel * scale
    grads = lora
    state = state_bytes(config.optimizer_type, w.lora_shapes, tuple(config.optimizer_args))
    if config.full_bf16 and "8bit" not in config.optimizer_type.lower():
        state //= 2
    scratch = step_scratch_bytes(config.optimizer_type, w.lora_shapes) * scale // 4

    swap_double, swap_single = swapped_blocks(config.blocks_to_swap, w.double, w.single)
    swapped = swap_double * w.double_block + swap_single * w.single_block
    in_flight = IN_FLIGHT_BLOCKS * max(w.double_block, w.single_block) if swapped else 0
    transformer = w.transformer.total - swapped + in_flight
    encode_batch = 0
    if not config.cache_latents:
        encode_batch = measure.encode_flux(configs_json, dtype, bucket, config.train_batch_size).bytes
    accumulating = config.gradient_accumulation_steps > 1
    candidates = [(step_peak, grads, "the step's forward and backward"),
                  (grads + scratch, grads, "the optimizer step's temporaries"),
                  (encode_batch + (grads if accumulating else 0), grads if accumulating else 0,
                   "the AE encoding the batch")]
    dynamic, alive, where = max(candidates, key=lambda c: c[0])
    upcast = f", + {w.upcast / 2**20:,.0f} MiB: one fp8 layer upcast" if w.upcast else ""
    text_bytes = w.clip.total + w.t5.total
    swap_text = (f", {swap_double} double + {swap_single} single blocks on the CPU "
                 f"(-{swapped / 2**20:,.0f} MiB, +{in_flight / 2**20:,.0f} in flight)") if swapped else ""
    training = (
        MemoryPart("transformer", transformer, w.transformer.describe() + swap_text),
        MemoryPart("text encoders", 0 if text == "cached" else text_bytes,
                   "outputs cached: freed once cached" if text == "cached"
                   else f"{text}, CLIP-L {w.clip.describe()}; T5-XXL {w.t5.describe()}"),
        MemoryPart("VAE", 0 if config.cache_latents else w.ae.total,
                   "AE: latents cached, off the GPU" if config.cache_latents else f"AE, {w.ae.describe()}"),
        MemoryPart("LoRA weights", lora, f"{'bf16' if config.full_bf16 else 'float32'}, {len(w.lora_shapes)} tensors"),
        MemoryPart("LoRA gradients", alive, ("bf16" if config.full_bf16 else "float32") if alive
                   else "none alive at the peak"),
        MemoryPart("optimizer state", state, config.optimizer_type),
        MemoryPart("activations", dynamic - alive + w.upcast, f"peak of {where}{upcast}"),
    )
    phases = []
    if config.cache_latents:
        encoding = measure.encode_flux(configs_json, dtype, bucket, config.vae_batch_size).bytes
        phases.append(("caching latents", _phase(
            [("VAE", w.ae.total, "AE alone on the GPU")],
            MemoryPart("activations", encoding, f"the AE encoding {config.vae_batch_size} image(s) at a time"))))
    if text == "cached":
        captions = captions_at_a_time(config)
        phases.append(("caching text-encoder outputs", _phase(
            [("text encoders", text_bytes, f"CLIP-L {w.clip.describe()}; T5-XXL {w.t5.describe()}")],
            MemoryPart("activations", text_caching_bytes(configs_json, key, captions),
                       f"encoding {captions} caption(s) at a time"))))
    label, caching = max(phases, key=lambda p: sum(x.bytes for x in p[1])) if phases else ("caching latents", None)
    notes = ["Flux phases as sd-scripts runs them on small cards: each encoder alone on the GPU while it caches"]
    if offload:
        notes.append("cpu_offload_checkpointing: the blocks' saved inputs on the CPU, one block's on the GPU")
    elif config.cpu_offload_checkpointing:
        notes.append("cpu_offload_checkpointing needs gradient_checkpointing: not counted")
    return MemoryEstimate(training, caching, bucket, config.train_batch_size, time.perf_counter() - started,
                          tuple(notes), caching_label=label, method="fitted from cut-down models")


def _phase(resident: list[tuple[str, int, str]], activations: MemoryPart) -> tuple[MemoryPart, ...]:
    """A caching phase's parts in the training phase's order: only `resident` parts hold memory."""
    held = {name: (size, detail) for name, size, detail in resident}
    names = ("transformer", "text encoders", "VAE", "LoRA weights", "LoRA gradients", "optimizer state")
    parts = [MemoryPart(name, *held.get(name, (0, "off the GPU" if name in names[:3] else "not yet")))
             for name in names]
    return (*parts, activations)


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
