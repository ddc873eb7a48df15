"""Flux.1's peak GPU memory, from its architecture on the meta device, with its low-VRAM settings.

Weights: the transformer (bf16, or float8 with fp8_base: 1 byte per linear weight and one layer's
upcast copy at a time), CLIP-L, T5-XXL unless its outputs are cached (freed once cached), the AE unless
latents are cached; `blocks_to_swap` N moves N // 2 double and (N - N // 2) * 2 single blocks to the CPU
(sd-scripts' split), the GPU holding the rest and two blocks in flight.

The step is the family's own `training_loss` (2x2 packing, T5 length, guidance) with its backward, on meta
tensors under `LiveBytes`. A full Flux.1-dev step is some 6 s of operator calls; its blocks are alike, so the
step is measured on the same model cut to one and two double blocks, single blocks and T5 layers (four short
runs, about 2 s) and extended to the real depth, which is linear in each count (`fitted_peak`; the tests
check it against a direct measurement of a deeper model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import torch

from lorasmith.memory.activations import StepMeasure, autocast_dtype, measured_step, text_mode
from lorasmith.memory.autocast import CudaRules
from lorasmith.memory.disk_cache import on_disk
from lorasmith.memory.meta_ops import MetaOpCache
from lorasmith.memory.tracking import LiveBytes
from lorasmith.memory.weights import DTYPES, PartBytes, module_bytes

IN_FLIGHT_BLOCKS = 2  # swapped blocks on their way in or out while the GPU computes (sd-scripts' offloader)
# The settings that change Flux's step (beside estimate.STEP_FIELDS).
FLUX_STEP_FIELDS = ("t5xxl_max_token_length", "apply_t5_attn_mask", "model_prediction_type", "full_bf16",
                    "guidance_scale", "cpu_offload_checkpointing")
_META_OPS = MetaOpCache()


def swapped_blocks(blocks_to_swap: int, double: int, single: int) -> tuple[int, int]:
    """(double, single) blocks held on the CPU for `blocks_to_swap`, as sd-scripts splits it (at most 2 left)."""
    if blocks_to_swap <= 0:
        return 0, 0
    swap_double = min(blocks_to_swap // 2, max(double - 2, 0))
    swap_single = min((blocks_to_swap - blocks_to_swap // 2) * 2, max(single - 2, 0))
    return swap_double, swap_single


def fp8_bytes(part: str, module, fp8: bool, dtype: torch.dtype) -> PartBytes:
    """A module's bytes in `dtype`, its linear weights in float8 (1 byte) when `fp8`."""
    counted = module_bytes(part, module)
    if not fp8:
        return counted
    linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
    rest = counted.total - linear * torch.empty((), dtype=dtype).element_size()
    return PartBytes(part, (("fp8", linear), (counted.by_dtype[0][0], rest)))


def largest_linear_bytes(module, dtype: torch.dtype) -> int:
    """The largest linear weight in `dtype`: the one upcast copy fp8 weights need at a time."""
    size = torch.empty((), dtype=dtype).element_size()
    return max((m.weight.numel() * size for m in module.modules() if isinstance(m, torch.nn.Linear)), default=0)


@dataclass(frozen=True)
class FluxWeights:
    transformer: PartBytes
    clip: PartBytes
    t5: PartBytes
    ae: PartBytes
    double_block: int  # bytes of one double / single block as stored (fp8 or not)
    single_block: int
    double: int  # block counts
    single: int
    t5_layers: int
    upcast: int  # one linear layer's upcast copy (fp8), else 0
    lora_shapes: tuple[tuple[int, ...], ...]


def _dtype(config) -> torch.dtype:
    return DTYPES[{"fp16": "fp16", "bf16": "bf16"}.get(config.mixed_precision, "fp32")]


