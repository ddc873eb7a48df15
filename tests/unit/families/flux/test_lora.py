"""The Flux LoRA network on the tiny Flux: no-op when untrained, merge parity, round trips, args, groups, grads."""

from __future__ import annotations

import pytest
import torch

from lorasmith.errors import ConfigError, ModelError
from lorasmith.families.flux.lora import CHILD, FluxLoraSpec, create_flux_lora_network
from lorasmith.families.flux.lora_targets import FluxArgs, unknown_flux_args
from lorasmith.families.flux.merge import merge_flux_loras
from lorasmith.families.flux.tiny import tiny_flux_base_model

ALL = ["train_t5xxl=True", "in_dims=[2,2,2,2,2]"]  # every kind of module the tiny Flux has


def spec(rank=4, alpha=2.0, args=(), **kwargs) -> FluxLoraSpec:
    return FluxLoraSpec(rank=rank, alpha=alpha, args=FluxArgs.parse(list(args)), **kwargs)


def inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(2, 16, 64, generator=g),
            "encoder_hidden_states": torch.randn(2, 8, 32, generator=g),
            "pooled_projections": torch.randn(2, 32, generator=g), "timestep": torch.rand(2, generator=g),
            "img_ids": torch.rand(16, 3, generator=g), "txt_ids": torch.zeros(8, 3), "guidance": torch.full((2,), 3.5),
            "ids": torch.randint(0, 1000, (2, 12), generator=g)}


@torch.no_grad()
def outputs(base, x: dict) -> list[torch.Tensor]:
    """[transformer output, CLIP-L's last hidden state, T5's] for fixed inputs."""
    kwargs = {k: v for k, v in x.items() if k != "ids" and (k != "guidance" or base.unet.config.guidance_embeds)}
    return [base.unet(**kwargs, return_dict=False)[0]] + [e(x["ids"]).last_hidden_state for e in base.text_encoders]


