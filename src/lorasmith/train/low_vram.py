"""The low-VRAM options of sd-scripts, each leaving the LoRA file as it would be without it.

    fp8_base / fp8_base_unet    frozen Linear (SD: and Conv2d) weights stored as float8_e4m3fn, brought to
                                the compute dtype per layer in forward; norms, embeddings and biases keep
                                theirs. The family says which modules (`mark_fp8`); the cast is done after
                                the LoRA is made (peft gives its layers the base layer's dtype).
    full_bf16                   the LoRA weights (so their gradients and optimizer state) in bf16
    cpu_offload_checkpointing   each checkpointed block's inputs kept in CPU memory until backward
    blocks_to_swap              Flux only (families/flux/block_swap.py); placed on the device here

The rule for fp8 compute: the weight is upcast to autocast's dtype when autocast is on, else to the
input's dtype. sd-scripts needs mixed precision for fp8 on a GPU and so do we; on the CPU (tests, no
accelerator) the compute is fp32 and fp8 is allowed, upcast to fp32.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from lorasmith.errors import ConfigError

FP8 = torch.float8_e4m3fn
_MARK = "_lorasmith_fp8"  # on a module the family wants in fp8: whether its Conv2d go too
SWAP = "lorasmith_block_swap"  # on a transformer whose blocks are swapped: its FluxBlockSwap


def check_low_vram(config: Any, on_gpu: bool) -> None:
    """One line for each low-VRAM option given where it cannot work."""
    fp8 = config.fp8_base or config.fp8_base_unet
    if fp8 and on_gpu and config.mixed_precision == "no":
        raise ConfigError("fp8_base needs mixed precision (sd-scripts too): set mixed_precision bf16 or fp16, "
                          "or turn fp8_base and fp8_base_unet off")
    if config.full_bf16 and config.mixed_precision != "bf16":
        raise ConfigError(f"full_bf16 needs mixed_precision bf16 (it is {config.mixed_precision}): set "
                          "mixed_precision bf16 or turn full_bf16 off")
    if config.cpu_offload_checkpointing and not config.gradient_checkpointing:
        raise ConfigError("cpu_offload_checkpointing offloads what gradient checkpointing saves: turn "
                          "gradient_checkpointing on or cpu_offload_checkpointing off")
    if config.blocks_to_swap and config.cpu_offload_checkpointing:
        raise ConfigError("blocks_to_swap and cpu_offload_checkpointing do not go together (sd-scripts refuses "
                          "them too): turn one of them off")


# ---- fp8 base weights ------------------------------------------------------------------------

def mark_fp8_base(base: Any, config: Any, text_encoders: list, convs: bool) -> None:
    """fp8_base: the denoiser and `text_encoders` (the family's choice); fp8_base_unet: the denoiser only."""
    for module in (base.unet, *base.text_encoders):
        setattr(module, _MARK, None)  # a base trained before in this process: this run's choice only
    if not (config.fp8_base or config.fp8_base_unet):
        return
    mark_fp8(base.unet, convs)
    for encoder in text_encoders if config.fp8_base and not config.fp8_base_unet else ():
        mark_fp8(encoder, False)


def mark_fp8(module: Any, convs: bool) -> None:
    """Ask for `module`'s frozen Linear (and with `convs`, Conv2d) weights in fp8; `store_marked_in_fp8` casts."""
    setattr(module, _MARK, convs)


def store_marked_in_fp8(modules: list) -> int:
    """Cast the marked modules' frozen layers to fp8 (an fp8 checkpoint's weights, upcast at load, come back
    exactly: every e4m3fn value is a bf16/fp32 value). Returns how many layers were cast."""
    return sum(store_in_fp8(m, getattr(m, _MARK)) for m in modules if getattr(m, _MARK, None) is not None)


def store_in_fp8(module: Any, convs: bool = False) -> int:
    kinds = (torch.nn.Linear, torch.nn.Conv2d) if convs else (torch.nn.Linear,)
    # the layer of the first parameter stays: diffusers (`model.dtype`) and our samplers read a model's
    # dtype from it, and it is a small input projection (Flux's timestep embedder, SD's conv_in)
    first = next(module.parameters(), None)
    count = 0
    for layer in module.modules():
        name = type(layer).__name__
        if name in ("T5DenseGatedActDense", "T5DenseActDense"):  # they cast their input to wo's dtype: fp8
            layer.forward = types.MethodType(_t5_gated if name == "T5DenseGatedActDense" else _t5_dense, layer)
        if not isinstance(layer, kinds) or layer.weight.requires_grad or layer.weight is first:  # LoRA's stay
            continue
        layer.weight.data = layer.weight.data.to(FP8)
        if not getattr(layer, "_lorasmith_upcast", False):
            forward = _conv if isinstance(layer, torch.nn.Conv2d) else _linear
            layer.forward, layer._lorasmith_upcast = types.MethodType(forward, layer), True
        count += 1
    return count


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype if x.dtype.is_floating_point else torch.float32


class _Fp8Layer(torch.autograd.Function):
    """A frozen fp8 Linear / Conv2d, upcast for the call. Its backward upcasts the fp8 weight again rather
    than keeping the upcast copy: what waits for backward is 1 byte a weight (autocast's cast, which
    sd-scripts relies on, keeps the bf16 copy of every layer until backward without checkpointing)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: Any, dtype: torch.dtype) -> torch.Tensor:
        ctx.layer, ctx.dtype, ctx.shape = layer, dtype, x.shape
        ctx.save_for_backward(layer.weight)  # the parameter itself: block swap may bring it back elsewhere
        weight, bias = layer.weight.to(dtype), None if layer.bias is None else layer.bias.to(dtype)
        if isinstance(layer, torch.nn.Conv2d):
            return layer._conv_forward(x, weight, bias)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (weight,) = ctx.saved_tensors
        weight, layer = weight.to(grad.dtype), ctx.layer
        if isinstance(layer, torch.nn.Conv2d):
            return torch.nn.grad.conv2d_input(ctx.shape, weight, grad, layer.stride, layer.padding, layer.dilation,
                                              layer.groups), None, None
        return grad @ weight, None, None


def _linear(self: Any, x: torch.Tensor) -> torch.Tensor:
    dtype = compute_dtype(x)
    return _Fp8Layer.apply(x.to(dtype), self, dtype)


def _conv(self: Any, x: torch.Tensor) -> torch.Tensor:
    dtype = compute_dtype(x)
    if self.padding_mode != "zeros" or isinstance(self.padding, str):  # conv2d_input takes numbers only
        bias = None if self.bias is None else self.bias.to(dtype)
        return self._conv_forward(x.to(dtype), self.weight.to(dtype), bias)
    return _Fp8Layer.apply(x.to(dtype), self, dtype)


def _t5_gated(self: Any, hidden: torch.Tensor) -> torch.Tensor:
    return self.wo(self.dropout(self.act(self.wi_0(hidden)) * self.wi_1(hidden)))  # sd-scripts does the same


def _t5_dense(self: Any, hidden: torch.Tensor) -> torch.Tensor:
    return self.wo(self.dropout(self.act(self.wi(hidden))))


# ---- full_bf16, cpu_offload_checkpointing ----------------------------------------------------

def cast_network(network: Any, config: Any) -> None:
    """full_bf16: the LoRA's weights in bf16, so their gradients and the optimizer's state are too."""
    if config.full_bf16:
        for parameter in network.trainable_parameters():
            parameter.data = parameter.data.to(torch.bfloat16)


def offloaded_checkpoint(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Gradient checkpointing whose saved block inputs wait in CPU memory (pinned on CUDA) until backward;
    the block runs on their device, its output stays there (what sd-scripts' cpu_offload_checkpointing does)."""
    from torch.utils.checkpoint import checkpoint

    device = next((t.device for t in _tensors(args)), torch.device("cpu"))

    def run(*inputs: Any) -> Any:
        return function(*_moved(inputs, device))

    return checkpoint(run, *_moved(args, torch.device("cpu")), use_reentrant=False, **kwargs)


def _tensors(value: Any):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=device.type != "cpu")  # differentiable: grads come back
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(item, device) for item in value)
    if isinstance(value, dict):
        return {key: _moved(item, device) for key, item in value.items()}
    return value