@lru_cache(maxsize=8)
@on_disk
def flux_weights(configs_json: str | None, dtype_name: str, fp8_unet: bool, fp8_text: bool,
                 network_key: tuple) -> FluxWeights:
    """The real architecture's bytes, as stored on the GPU, and its LoRA's shapes."""
    from diffusers import AutoencoderKL

    from lorasmith.families import family_behaviour
    from lorasmith.families.flux.meta import flux_part_config, meta_flux_base
    from lorasmith.memory.weights import quiet_diffusers
    from lorasmith.models.empty import empty_weights
    from lorasmith.models.families import FLUX

    dtype = DTYPES[dtype_name]
    configs = json.loads(configs_json) if configs_json else None
    with quiet_diffusers():
        base = meta_flux_base(configs)
        for module in (base.unet, *base.text_encoders):
            module.to(device="meta", dtype=dtype)
        with empty_weights():
            ae = AutoencoderKL.from_config(flux_part_config("vae", configs)).to(device="meta", dtype=dtype)
    transformer, (clip, t5) = base.unet, base.text_encoders
    upcast = largest_linear_bytes(transformer, dtype) if fp8_unet else 0
    if fp8_text:
        upcast = max(upcast, largest_linear_bytes(t5, dtype))
    weights = dict(
        transformer=fp8_bytes("transformer", transformer, fp8_unet, dtype), clip=module_bytes("text_encoder", clip),
        t5=fp8_bytes("text_encoder_2", t5, fp8_text, dtype), ae=module_bytes("vae", ae),
        double_block=fp8_bytes("block", transformer.transformer_blocks[0], fp8_unet, dtype).total,
        single_block=fp8_bytes("block", transformer.single_transformer_blocks[0], fp8_unet, dtype).total,
        double=len(transformer.transformer_blocks), single=len(transformer.single_transformer_blocks),
        t5_layers=len(t5.encoder.block), upcast=upcast)
    config = as_config(network_key)  # the LoRA goes in after the base's own bytes are counted
    family = family_behaviour(FLUX)
    base.vae = torch.nn.Module()
    with empty_weights():
        network = family.create_network(base, family.network_spec(config))
    return FluxWeights(**weights, lora_shapes=tuple(tuple(p.shape) for p in network.trainable_parameters()))


@lru_cache(maxsize=64)
@on_disk
def measured_point(configs_json: str | None, bucket: tuple[int, int], key: tuple, depth: tuple[int, int, int]) -> int:
    """The step's peak bytes (beyond weights and LoRA) of the model cut to `depth` (double, single, T5 layers)."""
    return tracked_flux_step(cut_base(configs_json, depth), as_config(key), bucket).peak


def cut_base(configs_json: str | None, depth: tuple[int, int, int]):
    """The meta Flux with `depth` (double blocks, single blocks, T5 layers) in the compute dtype's weights."""
    from lorasmith.families.flux.meta import flux_part_config, meta_flux_base
    from lorasmith.memory.weights import quiet_diffusers

    configs = json.loads(configs_json) if configs_json else {}
    transformer = dict(flux_part_config("transformer", configs))
    t5 = dict(flux_part_config("text_encoder_2", configs))
    transformer["num_layers"], transformer["num_single_layers"], t5["num_layers"] = depth
    with quiet_diffusers():
        base = meta_flux_base({**configs, "transformer": transformer, "text_encoder_2": t5})
    base.vae = torch.nn.Module()
    return base