def max_diff(a: list, b: list) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def randomize_up(network, seed: int = 1, std: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules:
            module.up.copy_(torch.randn(module.up.shape, generator=g) * std)


@pytest.fixture
def base():
    return tiny_flux_base_model("dev", seed=0)


@pytest.mark.parametrize("kwargs, field", [
    ({"rank": 0, "alpha": 1}, "network_dim"), ({"rank": 4, "alpha": -1}, "network_alpha"),
    ({"rank": 4, "alpha": 1, "dropout": 1.0}, "network_dropout"),
    ({"rank": 4, "alpha": 1, "train_unet": False, "train_text_encoder": False}, "network_train_unet_only"),
])
def test_spec_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        FluxLoraSpec(**kwargs)


def test_spec_from_config_reads_sd_scripts_keys():
    from lorasmith.config.schema import TrainConfig

    config = TrainConfig(network_dim=8, network_alpha=0, network_dropout=0.1, network_train_unet_only=True,
                         network_args=["train_blocks=single", "in_dims=4,0,0,0,4"])
    found = FluxLoraSpec.from_config(config)
    assert (found.rank, found.effective_alpha(8), found.dropout) == (8, 8.0, 0.1)
    assert found.train_unet and not found.train_text_encoder and not found.train_t5xxl
    assert found.args == FluxArgs(train_blocks="single", in_dims=(4, 0, 0, 0, 4))


def test_args_parse_as_sd_scripts_reads_them():
    args = FluxArgs.parse(["train_blocks = double", "train_double_block_indices=0,1,4-5",
                           "train_single_block_indices=none", "img_attn_dim=8", "single_mod_dim=0",
                           "in_dims=[4,2,2,2,4]", "train_t5xxl=True", "split_qkv=False", "verbose=True"])
    assert args == FluxArgs(train_blocks="double", double_blocks=((0, 0), (1, 1), (4, 5)), single_blocks=(),
                            type_dims=(("img_attn", 8), ("single_mod", 0)), in_dims=(4, 2, 2, 2, 4), train_t5xxl=True)
    assert FluxArgs.parse(["train_double_block_indices=all"]).double_blocks is None


@pytest.mark.parametrize("item, words", [
    ("train_blocks=some", "all, single or double"), ("train_t5xxl=true", "True or False"),
    ("in_dims=[4,2,2]", "5 ranks"), ("img_mlp_dim=-1", "img_mlp_dim must be a whole number"),
    ("train_single_block_indices=3-1", "0,1,4-5"), ("rank_dropout=0.1", "not trained by lorasmith's Flux.1 LoRA yet"),
    ("loraplus_lr_ratio=16", "loraplus_lr_ratio is not trained"), ("down_lr_weight=1", "down_lr_weight is not read"),
    ("split_qkv=True", "1/3 of the trained strength"), ("train_blocks", "not name=value"),
])
def test_args_errors_say_what_to_do(item, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        FluxArgs.parse([item])


def test_unknown_flux_args_lists_each_problem_once():
    lines = unknown_flux_args({"train_blocks": "single", "typo_dim": "4", "split_qkv": "True", "verbose": "True"})
    assert len(lines) == 2 and "typo_dim" in lines[0] and "split_qkv" in lines[1]


def test_block_index_past_the_model_is_an_error(base):
    with pytest.raises(ConfigError, match="train_double_block_indices names block 1.*has 1"):
        create_flux_lora_network(base, spec(args=["train_double_block_indices=0-1"]))


@pytest.mark.parametrize("args, unet_only, expected", [
    ([], False, 18 + 10 + 6), ([], True, 16), (["train_blocks=single"], True, 6), (["train_blocks=double"], True, 10),
    (["train_t5xxl=True"], False, 18 + 14 + 16), (["in_dims=[4,2,2,2,4]"], True, 16 + 8),
    (["train_single_block_indices=1", "train_double_block_indices=none"], True, 3),
    (["img_attn_dim=2", "txt_attn_dim=0", "img_mlp_dim=0", "txt_mlp_dim=0", "img_mod_dim=0", "txt_mod_dim=0",
      "single_mod_dim=0"], True, 2 + 4),
])
def test_module_counts_follow_the_args(base, args, unet_only, expected):
    network = create_flux_lora_network(base, spec(args=args, train_text_encoder=not unet_only))
    assert network.modules_count() == expected


def test_schnell_has_no_guidance_in():
    network = create_flux_lora_network(tiny_flux_base_model("schnell"), spec(args=["in_dims=[4,2,2,2,4]"],
                                                                              train_text_encoder=False))
    assert network.modules_count() == 16 + 6 and not any("guidance" in m.key for m in network.modules)


def test_shapes_ranks_alphas_and_init(base):
    network = create_flux_lora_network(base, spec(rank=4, alpha=0, args=["img_attn_dim=8", "in_dims=[2,0,0,0,0]"]))
    modules = {m.key: m for m in network.modules}
    qkv, linear1 = modules["lora_unet_double_blocks_0_img_attn_qkv"], modules["lora_unet_single_blocks_0_linear1"]
    assert (tuple(qkv.down.shape), tuple(qkv.up.shape), qkv.alpha) == ((8, 32), (96, 8), 8.0)  # alpha 0 = rank
    assert [(s.path.split(".")[-1], s.start, s.stop) for s in qkv.target.splits] == [
        ("to_q", 0, 32), ("to_k", 32, 64), ("to_v", 64, 96)]
    assert (tuple(linear1.up.shape), [s.stop for s in linear1.target.splits]) == ((224, 4), [32, 64, 96, 224])
    assert tuple(modules["lora_unet_img_in"].down.shape) == (2, 64)
    assert all(m.up.abs().sum() == 0 and m.down.abs().sum() > 0 and m.down.dtype == torch.float32
               for m in network.modules)
    # per-type and in_dims ranks keep network_alpha, as sd-scripts: scale = alpha / their own rank
    network.remove()
    network = create_flux_lora_network(base, spec(rank=4, alpha=16, args=["img_attn_dim=8"]))
    assert {m.key: m.scale for m in network.modules}["lora_unet_double_blocks_0_img_attn_qkv"] == 2.0


def test_untrained_lora_changes_nothing_and_the_base_is_frozen(base):
    x = inputs()
    before = outputs(base, x)
    network = create_flux_lora_network(base, spec(args=ALL))
    assert max_diff(before, outputs(base, x)) == 0
    trainable = {id(p) for p in network.trainable_parameters()}
    for part in (base.unet, *base.text_encoders):
        assert all(p.requires_grad == (id(p) in trainable) for p in part.parameters())


def test_merge_of_the_saved_file_matches_the_live_network(base):
    x = inputs()
    network = create_flux_lora_network(base, spec(rank=4, alpha=3.0, args=ALL))
    randomize_up(network)
    live = outputs(base, x)
    fresh = tiny_flux_base_model("dev", seed=0)
    plain = outputs(fresh, x)
    assert all(max_diff([a], [b]) > 1e-3 for a, b in zip(live, plain))  # every part changed
    with merge_flux_loras(fresh, [(network.kohya_state_dict(torch.float32), 1.0)]) as applied:
        assert applied.modules_touched == network.modules_count()
        assert max_diff(live, outputs(fresh, x)) < 1e-5
    assert max_diff(plain, outputs(fresh, x)) == 0  # restored bit for bit


def test_set_scale_is_linear_and_zero_is_the_base(base):
    x = inputs()
    before = outputs(base, x)
    network = create_flux_lora_network(base, spec(args=ALL))
    randomize_up(network)
    full = outputs(base, x)
    network.set_scale(0.0)
    assert max_diff(before, outputs(base, x)) == 0
    network.set_scale(0.5)
    half = outputs(base, x)
    assert max_diff(half, before) > 0 and max_diff(half, full) > 0
    module, features = network.modules[0], torch.randn(3, network.modules[0].down.shape[1])
    assert torch.allclose(module.rows_output(features, 0, 4) * 2, module.rows_output(features, 0, 4).new_tensor(
        ((features @ module.down.T) @ module.up[:4].T * module.scale).tolist()), atol=1e-6)


def test_remove_restores_the_base_exactly(base):
    x = inputs()
    before, keys = outputs(base, x), [set(p.state_dict()) for p in (base.unet, *base.text_encoders)]
    network = create_flux_lora_network(base, spec(args=ALL))
    randomize_up(network)
    assert max_diff(before, outputs(base, x)) > 0
    network.remove()
    assert max_diff(before, outputs(base, x)) == 0 and network.modules == []
    assert keys == [set(p.state_dict()) for p in (base.unet, *base.text_encoders)]
    for part in (base.unet, *base.text_encoders):
        assert not any(m._forward_hooks or hasattr(m, CHILD) for m in part.modules())


def test_lora_weights_live_inside_the_components(base):
    network = create_flux_lora_network(base, spec(args=ALL))
    names = {n for n, _ in base.unet.named_parameters()}
    assert f"transformer_blocks.0.attn.to_q.{CHILD}.lora_down.weight" in names
    assert f"x_embedder.{CHILD}.lora_up.weight" in names
    assert all(m.down.device == base.unet.x_embedder.weight.device for m in network.modules)


def test_save_and_load_round_trip(base, tmp_path):
    from lorasmith.network.files import load_lora_file, save_lora_file

    x = inputs()
    network = create_flux_lora_network(base, spec(rank=4, alpha=3.0, args=ALL))
    randomize_up(network)
    saved = network.kohya_state_dict(torch.float32)
    path = save_lora_file(tmp_path / "flux.safetensors", saved, {"ss_network_module": "networks.lora_flux"})
    live = outputs(base, x)
    fresh = tiny_flux_base_model("dev", seed=0)
    other = create_flux_lora_network(fresh, spec(rank=4, alpha=1.0, args=ALL))
    other.load_kohya_state_dict(load_lora_file(path)[0])
    assert all(torch.equal(saved[k], v) for k, v in other.kohya_state_dict(torch.float32).items())
    assert max_diff(live, outputs(fresh, x)) < 1e-6
    # the default precision is sd-scripts' fp16; alpha is a 0-d tensor
    half = network.kohya_state_dict()
    assert half["lora_unet_txt_in.alpha"].shape == () and half["lora_unet_txt_in.lora_up.weight"].dtype == torch.float16


def test_load_errors_name_the_key_and_shape(base):
    network = create_flux_lora_network(base, spec(rank=4))
    good = network.kohya_state_dict(torch.float32)
    extra = {**good, "lora_unet_img_in.lora_down.weight": torch.zeros(4, 64), "lora_unet_img_in.lora_up.weight":
             torch.zeros(32, 4)}
    with pytest.raises(ModelError, match="'lora_unet_img_in', which this network does not train"):
        network.load_kohya_state_dict(extra)
    short = {k: v for k, v in good.items() if not k.startswith("lora_unet_single_blocks_1_linear2")}
    with pytest.raises(ModelError, match="no weights for 'lora_unet_single_blocks_1_linear2'"):
        network.load_kohya_state_dict(short)
    key = "lora_unet_double_blocks_0_img_attn_qkv"
    split = {**good, f"{key}.lora_down.weight": torch.zeros(12, 32), f"{key}.lora_up.weight": torch.zeros(96, 12)}
    with pytest.raises(ModelError, match=rf"'{key}.lora_down.weight' has shape \[12, 32\].*\[4, 32\]"):
        network.load_kohya_state_dict(split)
    with pytest.raises(ModelError, match="lora_A"):
        network.load_kohya_state_dict({"transformer.x_embedder.lora_A.weight": torch.zeros(4, 64)})


def test_param_groups_text_encoders_first_and_zero_lr_left_out(base):
    network = create_flux_lora_network(base, spec(args=["train_t5xxl=True"]))
    groups = network.param_groups(1e-4, 5e-5)
    assert [(g["name"], g["lr"]) for g in groups] == [("textencoder", 5e-5), ("unet", 1e-4)]
    assert len(groups[0]["params"]) == 2 * (18 + 14) and len(groups[1]["params"]) == 2 * 16
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in network.trainable_parameters()}
    assert [g["name"] for g in network.param_groups(1e-4, 0)] == ["unet"]
    assert [g["name"] for g in network.param_groups(0, 1e-4)] == ["textencoder"]


def test_gradients_reach_only_the_lora(base):
    network = create_flux_lora_network(base, spec(args=ALL))
    randomize_up(network)
    base.unet.train()
    x = inputs()
    kwargs = {k: v for k, v in x.items() if k != "ids"}
    loss = base.unet(**kwargs, return_dict=False)[0].square().mean()
    loss = loss + sum(e(x["ids"]).last_hidden_state.square().mean() for e in base.text_encoders)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.trainable_parameters())
    trainable = {id(p) for p in network.trainable_parameters()}
    assert all(p.grad is None for part in (base.unet, *base.text_encoders) for p in part.parameters()
               if id(p) not in trainable)


