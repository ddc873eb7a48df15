"""Our merge of kohya Flux LoRA files, against the formula, on hand-written sd-scripts-style tensors."""

from __future__ import annotations

import pytest
import torch

from lorasmith.errors import ModelError
from lorasmith.families.flux.merge import flux_lora_deltas, merge_flux_loras
from lorasmith.families.flux.tiny import tiny_flux_base_model

WIDTH, MLP = 32, 128  # the tiny Flux's inner width and MLP width


@pytest.fixture
def base():
    return tiny_flux_base_model("dev", seed=0)


def module(name: str, rank: int, in_features: int, out_features: int, alpha: float | None, dtype=torch.float32,
           seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tensors = {f"{name}.lora_down.weight": torch.randn(rank, in_features, generator=g).to(dtype),
               f"{name}.lora_up.weight": torch.randn(out_features, rank, generator=g).to(dtype)}
    if alpha is not None:
        tensors[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
    return tensors


def split_qkv(name: str, rank: int, in_features: int, widths: list[int], alpha: float) -> dict:
    """sd-scripts' split_qkv layout: the parts' downs stacked [n*r, in], their ups block-diagonal [sum, n*r]."""
    g = torch.Generator().manual_seed(5)
    downs = [torch.randn(rank, in_features, generator=g) for _ in widths]
    up = torch.zeros(sum(widths), rank * len(widths))
    row = 0
    for index, width in enumerate(widths):
        up[row:row + width, index * rank:(index + 1) * rank] = torch.randn(width, rank, generator=g)
        row += width
    return {f"{name}.lora_down.weight": torch.cat(downs), f"{name}.lora_up.weight": up,
            f"{name}.alpha": torch.tensor(alpha)}


def sd_scripts_file() -> dict:
    """A file as networks.lora_flux writes it, a little of everything (bf16 and fp16 tensors, no-alpha module)."""
    return {
        **module("lora_unet_double_blocks_0_img_attn_qkv", 4, WIDTH, 3 * WIDTH, 2.0, torch.bfloat16, 1),
        **module("lora_unet_double_blocks_0_txt_mlp_2", 2, MLP, WIDTH, 1.0, torch.float16, 2),
        **module("lora_unet_single_blocks_1_linear1", 4, WIDTH, 3 * WIDTH + MLP, 8.0, torch.bfloat16, 3),
        **module("lora_unet_single_blocks_0_linear2", 4, WIDTH + MLP, WIDTH, 4.0, torch.float32, 4),
        **module("lora_unet_single_blocks_0_modulation_lin", 4, WIDTH, 3 * WIDTH, 4.0, torch.float32, 5),
        **module("lora_unet_img_in", 2, 64, WIDTH, 2.0, seed=6),
        **module("lora_unet_guidance_in_out_layer", 2, WIDTH, WIDTH, 1.0, seed=7),
        **module("lora_unet_time_in_in_layer", 2, 256, WIDTH, None, seed=8),  # no alpha: alpha = rank
        **module("lora_te1_text_model_encoder_layers_1_self_attn_q_proj", 4, 32, 32, 4.0, torch.float16, 9),
        **module("lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0", 4, 32, 48, 2.0, torch.bfloat16, 10),
    }


QKV = [(i * WIDTH, (i + 1) * WIDTH) for i in range(3)]
# kohya module -> [(component, diffusers path, rows)] it covers
COVERS = {
    "lora_unet_double_blocks_0_img_attn_qkv": [("unet", f"transformer_blocks.0.attn.to_{p}", rows)
                                               for p, rows in zip("qkv", QKV)],
    "lora_unet_double_blocks_0_txt_mlp_2": [("unet", "transformer_blocks.0.ff_context.net.2", (0, WIDTH))],
    "lora_unet_single_blocks_1_linear1": [("unet", f"single_transformer_blocks.1.attn.to_{p}", rows)
                                          for p, rows in zip("qkv", QKV)]
    + [("unet", "single_transformer_blocks.1.proj_mlp", (3 * WIDTH, 3 * WIDTH + MLP))],
    "lora_unet_single_blocks_0_linear2": [("unet", "single_transformer_blocks.0.proj_out", (0, WIDTH))],
    "lora_unet_single_blocks_0_modulation_lin": [("unet", "single_transformer_blocks.0.norm.linear", (0, 3 * WIDTH))],
    "lora_unet_img_in": [("unet", "x_embedder", (0, WIDTH))],
    "lora_unet_guidance_in_out_layer": [("unet", "time_text_embed.guidance_embedder.linear_2", (0, WIDTH))],
    "lora_unet_time_in_in_layer": [("unet", "time_text_embed.timestep_embedder.linear_1", (0, WIDTH))],
    "lora_te1_text_model_encoder_layers_1_self_attn_q_proj": [("clip", "encoder.layers.1.self_attn.q_proj", (0, 32))],
    "lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0": [("t5", "encoder.block.1.layer.1.DenseReluDense.wi_0",
                                                              (0, 48))],
}


def layer(base, component: str, path: str):
    root = {"unet": base.unet, "clip": base.text_encoders[0], "t5": base.text_encoders[1]}[component]
    return root.get_submodule(path)


def weights(base) -> dict:
    return {name: p.detach().clone() for part in (base.unet, *base.text_encoders) for name, p in
            part.named_parameters()}


def test_deltas_group_the_file_per_module():
    deltas = flux_lora_deltas(sd_scripts_file())
    assert set(deltas) == set(COVERS)
    assert deltas["lora_unet_time_in_in_layer"].alpha == 2.0  # no alpha: alpha = rank
    assert deltas["lora_unet_single_blocks_1_linear1"].scale == 2.0


def test_merge_adds_the_formula_to_each_covered_row_slice(base):
    tensors, weight = sd_scripts_file(), 0.7
    before = {(c, p): layer(base, c, p).weight.detach().clone() for covers in COVERS.values() for c, p, _ in covers}
    applied = merge_flux_loras(base, [(tensors, weight)])
    assert applied.modules_touched == len(COVERS)
    for name, covers in COVERS.items():
        down, up = tensors[f"{name}.lora_down.weight"].float(), tensors[f"{name}.lora_up.weight"].float()
        alpha = float(tensors[f"{name}.alpha"]) if f"{name}.alpha" in tensors else down.shape[0]
        for component, path, (start, stop) in covers:
            expected = before[component, path] + weight * alpha / down.shape[0] * up[start:stop] @ down
            assert torch.allclose(layer(base, component, path).weight, expected, atol=1e-6), (name, path)


def test_split_qkv_files_merge_by_the_same_formula(base):
    """Each of q, k, v gets only its own block: (alpha / 3r) * up_q @ down_q, the strength every loader gives it."""
    name, rank, alpha = "lora_unet_double_blocks_0_txt_attn_qkv", 2, 2.0
    tensors = split_qkv(name, rank, WIDTH, [WIDTH] * 3, alpha)
    tensors.update(split_qkv("lora_unet_single_blocks_0_linear1", rank, WIDTH, [WIDTH] * 3 + [MLP], alpha))
    paths = ["add_q_proj", "add_k_proj", "add_v_proj"]
    before = {p: base.unet.get_submodule(f"transformer_blocks.0.attn.{p}").weight.detach().clone() for p in paths}
    mlp_before = base.unet.single_transformer_blocks[0].proj_mlp.weight.detach().clone()
    with merge_flux_loras(base, [(tensors, 1.0)]):
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        for index, path in enumerate(paths):
            part = slice(index * rank, (index + 1) * rank)
            expected = alpha / (3 * rank) * up[index * WIDTH:(index + 1) * WIDTH, part] @ down[part]
            got = base.unet.get_submodule(f"transformer_blocks.0.attn.{path}").weight - before[path]
            assert torch.allclose(got, expected, atol=1e-6)
        down = tensors["lora_unet_single_blocks_0_linear1.lora_down.weight"]
        up = tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"]
        expected = alpha / (4 * rank) * up[3 * WIDTH:, 3 * rank:] @ down[3 * rank:]
        assert torch.allclose(base.unet.single_transformer_blocks[0].proj_mlp.weight - mlp_before, expected, atol=1e-6)


def test_restore_is_bit_exact_and_loras_add_up(base, tmp_path):
    from lorasmith.network.files import save_lora_file

    original = weights(base)
    first, second = sd_scripts_file(), module("lora_unet_img_in", 2, 64, WIDTH, 2.0, seed=11)
    path = save_lora_file(tmp_path / "second.safetensors", second, {})
    x_embedder = base.unet.x_embedder.weight
    with merge_flux_loras(base, [(first, 1.0), (path, -0.5)]) as applied:
        one = first["lora_unet_img_in.lora_up.weight"] @ first["lora_unet_img_in.lora_down.weight"]
        two = second["lora_unet_img_in.lora_up.weight"] @ second["lora_unet_img_in.lora_down.weight"]
        assert torch.allclose(x_embedder, original["x_embedder.weight"] + one - 0.5 * two, atol=1e-5)
        assert applied.modules_touched == len(COVERS)
    after = weights(base)
    assert all(torch.equal(original[k], after[k]) for k in original)


def test_keys_that_do_not_fit_the_base_name_the_key_and_change_nothing(base):
    original = weights(base)
    bad_key = {**sd_scripts_file(), **module("lora_unet_double_blocks_5_img_attn_qkv", 4, WIDTH, 3 * WIDTH, 4.0)}
    with pytest.raises(ModelError, match="'lora_unet_double_blocks_5_img_attn_qkv' matches no layer"):
        merge_flux_loras(base, [(bad_key, 1.0)])
    bad_shape = {**sd_scripts_file(), **module("lora_unet_single_blocks_0_linear1", 4, WIDTH, 3 * WIDTH, 4.0)}
    with pytest.raises(ModelError, match=r"'lora_unet_single_blocks_0_linear1' has the shape \[96, 32\].*\[224, 32\]"):
        merge_flux_loras(base, [(bad_shape, 1.0)])
    with pytest.raises(ModelError, match="lora_A"):
        merge_flux_loras(base, [({"transformer.x_embedder.lora_A.weight": torch.zeros(2, 64)}, 1.0)])
    after = weights(base)
    assert all(torch.equal(original[k], after[k]) for k in original)


def test_schnell_has_no_guidance_in():
    schnell = tiny_flux_base_model("schnell")
    with pytest.raises(ModelError, match="'lora_unet_guidance_in_out_layer' matches no layer"):
        merge_flux_loras(schnell, [(module("lora_unet_guidance_in_out_layer", 2, WIDTH, WIDTH, 1.0), 1.0)])


def test_merge_into_a_bf16_base_casts_back(base):
    base.unet.to(torch.bfloat16)
    tensors = module("lora_unet_double_blocks_0_img_mod_lin", 2, WIDTH, 6 * WIDTH, 2.0)
    before = base.unet.transformer_blocks[0].norm1.linear.weight.detach().clone()
    with merge_flux_loras(base, [(tensors, 1.0)]):
        merged = base.unet.transformer_blocks[0].norm1.linear.weight
        expected = (before.float() + tensors["lora_unet_double_blocks_0_img_mod_lin.lora_up.weight"]
                    @ tensors["lora_unet_double_blocks_0_img_mod_lin.lora_down.weight"]).to(torch.bfloat16)
        assert merged.dtype == torch.bfloat16 and torch.equal(merged, expected)
    assert torch.equal(base.unet.transformer_blocks[0].norm1.linear.weight, before)
