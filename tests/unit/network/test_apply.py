"""Merging kohya LoRAs into base weights: parity with the live network, several LoRAs, exact restore."""

from __future__ import annotations

import pytest
import torch

from lorasmith.errors import ModelError
from lorasmith.network.apply import apply_loras
from lorasmith.network.files import save_lora_file
from lorasmith.network.lora import LoraSpec, create_lora_network
from tests.unit.network.helpers import max_diff, model_inputs, outputs, randomize_up


def trained_lora(tiny, family: str, spec: LoraSpec, seed: int = 1):
    """(kohya tensors, outputs of the model with the live LoRA at scale 1, inputs)."""
    base = tiny(family)
    network = create_lora_network(base, spec)
    randomize_up(network, seed=seed)
    inputs = model_inputs(base)
    return network.kohya_state_dict(torch.float32), outputs(base, inputs), inputs


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_merge_equals_the_live_network_including_locon(tiny, family):
    spec = LoraSpec(rank=4, alpha=2, conv_rank=2, conv_alpha=1)
    tensors, live, inputs = trained_lora(tiny, family, spec)
    base = tiny(family)
    original = {k: v.clone() for k, v in base.unet.state_dict().items()}
    applied = apply_loras(base, [(tensors, 1.0)])
    assert applied.modules_touched == len(tensors) // 3
    assert max_diff(outputs(base, inputs), live) < 1e-4
    applied.restore()
    assert all(torch.equal(v, original[k]) for k, v in base.unet.state_dict().items())


def test_several_loras_each_at_its_weight_and_bit_exact_restore(tiny, tmp_path):
    first, _, inputs = trained_lora(tiny, "sd1", LoraSpec(rank=4, alpha=4), seed=1)
    second, _, _ = trained_lora(tiny, "sd1", LoraSpec(rank=2, alpha=1, train_text_encoder=False), seed=2)
    path = save_lora_file(tmp_path / "first.safetensors", first, {}, precision="fp16")
    base = tiny("sd1")
    before = outputs(base, inputs)
    weights = {k: v.clone() for c in (base.unet, *base.text_encoders) for k, v in c.state_dict().items()}
    applied = apply_loras(base, [(str(path), 0.7), (second, -0.5)])
    merged = outputs(base, inputs)
    assert max_diff(before, merged) > 1e-2
    # Same as merging the deltas by hand: W + 0.7 * (4/4) up1@down1 - 0.5 * (1/2) up2@down2.
    name = "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    layer = base.unet.up_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    f16 = {k: v.half().float() for k, v in first.items()}
    expected = (applied.originals[f"{name}.weight"][1]
                + 0.7 * f16[f"{name}.lora_up.weight"] @ f16[f"{name}.lora_down.weight"]
                - 0.25 * second[f"{name}.lora_up.weight"] @ second[f"{name}.lora_down.weight"])
    assert torch.allclose(layer.weight, expected, atol=1e-6)
    applied.restore()
    now = {k: v for c in (base.unet, *base.text_encoders) for k, v in c.state_dict().items()}
    assert all(torch.equal(now[k], weights[k]) for k in weights)
    assert max_diff(before, outputs(base, inputs)) == 0.0


def sd_scripts_style_file(base, rank: int, alpha: float) -> dict:
    """A LoRA built by the reference doc's rules alone, fp16, as sd-scripts writes it."""
    generator = torch.Generator().manual_seed(3)
    tensors = {}

    def add(key: str, layer):
        conv = isinstance(layer, torch.nn.Conv2d)
        n_in, n_out = (layer.in_channels, layer.out_channels) if conv else (layer.in_features, layer.out_features)
        tail = (1, 1) if conv else ()
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, n_in, *tail, generator=generator).half()
        tensors[f"{key}.lora_up.weight"] = (0.1 * torch.randn(n_out, rank, *tail, generator=generator)).half()
        tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float16)

    for name, module in base.unet.named_modules():
        if type(module).__name__ == "Transformer2DModel":
            for child, layer in module.named_modules():
                if type(layer) in (torch.nn.Linear, torch.nn.Conv2d):
                    add("lora_unet_" + f"{name}.{child}".replace(".", "_"), layer)
    for i, layer in enumerate(base.text_encoders[0].encoder.layers):
        for part, module in (("self_attn_q_proj", layer.self_attn.q_proj), ("self_attn_k_proj", layer.self_attn.k_proj),
                             ("self_attn_v_proj", layer.self_attn.v_proj), ("self_attn_out_proj", layer.self_attn.out_proj),
                             ("mlp_fc1", layer.mlp.fc1), ("mlp_fc2", layer.mlp.fc2)):
            add(f"lora_te_text_model_encoder_layers_{i}_{part}", module)
    return tensors


def test_a_hand_built_sd_scripts_file_loads_into_the_network_and_merges_the_same(tiny):
    reference = sd_scripts_style_file(tiny("sd1"), rank=4, alpha=1.0)
    live_base = tiny("sd1")
    network = create_lora_network(live_base, LoraSpec(rank=4, alpha=4))
    network.load_kohya_state_dict(reference)
    assert network.modules_count() == len(reference) // 3
    inputs = model_inputs(live_base)
    merged_base = tiny("sd1")
    apply_loras(merged_base, [(reference, 1.0)])
    assert max_diff(outputs(live_base, inputs), outputs(merged_base, inputs)) < 1e-4


def test_unknown_and_misfitting_keys_are_errors_naming_the_first_and_touch_nothing(tiny):
    base = tiny("sd1")
    weights = {k: v.clone() for k, v in base.unet.state_dict().items()}
    good = sd_scripts_style_file(base, rank=2, alpha=1.0)
    bad = {**good, "lora_unet_nowhere.lora_down.weight": torch.zeros(2, 3),
           "lora_unet_nowhere.lora_up.weight": torch.zeros(3, 2)}
    with pytest.raises(ModelError, match="lora_unet_nowhere"):
        apply_loras(base, [(bad, 1.0)])
    sdxl_lora, _, _ = trained_lora(tiny, "sdxl", LoraSpec(rank=2, alpha=1, train_unet=False))
    with pytest.raises(ModelError, match="lora_te1_"):
        apply_loras(base, [(sdxl_lora, 1.0)])
    key = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    misfit = {**good, f"{key}.lora_down.weight": torch.zeros(2, 5)}
    with pytest.raises(ModelError, match=key):
        apply_loras(base, [(misfit, 1.0)])
    assert all(torch.equal(v, weights[k]) for k, v in base.unet.state_dict().items())
