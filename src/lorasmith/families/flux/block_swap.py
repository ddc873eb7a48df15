"""blocks_to_swap: Flux blocks whose frozen weights live on the CPU and come to the GPU just ahead of use.

sd-scripts' split (library/flux_models.py `enable_block_swap`): N // 2 double blocks and (N - N // 2) x 2
single blocks, each list keeping at least 2 blocks resident (so Flux.1-dev, 19 + 38 blocks, takes up to 35).
Its schedule (custom_offloading_utils.ModelOffloader), per list of n blocks with k swapped:

    before forward   blocks [0, n-k) on the GPU, [n-k, n) on the CPU
    forward          after block i < k runs: block i leaves, block n-k+i comes      -> [k, n) on the GPU
    backward         after block b's backward (b = n-2 ... n-k-1): block b+1 leaves and block k-(n-b-1)
                     comes, waited for before block b-1's backward                 -> back to the start
    no grad          (samples, validation) after every block i: i leaves, (n-k+i) % n comes

Unlike sd-scripts only the frozen base tensors move (the LoRA weights, children of the layers, stay on the
GPU with their optimizer state), and as they never change a block's CPU copy is kept: leaving the GPU is
dropping the GPU copy, no copy back. On CUDA a block comes on a side stream (pinned memory, non_blocking)
and the compute stream waits on its event, so the copy overlaps the blocks before it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from lorasmith.errors import ConfigError

KEEP = 2  # blocks of each list that never leave the GPU (sd-scripts' limit)


def swap_split(count: int) -> tuple[int, int]:
    """(double blocks, single blocks) that blocks_to_swap `count` swaps, as sd-scripts splits it."""
    double = count // 2
    return double, (count - double) * 2


def check_block_swap(count: int, doubles: int, singles: int) -> None:
    """One line when the model cannot swap `count` blocks."""
    double, single = swap_split(count)
    if count < 0 or double > doubles - KEEP or single > singles - KEEP:
        most = max((n for n in range(2 * (doubles + singles)) if swap_split(n)[0] <= doubles - KEEP
                    and swap_split(n)[1] <= singles - KEEP), default=0)
        raise ConfigError(f"blocks_to_swap {count} swaps {double} double and {single} single blocks, but this "
                          f"Flux model has {doubles} and {singles} and keeps {KEEP} of each on the GPU; set "
                          f"blocks_to_swap to at most {most}" + (" (0: off)" if most == 0 else ""))


class _Reached(torch.autograd.Function):
    """Identity on a block's input whose backward says that the block's backward is done."""

    @staticmethod
    def forward(ctx: Any, callback: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.callback = callback
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        ctx.callback()
        return None, grad


@dataclass
class BlockSwap:
    """Swaps the frozen weights of the last `count` of `blocks` between `device` and their CPU copies.

    `park` is what a swapped-out block's tensors hold: "cpu" (their copy) or, in tests, "nan", so that
    computing with a block that is not resident shows instead of quietly working on the CPU."""

    blocks: list
    count: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    park: str = "cpu"
    log: deque = field(default_factory=lambda: deque(maxlen=512))  # ("in" | "out", block): the latest moves
    _homes: list = field(default_factory=list, repr=False)  # per block: [(parameter, CPU copy)]
    _pending: dict = field(default_factory=dict, repr=False)  # block -> CUDA event of its copy
    _resident: set = field(default_factory=set, repr=False)
    _stream: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._homes = [[(p, p.data) for p in block.parameters() if not p.requires_grad] for block in self.blocks]

    @property
    def n(self) -> int:
        return len(self.blocks)

    def resident(self) -> list[int]:
        return sorted(self._resident)

    # ---- placement ---------------------------------------------------------------------------

    def capture(self, device: Any) -> None:
        """Take each block's CPU copy (pinned for async copies on CUDA) before anything moves to `device`."""
        self.device = torch.device(device)
        if self.device.type == "cuda":
            self._stream = torch.cuda.Stream(self.device)
        self._homes = [[(p, _pinned(p.data.to("cpu"), self.device)) for p, _ in pairs] for pairs in self._homes]
        self._resident = set(range(self.n - self.count))

    def swapped_out(self) -> set[int]:
        """ids of the tensors that start on the CPU: the frozen ones of the last `count` blocks."""
        return {id(p) for pairs in self._homes[self.n - self.count:] for p, _ in pairs}

    def settle(self) -> None:
        """Back to the layout a forward starts from, whatever happened (a forward without backward)."""
        for index in list(self._pending):
            self._wait(index)
        for index in range(self.n):
            if index < self.n - self.count and index not in self._resident:
                self._fetch(index)
                self._wait(index)
            elif index >= self.n - self.count and index in self._resident:
                self._drop(index)

    def _fetch(self, index: int) -> None:
        self.log.append(("in", index))
        if self._stream is None:
            for p, home in self._homes[index]:
                p.data = home.to(self.device)
        else:
            compute = torch.cuda.current_stream(self.device)
            self._stream.wait_stream(compute)  # the memory it reuses may still be read by queued kernels
            with torch.cuda.stream(self._stream):
                for p, home in self._homes[index]:
                    p.data = home.to(self.device, non_blocking=True)
                    p.data.record_stream(compute)  # freed later only once the compute stream is past it
                event = torch.cuda.Event()
                event.record(self._stream)
            self._pending[index] = event
        self._resident.add(index)

    def _drop(self, index: int) -> None:
        self.log.append(("out", index))
        for p, home in self._homes[index]:
            p.data = self.parked(home)
        self._resident.discard(index)

    def parked(self, home: torch.Tensor) -> torch.Tensor:
        return home if self.park == "cpu" else torch.full_like(home, float("nan"))

    def _wait(self, index: int) -> None:
        event = self._pending.pop(index, None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def _swap(self, out: int, come: int) -> None:
        self._drop(out)
        self._fetch(come)

    # ---- the schedule ------------------------------------------------------------------------

    def before_block(self, index: int) -> None:
        self._wait(index)
        if index not in self._resident:
            raise RuntimeError(f"block swap: block {index} is not on {self.device} when it runs")

    def after_block(self, index: int, training: bool) -> None:
        if not self.count:
            return
        if not training:
            self._swap(index, (self.n - self.count + index) % self.n)
        elif index < self.count:
            self._swap(index, self.n - self.count + index)

    def after_backward(self, index: int) -> None:
        propagated = self.n - index - 1
        if 0 < propagated <= self.count:
            self._swap(self.n - propagated, self.count - propagated)
        if 0 < index <= self.count:
            self._wait(index - 1)


def _pinned(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return tensor
    try:
        return tensor.pin_memory()
    except RuntimeError:  # no pinned memory left: the copies are then synchronous, still correct
        return tensor


@dataclass
class FluxBlockSwap:
    """Both swappers of a FluxTransformer2DModel and the hooks that drive them."""

    double: BlockSwap
    single: BlockSwap
    handles: list = field(default_factory=list)
    in_forward: bool = False
    training: bool = False

    @property
    def swappers(self) -> tuple[BlockSwap, BlockSwap]:
        return self.double, self.single

    def place(self, transformer: Any, device: Any) -> None:
        """Everything but the swapped blocks' frozen tensors to `device` (never the whole model at once)."""
        for swapper in self.swappers:
            swapper.capture(device)
        homes = {id(p): (swapper, home) for swapper in self.swappers for pairs in swapper._homes for p, home in pairs}
        parked = set().union(*(swapper.swapped_out() for swapper in self.swappers))
        for module in transformer.modules():
            for p in module.parameters(recurse=False):
                if id(p) in parked:
                    swapper, home = homes[id(p)]
                    p.data = swapper.parked(home)
                else:
                    p.data = p.data.to(device)
            for name, buffer in module.named_buffers(recurse=False):
                module._buffers[name] = buffer.to(device)

    def remove(self) -> None:
        """Take the hooks out; every swapped tensor back to its CPU copy (the model is then placed anew)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for swapper in self.swappers:
            for pairs in swapper._homes:
                for p, home in pairs:
                    p.data = home


def enable_block_swap(transformer: Any, count: int, park: str = "cpu") -> FluxBlockSwap:
    """Hook block swapping into diffusers' FluxTransformer2DModel; `place(transformer, device)` then
    puts it on the device. The hooks act in the forward proper, not in gradient checkpointing's recompute."""
    doubles, singles = transformer.transformer_blocks, transformer.single_transformer_blocks
    check_block_swap(count, len(doubles), len(singles))
    double, single = swap_split(count)
    swap = FluxBlockSwap(BlockSwap(list(doubles), double, park=park), BlockSwap(list(singles), single, park=park))

    def start(module: Any, args: tuple) -> None:
        swap.in_forward, swap.training = True, torch.is_grad_enabled()
        for swapper in swap.swappers:
            swapper.settle()

    def end(module: Any, args: tuple, output: Any) -> None:
        swap.in_forward = False

    swap.handles += [transformer.register_forward_pre_hook(start), transformer.register_forward_hook(end)]
    for swapper in swap.swappers:
        for index, block in enumerate(swapper.blocks):
            swap.handles += _block_hooks(swap, swapper, index, block)
    return swap


def _block_hooks(swap: FluxBlockSwap, swapper: BlockSwap, index: int, block: Any) -> list:
    def before(module: Any, args: tuple, kwargs: dict) -> Any:
        if swap.in_forward:
            swapper.before_block(index)
        # the marker goes in during recompute too, so that both runs make the same operations
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if not (swap.training and isinstance(hidden, torch.Tensor) and hidden.requires_grad):
            return None
        marked = _Reached.apply(lambda: swapper.after_backward(index), hidden)
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": marked}
        return (marked, *args[1:]), kwargs

    def after(module: Any, args: tuple, output: Any) -> None:
        if swap.in_forward:
            swapper.after_block(index, swap.training)

    return [block.register_forward_pre_hook(before, with_kwargs=True), block.register_forward_hook(after)]
