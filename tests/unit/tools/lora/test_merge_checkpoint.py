"""lora merge --sd_model: LoRAs streamed into a checkpoint equal our in-memory merge (apply_loras)."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from lorasmith.errors import ModelError, ToolError
from lorasmith.models.load import load_base_model
from lorasmith.models.tiny import tiny_base_model
from lorasmith.network.apply import apply_loras
from lorasmith.tools.lora.merge_checkpoint import merge_into_checkpoint
from tests.unit.tools.lora.lora_builders import save_random_lora, tiny_checkpoint_file


def header(path) -> dict:
    with open(path, "rb") as file:
        (size,) = struct.unpack("<Q", file.read(8))
        return json.loads(file.read(size))


def tensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_models_close(got, want, atol: float) -> None:
    for mine, theirs in [(got.unet, want.unet), *zip(got.text_encoders, want.text_encoders)]:
        expected = theirs.state_dict()
        for key, value in mine.state_dict().items():
            torch.testing.assert_close(value, expected[key], atol=atol, rtol=0, msg=key)


def merged_reference(source, loras):
    """The source loaded and the LoRAs merged in memory: what the merged file must load as."""
    base = load_base_model(str(source))
    apply_loras(base, [(str(path), ratio) for path, ratio in loras])
    return base


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    """A tiny SD1 single-file checkpoint, a LoRA and a LoCon for it."""
    folder = tmp_path_factory.mktemp("merge_sd1")
    base = tiny_base_model("sd1", seed=0)
    checkpoint = tiny_checkpoint_file(folder / "base.safetensors", "sd1")
    lora = save_random_lora(base, folder / "a.safetensors", rank=4, alpha=2.0, seed=1)
    locon = save_random_lora(base, folder / "b.safetensors", rank=2, alpha=1.0, conv_rank=2, seed=2)
    return folder, checkpoint, lora, locon


def test_acceptance_merged_file_loads_as_apply_loras_at_the_same_weights(sd1, tmp_path):
    folder, checkpoint, lora, locon = sd1
    out = tmp_path / "merged.safetensors"
    report = merge_into_checkpoint(checkpoint, [lora, locon], [1.0, 0.5], out)
    merged = load_base_model(str(out))
    want = merged_reference(checkpoint, [(lora, 1.0), (locon, 0.5)])
    assert_models_close(merged, want, atol=1e-6)
    # One generation-level check: the UNet's prediction for a fixed input.
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        got = merged.unet(sample, 10, encoder_hidden_states=context).sample
        expected = want.unet(sample, 10, encoder_hidden_states=context).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert [m.modules for m in report.loras] == [66, 97]
    assert report.tensors_changed == 97 and report.tensors_written == len(header(checkpoint)) - 1
    assert any("changed 97 of" in line for line in report.summary_lines())


def test_every_source_tensor_is_kept_with_its_dtype_and_untouched_ones_bit_for_bit(tmp_path, sd1):
    from lorasmith.models.convert import base_model_to_ldm
    from lorasmith.models.detect import CONFIGS_METADATA_KEY
    from lorasmith.models.single_file import architecture_configs
    from lorasmith.models.tensor_files import write_safetensors

    _, _, lora, _ = sd1
    base = tiny_base_model("sd1", seed=0)
    state = base_model_to_ldm(base)
    state.update({  # keys our loader never reads
        "model_ema.decay": torch.tensor(0.9999),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
        "model_ema.num_updates": torch.tensor(7, dtype=torch.int32),
    })
    source = tmp_path / "extras.safetensors"
    metadata = {CONFIGS_METADATA_KEY: json.dumps(architecture_configs(base)), "modelspec.title": "my model"}
    write_safetensors(source, state, metadata)
    out = tmp_path / "merged.safetensors"
    merge_into_checkpoint(source, [lora], [0.8], out)

    before, after = header(source), header(out)
    assert set(after) == set(before)
    for key, info in before.items():
        if key != "__metadata__":
            assert (after[key]["dtype"], after[key]["shape"]) == (info["dtype"], info["shape"]), key
    old, new = tensors(source), tensors(out)
    touched = [k for k in old if not torch.equal(old[k], new[k])]
    assert touched and all(k.startswith(("model.diffusion_model.", "cond_stage_model.")) for k in touched)
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith(("first_stage_model.", "model_ema.")))
    assert torch.equal(new["cond_stage_model.transformer.text_model.embeddings.position_ids"], torch.arange(77)[None])
    kept = after["__metadata__"]
    assert kept[CONFIGS_METADATA_KEY] == metadata[CONFIGS_METADATA_KEY]
    assert kept["modelspec.merged_from"] == "my model, a" and kept["modelspec.title"] == "merged"


def test_an_fp16_checkpoint_stays_fp16_and_save_precision_changes_only_float_tensors(tmp_path, sd1):
    _, _, lora, _ = sd1
    source = tiny_checkpoint_file(tmp_path / "half.safetensors", "sd1", dtype=torch.float16)
    out = tmp_path / "merged.safetensors"
    merge_into_checkpoint(source, [lora], [1.0], out)
    dtypes = {info["dtype"] for key, info in header(out).items() if key != "__metadata__"}
    assert dtypes == {"F16"}
    # Merged in float32 and cast once: within half a step of fp16 of the in-memory merge.
    assert_models_close(load_base_model(str(out)), merged_reference(source, [(lora, 1.0)]), atol=2e-3)

    bf16 = tmp_path / "bf16.safetensors"
    report = merge_into_checkpoint(source, [lora], [1.0], bf16, save_precision="bf16")
    assert {info["dtype"] for key, info in header(bf16).items() if key != "__metadata__"} == {"BF16"}
    assert set(report.dtypes) == {"bfloat16"}


def test_sdxl_updates_a_third_of_the_fused_openclip_in_proj_per_q_k_v_module(tmp_path):
    base = tiny_base_model("sdxl", seed=0)
    checkpoint = tiny_checkpoint_file(tmp_path / "xl.safetensors", "sdxl")
    lora = save_random_lora(base, tmp_path / "xl_lora.safetensors", rank=4, conv_rank=2, seed=3)
    out = tmp_path / "merged.safetensors"
    merge_into_checkpoint(checkpoint, [lora], [0.7], out)
    merged, want = load_base_model(str(out)), merged_reference(checkpoint, [(lora, 0.7)])
    assert_models_close(merged, want, atol=1e-6)
    fused = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
    assert not torch.equal(tensors(checkpoint)[fused], tensors(out)[fused])


def test_a_diffusers_folder_becomes_a_diffusers_folder_with_the_same_files(tmp_path, sd1):
    from lorasmith.models.single_file import save_diffusers_folder

    _, _, lora, locon = sd1
    source = save_diffusers_folder(tiny_base_model("sd1", seed=0), tmp_path / "model")
    out = tmp_path / "merged"
    merge_into_checkpoint(source, [lora, locon], [0.5, 1.0], out)
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == files
    assert_models_close(load_base_model(str(out)), merged_reference(source, [(lora, 0.5), (locon, 1.0)]), atol=1e-6)
    assert (out / "model_index.json").read_text() == (source / "model_index.json").read_text()


def test_a_lycoris_loha_module_merges_by_its_own_math(tmp_path, sd1):
    from safetensors.torch import save_file

    _, checkpoint, _, _ = sd1
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    generator = torch.Generator().manual_seed(5)
    parts = {p: torch.randn(shape, generator=generator) * 0.2
             for p, shape in (("hada_w1_a", (32, 2)), ("hada_w1_b", (2, 32)), ("hada_w2_a", (32, 2)),
                              ("hada_w2_b", (2, 32)))}
    loha = tmp_path / "loha.safetensors"
    save_file({**{f"{name}.{p}": t for p, t in parts.items()}, f"{name}.alpha": torch.tensor(1.0)}, str(loha))
    out = tmp_path / "merged.safetensors"
    merge_into_checkpoint(checkpoint, [loha], [0.5], out)
    delta = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"]) * (1.0 / 2)
    torch.testing.assert_close(tensors(out)[key], tensors(checkpoint)[key] + 0.5 * delta, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def other_family_loras(tmp_path_factory):
    """An SDXL LoRA (its names match nothing in SD1) and one whose names match but shapes do not."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("other_family")
    wide = folder / "wide.safetensors"
    name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"  # SD2's text is wider than SD1's
    save_file({f"{name}.lora_down.weight": torch.ones(2, 48), f"{name}.lora_up.weight": torch.ones(32, 2)}, str(wide))
    return {"sdxl": save_random_lora(tiny_base_model("sdxl"), folder / "sdxl.safetensors", rank=2), "wide": wide}


