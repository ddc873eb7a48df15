"""The peft LoRA network: spec checks, targets, freezing, init, scale, state-dict round trip."""

from __future__ import annotations

import pytest
import torch

from lorasmith.errors import ConfigError, ModelError
from lorasmith.network.lora import LoraSpec, create_lora_network
from tests.unit.network.helpers import max_diff, model_inputs, outputs, randomize_up


@pytest.mark.parametrize("kwargs, field", [
    ({"rank": 0, "alpha": 1}, "network_dim"),
    ({"rank": 4, "alpha": -1}, "network_alpha"),
    ({"rank": 4, "alpha": 1, "conv_rank": -1}, "conv_dim"),
    ({"rank": 4, "alpha": 1, "conv_alpha": -2}, "conv_alpha"),
    ({"rank": 4, "alpha": 1, "dropout": 1.0}, "network_dropout"),
    ({"rank": 4, "alpha": 1, "train_unet": False, "train_text_encoder": False}, "network_train_unet_only"),
])
def test_spec_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        LoraSpec(**kwargs)


def test_spec_from_config_and_alpha_zero_means_rank():
    from lorasmith.config.schema import TrainConfig

    spec = LoraSpec.from_config(TrainConfig(network_dim=8, network_alpha=0, conv_dim=4, conv_alpha=0,
                                            network_train_unet_only=True))
    assert (spec.rank, spec.effective_alpha, spec.conv_rank, spec.effective_conv_alpha) == (8, 8.0, 4, 4.0)
    assert spec.train_unet and not spec.train_text_encoder
    # an unset conv_alpha is 1, as in sd-scripts' networks.lora (not conv_dim)
    assert LoraSpec.from_config(TrainConfig(conv_dim=4)).effective_conv_alpha == 1.0


def test_untrained_lora_is_a_no_op_and_base_is_frozen(tiny):
    base = tiny("sd1")
    inputs = model_inputs(base)
    before = outputs(base, inputs)
    network = create_lora_network(base, LoraSpec(rank=4, alpha=2))
    assert max_diff(before, outputs(base, inputs)) == 0.0
    trainable = {id(p) for p in network.trainable_parameters()}
    for component in (base.unet, *base.text_encoders):
        for param in component.parameters():
            assert param.requires_grad == (id(param) in trainable)
    assert all(torch.count_nonzero(m.up) == 0 and torch.count_nonzero(m.down) > 0 for m in network.modules)
    # SD1.x proj_in is a 1x1 conv: its LoRA is a conv too.
    proj_in = next(m for m in network.modules if m.key == "lora_unet_down_blocks_0_attentions_0_proj_in")
    assert tuple(proj_in.down.shape) == (4, 32, 1, 1)


def test_only_parts_asked_for_get_layers_and_param_groups_follow(tiny):
    base = tiny("sd2")
    network = create_lora_network(base, LoraSpec(rank=2, alpha=1, train_text_encoder=False))
    assert all(m.key.startswith("lora_unet_") for m in network.modules)
    assert [g["name"] for g in network.param_groups(1e-4, 5e-5)] == ["unet"]
    base = tiny("sd1")
    network = create_lora_network(base, LoraSpec(rank=2, alpha=1))
    groups = network.param_groups(unet_lr=1e-4, text_encoder_lr=5e-5)
    assert [(g["name"], g["lr"]) for g in groups] == [("textencoder", 5e-5), ("unet", 1e-4)]
    assert sum(len(g["params"]) for g in groups) == len(network.trainable_parameters()) == 2 * network.modules_count()
    assert [g["name"] for g in network.param_groups(1e-4, 0.0)] == ["unet"]  # lr 0: not trained, as sd-scripts