def test_dropout_drops_the_down_output_while_training(base):
    network = create_flux_lora_network(base, spec(rank=4, alpha=4, dropout=0.5, train_text_encoder=False))
    randomize_up(network)
    module = network.modules[0]  # double block 0 img_mod_lin: over norm1.linear
    x = torch.randn(3, 32)
    module.weights.train()
    torch.manual_seed(7)
    got = module.rows_output(x, 0, module.up.shape[0])
    torch.manual_seed(7)
    expected = torch.nn.functional.dropout(x @ module.down.T, p=0.5) @ module.up.T
    assert torch.allclose(got, expected, atol=1e-6)
    module.weights.eval()
    assert torch.allclose(module.rows_output(x, 0, 8), (x @ module.down.T) @ module.up[:8].T, atol=1e-6)
    base.unet.train()
    kwargs = {k: v for k, v in inputs().items() if k != "ids"}
    with torch.no_grad():
        a, b = (base.unet(**kwargs, return_dict=False)[0] for _ in range(2))
    assert not torch.equal(a, b)
    base.unet.eval()
    with torch.no_grad():
        a, b = (base.unet(**kwargs, return_dict=False)[0] for _ in range(2))
    assert torch.equal(a, b)


def test_fp32_lora_over_a_bf16_base(base):
    base.unet.to(torch.bfloat16)
    network = create_flux_lora_network(base, spec(train_text_encoder=False))
    randomize_up(network)
    assert all(p.dtype == torch.float32 for p in network.trainable_parameters())
    kwargs = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in inputs().items() if k != "ids"}
    with torch.no_grad():
        out = base.unet(**kwargs, return_dict=False)[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_apply_max_norm_bounds_the_fused_change(base):
    network = create_flux_lora_network(base, spec(rank=4, alpha=4, train_text_encoder=False))
    randomize_up(network, std=1.0)
    scaled, mean, largest = network.apply_max_norm(1.0)
    norms = [float((m.up @ m.down).detach().norm()) * m.scale for m in network.modules]
    assert scaled == network.modules_count() and max(norms) == pytest.approx(1.0, rel=1e-4)
    assert (mean, largest) == (pytest.approx(1.0), pytest.approx(1.0))


def test_train_t5xxl_needs_a_t5(base):
    base.text_encoders = base.text_encoders[:1]
    with pytest.raises(ModelError, match="without its T5"):
        create_flux_lora_network(base, spec(args=["train_t5xxl=True"]))
    assert create_flux_lora_network(base, spec()).modules_count() == 34
