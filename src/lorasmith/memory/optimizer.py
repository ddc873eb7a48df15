"""The optimizer's state on the GPU, per LoRA parameter, for each optimizer of train/optim.py's table.

The rules are read from each optimizer's `step` (the state it creates for a parameter), and the tests
check them against the real optimizers' state after a step for every one installed here.
bitsandbytes' (CUDA only) follow bitsandbytes/optim/optimizer.py: two (or one) uint8 states with a
float32 absmax per block of 256 values, and plain float32 states below `min_8bit_size` (4096) values.

Apart from the state, one step needs scratch space: torch's AdamW runs as `foreach` on CUDA (its
default there), which holds one temporary per parameter at once (measured in the tests); the
optimizers that loop over parameters need a few of the largest parameter's size at a time (a rule).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from lorasmith.memory.tracking import allocator_bytes

Shape = tuple[int, ...]
F32 = 4


def _numel(shape: Shape) -> int:
    return math.prod(shape)


def _full(count: int) -> Callable[[Shape, dict], list[int]]:
    """`count` float32 tensors of the parameter's size."""
    return lambda shape, options: [_numel(shape) * F32] * count


def _bnb(states: int) -> Callable[[Shape, dict], list[int]]:
    def sizes(shape: Shape, options: dict) -> list[int]:
        n = _numel(shape)
        if n < options.get("min_8bit_size", 4096):
            return [n * F32] * states
        return [n, -(-n // 256) * F32] * states  # uint8 state, float32 absmax per block of 256

    return sizes


def _factored(shape: Shape) -> list[int]:
    """Adafactor's and CAME's second moment: a row and a column for a matrix (or more), else full."""
    if len(shape) < 2:
        return [_numel(shape) * F32]
    return [_numel(shape[:-1]) * F32, _numel(shape[:-2] + shape[-1:]) * F32]


def _adafactor(shape: Shape, options: dict) -> list[int]:
    first = [_numel(shape) * F32] if options.get("beta1") is not None else []
    return first + _factored(shape) + [F32]  # + RMS, a 0-d tensor on the GPU


def _came(shape: Shape, options: dict) -> list[int]:
    residual = _factored(shape) if len(shape) >= 2 else []
    return [_numel(shape) * F32] + _factored(shape) + residual + [F32]


def _prodigy(shape: Shape, options: dict) -> list[int]:
    sliced = -(-_numel(shape) // int(options.get("slice_p", 1)))  # s and p0 keep every slice_p-th value
    return [sliced * F32] * 2 + [_numel(shape) * F32] * 2


@dataclass(frozen=True)
class OptimizerRule:
    state: Callable[[Shape, dict], list[int]]  # bytes of each state tensor a parameter of this shape gets
    foreach: bool = False  # torch's multi-tensor step: scratch of one tensor per parameter at once
    fused: bool = False  # one CUDA kernel per step: no scratch


RULES: dict[str, OptimizerRule] = {
    "adamw": OptimizerRule(_full(2), foreach=True),  # exp_avg, exp_avg_sq (step stays on the host)
    "adamw8bit": OptimizerRule(_bnb(2), fused=True),
    "pagedadamw": OptimizerRule(_full(2), fused=True),
    "pagedadamw8bit": OptimizerRule(_bnb(2), fused=True),
    "pagedadamw32bit": OptimizerRule(_full(2), fused=True),
    "lion": OptimizerRule(_full(1)),
    "lion8bit": OptimizerRule(_bnb(1), fused=True),
    "pagedlion8bit": OptimizerRule(_bnb(1), fused=True),
    "sgdnesterov": OptimizerRule(_full(1), foreach=True),  # momentum_buffer
    "sgdnesterov8bit": OptimizerRule(_bnb(1), fused=True),
    "dadaptation": OptimizerRule(_full(3)),
    "dadaptadampreprint": OptimizerRule(_full(3)),
    "dadaptadagrad": OptimizerRule(_full(3)),
    "dadaptadam": OptimizerRule(_full(3)),
    "dadaptadan": OptimizerRule(_full(5)),
    "dadaptadanip": OptimizerRule(_full(5)),
    "dadaptlion": OptimizerRule(_full(2)),
    "dadaptsgd": OptimizerRule(_full(3)),
    "prodigy": OptimizerRule(_prodigy),
    "adafactor": OptimizerRule(_adafactor),
    "radamschedulefree": OptimizerRule(_full(2)),
    "adamwschedulefree": OptimizerRule(_full(2)),
    "sgdschedulefree": OptimizerRule(_full(1)),
    "came": OptimizerRule(_came),
}
UNKNOWN = OptimizerRule(_full(2))  # a module.Class the table does not know: assumed Adam-like


def optimizer_rule(name: str) -> tuple[OptimizerRule, bool]:
    """(the rule for `name`, whether the table knows it)."""
    rule = RULES.get(name.lower())
    return (rule, True) if rule else (UNKNOWN, False)


def optimizer_options(optimizer_args: list[str]) -> dict:
    from lorasmith.train.optim import parse_name_value_args

    return parse_name_value_args(list(optimizer_args))


def state_bytes(name: str, shapes: tuple[Shape, ...], optimizer_args: tuple = ()) -> int:
    """The bytes of the state `name` keeps on the GPU for parameters of `shapes`."""
    rule, _ = optimizer_rule(name)
    options = optimizer_options(list(optimizer_args))
    return sum(size for shape in shapes for size in rule.state(shape, options))


def step_scratch_bytes(name: str, shapes: tuple[Shape, ...]) -> int:
    """Temporaries of one optimizer step, on top of the gradients and the state."""
    rule, _ = optimizer_rule(name)
    sizes = [allocator_bytes(_numel(shape) * F32) for shape in shapes]
    if rule.fused or not sizes:
        return 0
    return sum(sizes) if rule.foreach else 3 * max(sizes)  # a loop: a few temporaries of one parameter