def tracked_flux_step(base, config, bucket: tuple[int, int], run=_META_OPS) -> StepMeasure:
    """One Flux training step of `base` as the trainer runs it (prepare, network, text, loss, backward), measured.

    `base` may be real (the tests) or on meta; its weights are put in the compute dtype first."""
    from lorasmith.families import family_behaviour
    from lorasmith.families.flux.text import FluxText, FluxTokens, encode_flux_tokens, t5_length
    from lorasmith.models.empty import empty_weights

    family = family_behaviour(base.family)
    spec = family.network_spec(config)
    dtype = autocast_dtype(config.mixed_precision) or torch.float32
    on_meta = next(base.unet.parameters()).device.type == "meta"
    for module in (base.unet, *base.text_encoders):
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(dtype)
    family.prepare_for_training(base, config, spec.train_text_encoder)
    if on_meta:
        with empty_weights():
            network = family.create_network(base, spec)
    else:
        network = family.create_network(base, spec)
    params = list(network.trainable_parameters())
    if config.full_bf16:
        for param in params:
            param.data = param.data.to(torch.bfloat16)
    text = text_mode(config, spec.train_text_encoder)
    device = next(base.unet.parameters()).device
    batch, (width, height) = config.train_batch_size, bucket
    length = t5_length(base, config.t5xxl_max_token_length)
    recipe = family.training_recipe(config)

    def forward() -> torch.Tensor:
        latents = torch.randn(batch, base.family.latent_channels, height // 8, width // 8, device=device, dtype=dtype)
        if text == "cached":
            t5_width = base.unet.config.joint_attention_dim
            states = FluxText(torch.zeros(batch, base.text_encoders[0].config.hidden_size, device=device, dtype=dtype),
                              torch.zeros(batch, length, t5_width, device=device, dtype=dtype),
                              torch.ones(batch, length, device=device))
        else:
            tokens = FluxTokens(torch.zeros(batch, 77, dtype=torch.long, device=device),
                                torch.zeros(batch, length, dtype=torch.long, device=device),
                                torch.ones(batch, length, dtype=torch.long, device=device))
            with torch.set_grad_enabled(text == "trained"):
                states = encode_flux_tokens(base, tokens, config.apply_t5_attn_mask)
        return family.training_loss(base, latents, states, _Batch(torch.ones(batch, device=device)),
                                    torch.Generator().manual_seed(0), recipe)

    return measured_step(params, config, text, forward, run if on_meta else None)


@dataclass
class _Batch:  # what training_loss reads of train.batches.TensorBatch
    weights: torch.Tensor
    masks: torch.Tensor | None = None


def fitted_peak(configs_json: str | None, bucket: tuple[int, int], key: tuple, depth: tuple[int, int, int],
                t5_runs: bool, offload: bool) -> int:
    """The step's peak at the real `depth`, extended linearly from the one- and two-block cuts.

    With `offload` (cpu_offload_checkpointing) the blocks' saved inputs live on the CPU: the GPU holds one
    block's at a time, so the one-block measurement stands for any depth."""
    one = (1, 1, 1)
    low = measured_point(configs_json, bucket, key, one)
    if offload:
        return low
    total = low
    for axis in range(3 if t5_runs else 2):
        if depth[axis] == 1:
            continue
        two = tuple(2 if i == axis else 1 for i in range(3))
        total += (depth[axis] - 1) * (measured_point(configs_json, bucket, key, two) - low)
    return total


def flux_step_key(config, names: tuple[str, ...] | None = None) -> tuple:
    """The settings of `config` that change the step (or only `names`), hashable."""
    from lorasmith.memory.estimate import STEP_FIELDS

    return tuple((name, tuple(v) if isinstance(v := getattr(config, name), list) else v)
                 for name in names or (*STEP_FIELDS, *FLUX_STEP_FIELDS))


def as_config(key: tuple):
    from lorasmith.config.schema import TrainConfig

    return TrainConfig(**{name: list(v) if isinstance(v, tuple) else v for name, v in key})


@lru_cache(maxsize=8)
@on_disk
def text_caching_bytes(configs_json: str | None, key: tuple, captions: int) -> int:
    """CLIP-L and T5 encoding `captions` captions without gradients (text_cache.captions_at_a_time)."""
    from lorasmith.families.flux.text import FluxTokens, encode_flux_tokens, t5_length

    config = as_config(key)
    base = cut_base(configs_json, (1, 1, 1))
    dtype = autocast_dtype(config.mixed_precision) or torch.float32
    for module in base.text_encoders:
        module.to(dtype=dtype)
    length = t5_length(base, config.t5xxl_max_token_length)
    with LiveBytes(run=_META_OPS) as live, CudaRules(autocast_dtype(config.mixed_precision)), torch.no_grad():
        tokens = FluxTokens(torch.zeros(captions, 77, dtype=torch.long, device="meta"),
                            torch.zeros(captions, length, dtype=torch.long, device="meta"),
                            torch.ones(captions, length, dtype=torch.long, device="meta"))
        encode_flux_tokens(base, tokens, config.apply_t5_attn_mask)
    return live.peak