@pytest.mark.parametrize("case, error, words", [
    ("not a LoRA", ModelError, "holds no kohya LoRA"),
    ("sdxl LoRA", ModelError, "another model family"),
    ("wide LoRA", ModelError, "shape"),
    ("ratios", ToolError, "one ratio per LoRA"),
    ("exists", ToolError, "already exists"),
    ("is an input", ToolError, "one of the inputs"),
    ("pickle", ModelError, "convert it to .safetensors"),
])
def test_bad_input_is_one_line_that_says_what_to_do(case, error, words, sd1, other_family_loras, tmp_path):
    _, checkpoint, lora, _ = sd1
    out = tmp_path / "out.safetensors"
    call = {"sd_model": checkpoint, "models": [lora], "ratios": [1.0], "save_to": out}
    if case == "not a LoRA":
        call["models"] = [checkpoint]
    elif case.endswith("LoRA"):
        call["models"] = [other_family_loras[case.split()[0]]]
    elif case == "ratios":
        call["ratios"] = [1.0, 0.5]
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "is an input":
        call["save_to"] = lora
    elif case == "pickle":
        call["sd_model"] = tmp_path / "model.ckpt"
        call["sd_model"].write_bytes(b"not read")
    with pytest.raises(error) as raised:
        merge_into_checkpoint(**call)
    assert words in str(raised.value) and "\n" not in str(raised.value)
    assert case == "exists" or not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_the_key_map_names_the_real_sd15_and_sdxl_checkpoint_tensors():
    from lorasmith.models.configs import shipped_config
    from lorasmith.models.convert import text_encoder_to_ldm, unet_to_ldm
    from lorasmith.models.families import SD1, SDXL
    from lorasmith.network.targets import lora_targets
    from lorasmith.tools.lora.checkpoint_keys import SINGLE_FILE, file_slots, meta_modules

    golden = {
        SD1: {
            "lora_unet_down_blocks_0_attentions_0_proj_in": ("input_blocks.1.1.proj_in.weight", (320, 320, 1, 1)),
            "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0":
                ("output_blocks.11.1.transformer_blocks.0.attn2.to_out.0.weight", (320, 320)),
            "lora_unet_mid_block_attentions_0_proj_out": ("middle_block.1.proj_out.weight", (1280, 1280, 1, 1)),
            "lora_unet_down_blocks_1_resnets_0_conv1": ("input_blocks.4.0.in_layers.2.weight", (640, 320, 3, 3)),
            "lora_unet_up_blocks_0_upsamplers_0_conv": ("output_blocks.2.1.conv.weight", (1280, 1280, 3, 3)),
            "lora_te_text_model_encoder_layers_11_mlp_fc2":
                ("cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight", (768, 3072)),
        },
        SDXL: {
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k":
                ("input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight", (640, 2048)),
            "lora_unet_output_blocks_2_2_conv": ("output_blocks.2.2.conv.weight", (1280, 1280, 3, 3)),
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj":
                ("conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
                 (768, 768)),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1":
                ("conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight", (5120, 1280)),
        },
    }
    for family, expected in golden.items():
        parts = ("unet", "vae", "text_encoder", "text_encoder_2")[: 2 + len(family.text_encoder_prefixes)]
        unet, encoders = meta_modules(family, {part: shipped_config(family.name, part) for part in parts})
        state = unet_to_ldm(unet.state_dict(), dict(unet.config))
        for index, encoder in enumerate(encoders):
            state.update(text_encoder_to_ldm(family.name, index, encoder))
        slots, _ = file_slots(family, unet, encoders, SINGLE_FILE, "", {k: tuple(v.shape) for k, v in state.items()})
        for name, (key, shape) in expected.items():
            prefix = "" if key.startswith(("cond", "conditioner")) else "model.diffusion_model."
            assert (slots[name].key, slots[name].shape) == (prefix + key, shape), name
        targets = lora_targets(family, unet, encoders, conv=True)
        assert all(t.ref.key in slots for t in targets)
    v = slots["lora_te2_text_model_encoder_layers_31_self_attn_v_proj"]
    assert (v.key, v.rows, v.stored) == (
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight", (2560, 3840), (3840, 1280))


def test_cli_merges_into_a_checkpoint_with_sd_model(sd1, tmp_path, capsys):
    pytest.importorskip("lorasmith.cli.lora_merge", reason="the lora merge command is another engineer's")
    from lorasmith.cli import main

    _, checkpoint, lora, locon = sd1
    out = tmp_path / "merged.safetensors"
    code = main(["lora", "merge", "--sd_model", str(checkpoint), "--models", str(lora), str(locon),
                 "--ratios", "1.0", "0.5", "--save_to", str(out)])
    assert code == 0 and out.is_file()
    assert "saved" in capsys.readouterr().out
    library = tmp_path / "library.safetensors"
    merge_into_checkpoint(checkpoint, [lora, locon], [1.0, 0.5], library)
    got, want = tensors(out), tensors(library)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in got)
    assert main(["lora", "merge", "--sd_model", str(checkpoint), "--models", str(lora), "--save_to", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