def enable_checkpointing(model: Any, config: Any) -> None:
    """diffusers' gradient checkpointing, with its saved inputs on the CPU for cpu_offload_checkpointing."""
    model.enable_gradient_checkpointing(offloaded_checkpoint if config.cpu_offload_checkpointing else None)


# ---- placing the base on the device ----------------------------------------------------------

def prepare_modules(accelerator: Any, modules: list, optimizer: Any) -> tuple:
    """accelerator.prepare, except that a swapping transformer goes to the device without its swapped blocks."""
    swap = getattr(modules[0], SWAP, None)
    if swap is None:
        return accelerator.prepare(*modules, optimizer)
    if accelerator.num_processes > 1:  # DDP wants every parameter on its device
        raise ConfigError(f"blocks_to_swap runs in one process, and this run has {accelerator.num_processes}; "
                          "set blocks_to_swap 0 or train on one GPU")
    prepared = accelerator.prepare(*modules, optimizer, device_placement=[False] + [True] * len(modules))
    swap.place(modules[0], accelerator.device)
    return prepared


def text_encoders_to(base: Any, device: Any) -> None:
    """Frozen text encoders whose outputs are cached leave the GPU until samples need them."""
    for encoder in base.text_encoders:
        encoder.to(device)


@contextmanager
def text_encoders_at_hand(base: Any, device: Any, parked: bool) -> Iterator[None]:
    """Parked text encoders on `device` for samples or validation, and back to the CPU after."""
    if parked:
        text_encoders_to(base, device)
    try:
        yield
    finally:
        if parked:
            text_encoders_to(base, "cpu")
