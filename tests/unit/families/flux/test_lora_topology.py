"""The acceptance test: our Flux LoRA over Flux.1's real architecture (meta device) is sd-scripts' file, exactly.

Pinned against shared/reference/flux-lora-format.md (sd-scripts 48d368f, networks.lora_flux at rank 16,
alpha 16, saved in bf16 with only the sshs_* metadata): module and tensor counts, names and shapes, and the
bytes. The file is 8 bytes of header length, the JSON header padded with spaces to a multiple of 8, then the
tensor data in sorted key order. Default: 158,605,512 bytes, "138,712 bytes of it header" (the 8-byte length
included: 138,704 of JSON), leaving 158,605,512 - 138,712 = 158,466,800 bytes of data = 79,233,400 values x 2
(bf16), which the reference also gives as the fp32 value count. Per module at rank 16: 16 x (in + out) values
+ 1 alpha; 19 double blocks x 1,130,496 + 38 single x 884,736 + 12 CLIP-L layers x 221,184 = 79,233,024, + 376
alphas = 79,233,400. The table's rows give only file bytes; our header (sized as safetensors writes it, checked
here against a real save) plus our data bytes reproduce every one of them to the byte.
"""

from __future__ import annotations

import json

import pytest
import torch

from lorasmith.families.flux.lora import FluxLoraSpec, create_flux_lora_network
from lorasmith.families.flux.lora_targets import FluxArgs, flux_targets
from lorasmith.models.base import BaseModel
from lorasmith.models.families import FLUX

SSHS = {"sshs_model_hash": "0" * 64, "sshs_legacy_hash": "0" * 8}  # what sd-scripts' save_weights adds
TYPE_DIMS = ["img_attn_dim=8", "txt_attn_dim=4", "img_mod_dim=2", "single_dim=8", "img_mlp_dim=0", "txt_mlp_dim=0",
             "txt_mod_dim=0", "single_mod_dim=0"]


