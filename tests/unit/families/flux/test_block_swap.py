"""blocks_to_swap: sd-scripts' split and limit, the schedule, and the same loss and gradients as no swap."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from lorasmith.errors import ConfigError
from lorasmith.families.flux.block_swap import BlockSwap, check_block_swap, enable_block_swap, swap_split


def test_sd_scripts_split_and_its_limit_on_flux_dev():
    assert swap_split(35) == (17, 36) and swap_split(16) == (8, 16) and swap_split(1) == (0, 2)
    check_block_swap(35, 19, 38)  # Flux.1-dev: 19 double, 38 single blocks
    with pytest.raises(ConfigError, match="set blocks_to_swap to at most 35$"):
        check_block_swap(36, 19, 38)
    with pytest.raises(ConfigError, match=r"at most 0 \(0: off\)"):
        check_block_swap(1, 1, 2)  # the tiny Flux keeps every block


def test_the_schedule_of_a_training_step_and_of_a_forward_without_grad():
    swap = BlockSwap([torch.nn.Linear(2, 2).requires_grad_(False) for _ in range(5)], 2)
    swap.capture("cpu")
    assert swap.resident() == [0, 1, 2]
    for index in range(5):
        swap.before_block(index)
        swap.after_block(index, training=True)
    assert list(swap.log) == [("out", 0), ("in", 3), ("out", 1), ("in", 4)] and swap.resident() == [2, 3, 4]
    swap.log.clear()
    for index in reversed(range(5)):
        swap.after_backward(index)
    assert list(swap.log) == [("out", 4), ("in", 1), ("out", 3), ("in", 0)] and swap.resident() == [0, 1, 2]
    swap.log.clear()
    for index in range(5):  # samples: each block leaves after use, the next missing one comes
        swap.before_block(index)
        swap.after_block(index, training=False)
    assert list(swap.log)[:4] == [("out", 0), ("in", 3), ("out", 1), ("in", 4)] and swap.resident() == [0, 1, 2]


def _tiny(layers: int = 4, singles: int = 6):
    from diffusers import FluxTransformer2DModel

    from lorasmith.families.flux.tiny import tiny_flux_base_model, tiny_flux_transformer_config

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**{**tiny_flux_transformer_config(), "num_layers": layers,
                                            "num_single_layers": singles})
    return replace(tiny_flux_base_model(), unet=transformer)


def _network(base):
    from lorasmith.families.flux.lora import FluxLoraSpec, create_flux_lora_network

    network = create_flux_lora_network(base, FluxLoraSpec(rank=4, alpha=4, train_text_encoder=False))
    torch.manual_seed(1)
    with torch.no_grad():
        for module in network.modules:
            module.up.normal_(std=0.1)  # a trained LoRA: gradients reach lora_down too
    return network


def _inputs():
    generator = torch.Generator().manual_seed(2)
    return dict(hidden_states=torch.randn(2, 16, 64, generator=generator),
                encoder_hidden_states=torch.randn(2, 8, 32, generator=generator),
                pooled_projections=torch.randn(2, 32, generator=generator), timestep=torch.tensor([0.3, 0.7]),
                img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5, 3.5]),
                return_dict=False)


def _step(base, network) -> tuple[float, list]:
    output = base.unet(**_inputs())[0]
    loss = output.float().pow(2).mean()
    loss.backward()
    grads = [p.grad.clone() for p in network.trainable_parameters()]
    network.base.unet.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.mark.parametrize("count,checkpointing", [(4, False), (3, True)])
def test_same_loss_and_gradients_as_without_swap(count, checkpointing):
    plain = _tiny()
    reference = _network(plain)
    expected = [_step(plain, reference) for _ in range(2)]
    base = _tiny()
    if checkpointing:
        base.unet.enable_gradient_checkpointing()
    network = _network(base)
    base.unet.train()
    # swapped-out blocks hold NaN: computing with one that is not back shows in the loss
    swap = enable_block_swap(base.unet, count, park="nan")
    swap.place(base.unet, "cpu")
    double, single = swap.swappers
    assert (double.count, single.count) == swap_split(count)
    last = list(base.unet.single_transformer_blocks[-1].parameters())
    assert all(p.isnan().all() for p in last if not p.requires_grad)  # frozen tensors out, the LoRA's stay
    assert all(not p.isnan().any() for p in last if p.requires_grad)
    for (loss, grads), (want_loss, want_grads) in zip([_step(base, network) for _ in range(2)], expected):
        assert loss == pytest.approx(want_loss, rel=1e-6)
        for got, want in zip(grads, want_grads):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert single.resident() == list(range(6 - single.count))  # back where a forward starts
    assert ("in", 0) in single.log and ("out", 5) in single.log
    with torch.no_grad():  # samples and validation: the forward-only schedule, the same output
        torch.testing.assert_close(base.unet(**_inputs())[0], plain.unet(**_inputs())[0])


def test_refused_where_it_cannot_apply():
    from lorasmith.config.schema import TrainConfig
    from lorasmith.families import unet
    from lorasmith.models.tiny import tiny_base_model
    from lorasmith.train.low_vram import check_low_vram

    with pytest.raises(ConfigError, match="^blocks_to_swap 4 swaps Flux.1 transformer blocks"):
        unet.prepare_for_training(tiny_base_model("sd1"), TrainConfig(blocks_to_swap=4), False)
    config = SimpleNamespace(fp8_base=False, fp8_base_unet=False, full_bf16=False, mixed_precision="bf16",
                             gradient_checkpointing=True, cpu_offload_checkpointing=True, blocks_to_swap=8)
    with pytest.raises(ConfigError, match="^blocks_to_swap and cpu_offload_checkpointing do not go together"):
        check_low_vram(config, on_gpu=True)
    base = _tiny(layers=1, singles=2)
    with pytest.raises(ConfigError, match="at most 0"):
        enable_block_swap(base.unet, 1)