def test_conv_rank_adds_3x3_convs_at_their_own_rank_like_sd_scripts(tiny):
    base = tiny("sd1")
    plain = len(create_lora_network(tiny("sd1"), LoraSpec(rank=4, alpha=2)).modules)
    network = create_lora_network(base, LoraSpec(rank=4, alpha=2, conv_rank=2, conv_alpha=1))
    by_key = {m.key: m for m in network.modules}
    conv1 = by_key["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert tuple(conv1.down.shape) == (2, 32, 3, 3) and tuple(conv1.up.shape) == (32, 2, 1, 1) and conv1.alpha == 1
    assert conv1.layer.scaling["lorasmith"] == 0.5
    assert tuple(by_key["lora_unet_down_blocks_0_downsamplers_0_conv"].down.shape) == (2, 32, 3, 3)
    assert tuple(by_key["lora_unet_up_blocks_0_upsamplers_0_conv"].down.shape)[0] == 2
    # sd-scripts also wraps the Linear / 1x1 layers inside resnets, at the network rank.
    assert tuple(by_key["lora_unet_down_blocks_0_resnets_0_time_emb_proj"].down.shape)[0] == 4
    assert len(network.modules) > plain


def test_set_scale_zero_gives_base_output_and_scale_is_linear(tiny):
    base = tiny("sd1")
    inputs = model_inputs(base)
    before = outputs(base, inputs)
    network = create_lora_network(base, LoraSpec(rank=4, alpha=1))
    randomize_up(network)
    full = outputs(base, inputs)
    assert max_diff(before, full) > 1e-2
    network.set_scale(0.0)
    assert max_diff(before, outputs(base, inputs)) == 0.0
    layer = network.modules[0].layer  # one layer is linear in the multiplier
    x = torch.randn(3, network.modules[0].target.in_features)
    base_out = layer.get_base_layer()(x)
    network.set_scale(1.0)
    delta = layer(x) - base_out
    network.set_scale(0.5)
    assert torch.allclose(layer(x) - base_out, 0.5 * delta, atol=1e-6)


def test_state_dict_round_trip_is_exact_and_alpha_honoured(tiny):
    source = create_lora_network(tiny("sd1"), LoraSpec(rank=4, alpha=3))
    randomize_up(source)
    tensors = source.kohya_state_dict(torch.float32)
    assert tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"].item() == 3.0
    target_base = tiny("sd1")
    target = create_lora_network(target_base, LoraSpec(rank=4, alpha=1))  # alpha comes from the file
    target.load_kohya_state_dict(tensors)
    again = target.kohya_state_dict(torch.float32)
    assert tensors.keys() == again.keys() and all(torch.equal(tensors[k], again[k]) for k in tensors)
    inputs = model_inputs(target_base)
    assert max_diff(outputs(source.base, inputs), outputs(target_base, inputs)) == 0.0


def test_load_errors_name_the_key(tiny):
    network = create_lora_network(tiny("sd1"), LoraSpec(rank=4, alpha=1))
    tensors = network.kohya_state_dict()
    with pytest.raises(ModelError, match="lora_unet_bogus"):
        network.load_kohya_state_dict({**tensors, "lora_unet_bogus.lora_down.weight": torch.zeros(4, 4),
                                       "lora_unet_bogus.lora_up.weight": torch.zeros(4, 4)})
    first = next(iter(tensors)).split(".")[0]
    with pytest.raises(ModelError, match=first):
        network.load_kohya_state_dict({k: v for k, v in tensors.items() if not k.startswith(first + ".")})
    wrong = create_lora_network(tiny("sd1"), LoraSpec(rank=8, alpha=1)).kohya_state_dict()
    with pytest.raises(ModelError, match="network_dim"):
        network.load_kohya_state_dict(wrong)


def test_dropout_acts_on_the_down_output_only_in_training(tiny):
    base = tiny("sd1")
    network = create_lora_network(base, LoraSpec(rank=4, alpha=4, dropout=0.5, train_unet=False))
    randomize_up(network)
    module = network.modules[0]
    x = torch.randn(2, 5, module.target.in_features)
    module.layer.eval()
    assert torch.equal(module.layer(x), module.layer(x))
    module.layer.train()
    torch.manual_seed(0)
    hidden = module.layer.lora_A["lorasmith"](x)
    assert (hidden == 0).float().mean() > 0.3  # dropped after lora_A, as sd-scripts' network_dropout
    network.remove()
    assert type(base.text_encoders[0].get_submodule(module.target.ref.path)).__name__ == "Linear"


def test_max_norm_scales_only_the_modules_above_it_to_exactly_the_norm(tiny):
    from lorasmith.network.apply import delta_shape, lora_delta
    from lorasmith.network.kohya_tensors import LoraModuleTensors

    network = create_lora_network(tiny("sd1"), LoraSpec(rank=4, alpha=2, conv_rank=2, conv_alpha=1))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for index, module in enumerate(network.modules):
            module.up.copy_(torch.randn(module.up.shape, generator=generator) * (0.02 if index % 2 else 2.0))

    def norms():  # measured on the full weight change, the way merging computes it
        return [float(lora_delta(t, delta_shape(t)).norm()) for t in
                (LoraModuleTensors(m.down.detach(), m.up.detach(), m.alpha) for m in network.modules)]

    before = norms()
    above = sum(n > 1.0 for n in before)
    assert 0 < above < len(before)
    assert any(len(m.down.shape) == 4 and m.down.shape[-1] == 3 for m in network.modules)  # LoCon 3x3 too
    scaled, mean, largest = network.apply_max_norm(1.0)
    after = norms()
    assert scaled == above and largest == pytest.approx(1.0)
    for old, new in zip(before, after):
        assert new == pytest.approx(min(old, 1.0), rel=1e-4)
    assert mean == pytest.approx(sum(after) / len(after), rel=1e-4)


def test_lora_weights_stay_fp32_over_a_half_precision_base_and_train_under_autocast(tiny):
    base = tiny("sd1")
    base.unet.to(torch.bfloat16)  # as mixed precision loads the frozen base on a GPU
    for encoder in base.text_encoders:
        encoder.to(torch.bfloat16)
    network = create_lora_network(base, LoraSpec(rank=4, alpha=2, conv_rank=2))
    assert {p.dtype for p in network.trainable_parameters()} == {torch.float32}
    randomize_up(network)
    inputs = model_inputs(base)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = base.unet(inputs["sample"], 10, inputs["hidden"]).sample
    output.float().square().mean().backward()
    grads = [p.grad for m in network.modules if m.key.startswith("lora_unet_") for p in (m.down, m.up)]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