def meta_flux(variant: str = "dev") -> BaseModel:
    """Flux.1's transformer, CLIP-L and T5-XXL as shipped, on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lorasmith.models.configs import shipped_config

    config = {k: v for k, v in shipped_config("flux", "transformer").items() if not k.startswith("_")}
    t5 = {k: v for k, v in shipped_config("flux", "text_encoder_2").items() if k not in ("architectures", "model_type")}
    with init_empty_weights():
        transformer = FluxTransformer2DModel(**{**config, "guidance_embeds": variant == "dev"})
        encoders = [CLIPTextModel(CLIPTextConfig(**shipped_config("flux", "text_encoder"))),
                    T5EncoderModel(T5Config(**t5))]
    return BaseModel(family=FLUX, v_prediction=False, unet=transformer, vae=None, text_encoders=encoders,
                     tokenizers=[], noise_scheduler=None)


@pytest.fixture(scope="module")
def bases() -> dict:
    return {"dev": meta_flux("dev"), "schnell": meta_flux("schnell")}


def saved(base: BaseModel, args=(), unet_only: bool = False) -> dict:
    """The bf16 tensors of a rank-16, alpha-16 network, built and removed again (the base is shared)."""
    network = create_flux_lora_network(base, FluxLoraSpec(16, 16, train_text_encoder=not unet_only,
                                                          args=FluxArgs.parse(list(args))))
    try:
        return network.kohya_state_dict(torch.bfloat16)
    finally:
        network.remove()


def data_bytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def file_bytes(tensors: dict, metadata: dict = SSHS) -> int:
    """The size of the safetensors file of `tensors`: length prefix, padded compact JSON header, data."""
    entries, offset = {}, 0
    for key in sorted(tensors):
        size = tensors[key].numel() * tensors[key].element_size()
        dtype = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}[tensors[key].dtype]
        entries[key] = {"dtype": dtype, "shape": list(tensors[key].shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = len(json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")))
    return 8 + header + (-header) % 8 + offset


def test_file_bytes_is_how_safetensors_writes(tmp_path):
    from safetensors.torch import save_file

    tensors = {"b.lora_up.weight": torch.zeros(30, 2, dtype=torch.bfloat16), "a.alpha": torch.tensor(2.0).bfloat16(),
               "a.lora_down.weight": torch.zeros(2, 7, dtype=torch.bfloat16)}
    save_file(tensors, tmp_path / "x.safetensors", SSHS)
    assert (tmp_path / "x.safetensors").stat().st_size == file_bytes(tensors)


def test_default_file_is_sd_scripts_to_the_byte(bases):
    tensors = saved(bases["dev"])
    names = {key.partition(".")[0] for key in tensors}
    assert (len(tensors), len(names)) == (1_128, 376)
    assert sum(n.startswith("lora_unet_double_blocks_") for n in names) == 190
    assert sum(n.startswith("lora_unet_single_blocks_") for n in names) == 114
    assert sum(n.startswith("lora_te1_text_model_encoder_layers_") for n in names) == 72
    assert sum(t.numel() for t in tensors.values()) == 79_233_400
    assert data_bytes(tensors) == 158_605_512 - 138_712 == 158_466_800
    assert file_bytes(tensors) == 158_605_512
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert all(float(t) == 16.0 and t.shape == () for k, t in tensors.items() if k.endswith(".alpha"))


def test_example_keys_and_shapes(bases):
    tensors = saved(bases["dev"], ["train_t5xxl=True"])
    shapes = {key: list(tensor.shape) for key, tensor in tensors.items()}
    expected = {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": [9216, 16],
        "lora_unet_single_blocks_37_linear1.lora_down.weight": [16, 3072],
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha": [],
    }
    per_block = {  # (up, down) at rank 16
        "img_attn_qkv": ([9216, 16], [16, 3072]), "img_attn_proj": ([3072, 16], [16, 3072]),
        "img_mlp_0": ([12288, 16], [16, 3072]), "img_mlp_2": ([3072, 16], [16, 12288]),
        "img_mod_lin": ([18432, 16], [16, 3072]),
    }
    per_block.update({name.replace("img_", "txt_"): shape for name, shape in per_block.items()})
    for prefix, table in (
        ("lora_unet_double_blocks_18_", per_block),
        ("lora_unet_single_blocks_0_", {"linear1": ([21504, 16], [16, 3072]), "linear2": ([3072, 16], [16, 15360]),
                                        "modulation_lin": ([9216, 16], [16, 3072])}),
        ("lora_te1_text_model_encoder_layers_11_", {
            **{f"self_attn_{p}_proj": ([768, 16], [16, 768]) for p in ("q", "k", "v", "out")},
            "mlp_fc1": ([3072, 16], [16, 768]), "mlp_fc2": ([768, 16], [16, 3072])}),
        ("lora_te3_encoder_block_23_", {
            **{f"layer_0_SelfAttention_{p}": ([4096, 16], [16, 4096]) for p in "qkvo"},
            "layer_1_DenseReluDense_wi_0": ([10240, 16], [16, 4096]),
            "layer_1_DenseReluDense_wi_1": ([10240, 16], [16, 4096]),
            "layer_1_DenseReluDense_wo": ([4096, 16], [16, 10240])}),
    ):
        for name, (up, down) in table.items():
            expected[f"{prefix}{name}.lora_up.weight"], expected[f"{prefix}{name}.lora_down.weight"] = up, down
            expected[f"{prefix}{name}.alpha"] = []
    assert {key: shapes.get(key) for key in expected} == expected
    assert not any(part in key for key in shapes for part in ("img_in", "txt_in", "time_in", "vector_in",
                                                              "guidance_in", "final_layer", "norm"))


@pytest.mark.parametrize("args, unet_only, variant, modules, tensors, size", [
    ([], True, "dev", 304, 912, 153_268_528),
    (["train_blocks=single"], True, "dev", 114, 342, 67_281_092),
    (["train_blocks=double"], True, "dev", 190, 570, 85_986_908),
    (["train_t5xxl=True"], False, "dev", 544, 1_632, 216_869_816),
    (["train_double_block_indices=0-3,10", "train_single_block_indices=none"], True, "dev", 50, 150, 22_628_076),
    (TYPE_DIMS, True, "dev", 171, 513, 36_249_214),
    (["in_dims=[4,2,2,2,4]"], True, "dev", 312, 936, 153_469_304),
    (["in_dims=[4,2,2,2,4]"], True, "schnell", 310, 930, None),  # the reference gives counts only
])
def test_network_args_rows_of_the_reference(bases, args, unet_only, variant, modules, tensors, size):
    found = saved(bases[variant], args, unet_only)
    assert (len({key.partition(".")[0] for key in found}), len(found)) == (modules, tensors)
    if size is not None:
        assert file_bytes(found) == size


def test_t5_and_type_dims_detail(bases):
    names = {key.partition(".")[0] for key in saved(bases["dev"], ["train_t5xxl=True"])}
    assert (sum(n.startswith("lora_te1_") for n in names), sum(n.startswith("lora_te3_") for n in names)) == (72, 168)
    typed = saved(bases["dev"], TYPE_DIMS, unet_only=True)
    assert list(typed["lora_unet_double_blocks_3_img_attn_proj.lora_down.weight"].shape) == [8, 3072]
    assert list(typed["lora_unet_double_blocks_3_txt_attn_qkv.lora_up.weight"].shape) == [9216, 4]
    assert list(typed["lora_unet_single_blocks_5_linear2.lora_down.weight"].shape) == [8, 15360]
    assert float(typed["lora_unet_double_blocks_3_img_mod_lin.alpha"]) == 16.0  # network_alpha, not the type dim
    assert not any("mlp" in k or "txt_mod" in k or "modulation" in k for k in typed)
    inputs = saved(bases["dev"], ["in_dims=[4,2,2,2,4]"], unet_only=True)
    assert [list(inputs[f"lora_unet_{n}.lora_down.weight"].shape) for n in (
        "img_in", "time_in_in_layer", "vector_in_out_layer", "guidance_in_in_layer", "txt_in")] == [
        [4, 64], [2, 256], [2, 3072], [2, 256], [4, 4096]]


def test_the_lora_is_fp32_meta_and_the_base_frozen(bases):
    base = bases["dev"]
    network = create_flux_lora_network(base, FluxLoraSpec(16, 16))
    try:
        lora = {id(p) for p in network.trainable_parameters()}
        assert all(p.device.type == "meta" and p.dtype == torch.float32 for p in network.trainable_parameters())
        assert all(p.requires_grad == (id(p) in lora) for part in (base.unet, *base.text_encoders)
                   for p in part.parameters())
    finally:
        network.remove()


def test_diffusers_converter_agrees_with_our_rows(bases):
    """diffusers' own reading of a kohya Flux file (load_lora_weights' converter, written independently of
    ours) gives every covered layer the same weight change as our row slices, on real-sized random tensors."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    base, rank, generator = bases["dev"], 4, torch.Generator().manual_seed(0)
    targets = flux_targets(base.unet, base.text_encoders[:1])
    tensors = {}
    for t in targets:
        tensors[f"{t.key}.lora_down.weight"] = torch.randn(rank, t.in_features, generator=generator)
        tensors[f"{t.key}.lora_up.weight"] = torch.randn(t.out_features, rank, generator=generator)
        tensors[f"{t.key}.alpha"] = torch.tensor(2.0)
    converted = _convert_kohya_flux_lora_to_diffusers(dict(tensors))
    unet = {t for t in targets if t.ref.component == "unet"}
    assert len(unet) == 312 and sum(k.startswith("text_encoder.") for k in converted) == 2 * 72
    # its embedder keys (in_dims) come without the "transformer." the others have
    converted = {k.removeprefix("transformer."): v for k, v in converted.items() if not k.startswith("text_encoder.")}
    assert set(converted) == {f"{s.path}.lora_{ab}.weight" for t in unet for s in t.splits for ab in "AB"}
    for t in unet:
        down, up = tensors[f"{t.key}.lora_down.weight"], tensors[f"{t.key}.lora_up.weight"]
        probe = torch.randn(t.in_features, generator=generator)
        for s in t.splits:
            a, b = converted[f"{s.path}.lora_A.weight"], converted[f"{s.path}.lora_B.weight"]
            ours = up[s.start:s.stop] @ (down @ probe) * (2.0 / rank)
            assert torch.allclose(b @ (a @ probe), ours, rtol=1e-4, atol=1e-4), (t.key, s.path)
