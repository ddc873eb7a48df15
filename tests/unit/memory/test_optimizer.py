"""The optimizer's state the planner counts is what the real optimizers keep after a step."""

from __future__ import annotations

import pytest
import torch

from lorasmith.memory.optimizer import state_bytes, step_scratch_bytes
from lorasmith.memory.tracking import LiveBytes

from .conftest import real_tiny, tiny_config

# every optimizer of the table that runs on a CPU (bitsandbytes' need CUDA)
CPU_OPTIMIZERS = ["AdamW", "Lion", "SGDNesterov", "Prodigy", "Adafactor", "DAdaptAdam", "DAdaptLion", "DAdaptSGD",
                  "DAdaptAdaGrad", "DAdaptAdan", "DAdaptAdamPreprint", "AdamWScheduleFree", "RAdamScheduleFree",
                  "SGDScheduleFree", "CAME"]


@pytest.fixture(scope="module")
def network():
    """A real LoRA (with LoCon, so 4-d weights too) on the tiny SD1 model."""
    from lorasmith.memory.activations import inject_network

    return inject_network(real_tiny("sd1"), tiny_config(conv_dim=4))


def _one_step(name: str, network, args=()):
    from lorasmith.train.optim import build_optimizer

    lr = 1.0 if name.startswith(("Prodigy", "DAdapt")) else 1e-4
    params = network.trainable_parameters()
    optimizer = build_optimizer(name, [{"params": params, "lr": lr}], lr, list(args))
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer.step()
    return optimizer, params


def _state_on_device(optimizer) -> int:
    """Bytes of the state tensors; torch's own `step` counters stay on the host unless capturable."""
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for key, value in state.items() if isinstance(value, torch.Tensor)
               and not (key == "step" and value.dim() == 0 and isinstance(optimizer, torch.optim.Optimizer)
                        and type(optimizer).__module__.startswith("torch.optim")))


@pytest.mark.parametrize("name", CPU_OPTIMIZERS)
def test_state_bytes_match_the_real_optimizer(name, network):
    optimizer, params = _one_step(name, network)
    shapes = tuple(tuple(p.shape) for p in params)
    assert state_bytes(name, shapes) == _state_on_device(optimizer)


def test_adafactor_with_a_first_moment(network):
    optimizer, params = _one_step("Adafactor", network, ["beta1=0.9", "relative_step=False"])
    shapes = tuple(tuple(p.shape) for p in params)
    assert state_bytes("Adafactor", shapes, ("beta1=0.9",)) == _state_on_device(optimizer)


def test_adamw_foreach_scratch_is_measured(network):
    params = network.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=True)  # CUDA's default; the CPU's is a loop
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer.step()  # the state is made
    with LiveBytes() as live:
        optimizer.step()
    assert step_scratch_bytes("AdamW", tuple(tuple(p.shape) for p in params)) == live.peak


def test_bitsandbytes_rule_small_tensors_stay_float32():
    # bitsandbytes' init_state: below min_8bit_size (4096) values, float32 states; else uint8 and an absmax per 256
    assert state_bytes("AdamW8bit", ((4095,),)) == 2 * 4095 * 4
    assert state_bytes("AdamW8bit", ((4096,),)) == 2 * (4096 + 16 * 4)
