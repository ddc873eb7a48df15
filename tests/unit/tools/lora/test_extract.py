"""lora extract: the difference of two checkpoints as a LoRA, checked against the LoRA that made it.

A rank-r LoRA merged into a base makes a difference of rank r per layer, so extracting at rank
r must give back the very same deltas (the factors may differ, up @ down may not).
"""

from __future__ import annotations

import pytest
import torch

from lorasmith.errors import ModelError, ToolError
from lorasmith.models.single_file import save_single_file
from lorasmith.models.tiny import tiny_base_model
from lorasmith.network.apply import apply_loras, delta_shape, lora_delta
from lorasmith.network.files import load_lora_file
from lorasmith.network.kohya_tensors import group_lora_tensors
from lorasmith.network.targets import lora_targets
from lorasmith.tools.lora.extract import extract_lora
from tests.unit.tools.lora.lora_builders import random_lora


def deltas(tensors: dict) -> dict:
    return {name: lora_delta(m, delta_shape(m)) for name, m in group_lora_tensors(tensors).items()}


def assert_same_deltas(path, lora: dict, names: set) -> dict:
    got, want = deltas(load_lora_file(path)[0]), deltas(lora)
    assert set(got) == names
    for name in names:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=0, msg=name)
    return got


def make_pair(folder, family: str, **lora_options):
    """(org file, tuned file, the LoRA merged into tuned, the tuned model) of a tiny `family`."""
    base = tiny_base_model(family, seed=0)
    org = save_single_file(base, folder / f"{family}_org.safetensors")
    lora = random_lora(base, seed=1, **lora_options)
    apply_loras(base, [(lora, 1.0)])
    return org, save_single_file(base, folder / f"{family}_tuned.safetensors"), lora, base


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    """A tiny SD1 base and the same with a rank-4 LoCon (conv rank 2) merged in."""
    return make_pair(tmp_path_factory.mktemp("extract_sd1"), "sd1", rank=4, alpha=2.0, conv_rank=2)


def target_names(base, conv: bool, text: bool = True) -> set:
    return {t.ref.key for t in lora_targets(base.family, base.unet, base.text_encoders, conv=conv,
                                            train_text_encoder=text)}


def test_acceptance_rank_r_extraction_gives_back_the_lora_that_made_the_difference(sd1, tmp_path):
    org, tuned, lora, base = sd1
    out = tmp_path / "extracted.safetensors"
    report = extract_lora(org, tuned, out, 4, clamp_quantile=None)
    assert_same_deltas(out, lora, target_names(base, conv=False))  # no 3x3 layers without conv_dim
    tensors, metadata = load_lora_file(out)
    alphas = {float(v) for k, v in tensors.items() if k.endswith(".alpha")}
    assert alphas == {4.0}  # alpha = rank: scale 1
    assert {k: metadata[k] for k in ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_v2",
                                     "ss_base_model_version", "ss_network_args")} == {
        "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "4.0", "ss_v2": "False",
        "ss_base_model_version": "sd_v1", "ss_network_args": "{}"}
    assert metadata["ss_training_comment"] == "extracted by SVD from sd1_tuned.safetensors - sd1_org.safetensors"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert [(p.name, p.modules) for p in report.parts] == [("text encoder", 18), ("UNet", 48)]
    assert all(abs(p.mean_energy - 1) < 1e-6 for p in report.parts)
    assert any("UNet: 48 modules, mean energy kept 100.00%" in line for line in report.summary_lines())


def test_conv_dim_extracts_the_locon_3x3_layers_too(sd1, tmp_path):
    org, tuned, lora, base = sd1
    out = tmp_path / "locon.safetensors"
    extract_lora(org, tuned, out, 4, conv_dim=2, clamp_quantile=None)
    assert_same_deltas(out, lora, target_names(base, conv=True))
    ranks = {name: m.rank for name, m in group_lora_tensors(load_lora_file(out)[0]).items()}
    # 3x3 convolutions at conv_dim; the Linear and 1x1 layers of the resnets at dim, as sd-scripts.
    assert ranks["lora_unet_down_blocks_0_resnets_0_conv1"] == 2
    assert ranks["lora_unet_down_blocks_0_resnets_0_time_emb_proj"] == 4
    assert load_lora_file(out)[1]["ss_network_args"] == '{"conv_dim": "2", "conv_alpha": "2.0"}'


def test_sdxl_with_two_text_encoders_and_original_layout_keys(tmp_path):
    org, tuned, lora, base = make_pair(tmp_path, "sdxl", rank=4, alpha=4.0)
    out = tmp_path / "xl.safetensors"
    report = extract_lora(org, tuned, out, 4, clamp_quantile=None, family="sdxl")
    names = target_names(base, conv=False)
    assert_same_deltas(out, lora, names)  # te2's q/k/v come out of OpenCLIP's fused in_proj
    assert {n.split("_text_model")[0] for n in names if n.startswith("lora_te")} == {"lora_te1", "lora_te2"}
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q" in names
    assert load_lora_file(out)[1]["ss_base_model_version"] == "sdxl_base_v1-0"
    assert [p.name for p in report.parts] == ["text encoder 1", "text encoder 2", "UNet"]


def test_a_text_encoder_within_min_diff_is_left_out_and_said_so(sd1, tmp_path):
    org, tuned, lora, base = sd1
    first = extract_lora(org, tuned, tmp_path / "a.safetensors", 4, clamp_quantile=None)
    largest = first.parts[0].largest_diff
    report = extract_lora(org, tuned, tmp_path / "b.safetensors", 4, clamp_quantile=None, min_diff=largest * 1.01)
    assert report.parts[0].left_out and report.parts[1].modules == 48
    assert not any(k.startswith("lora_te") for k in load_lora_file(tmp_path / "b.safetensors")[0])
    assert any("text encoder: unchanged" in line and "left out" in line for line in report.summary_lines())


def test_either_layout_and_fp16_output(sd1, tmp_path):
    from lorasmith.models.single_file import save_diffusers_folder

    org, _, lora, base = sd1
    folder = save_diffusers_folder(base, tmp_path / "tuned")
    out = tmp_path / "from_folder.safetensors"
    extract_lora(org, folder, out, 4, clamp_quantile=None, save_precision="fp16")
    tensors = load_lora_file(out)[0]
    assert {v.dtype for v in tensors.values()} == {torch.float16}
    got, want = deltas(tensors), deltas(lora)
    for name in target_names(base, conv=False):
        torch.testing.assert_close(got[name], want[name], atol=2e-3, rtol=0, msg=name)


def test_clamp_quantile_clips_the_factors_at_that_quantile_of_their_absolute_values(sd1, tmp_path):
    org, tuned, _, _ = sd1
    extract_lora(org, tuned, tmp_path / "plain.safetensors", 4, clamp_quantile=None)
    extract_lora(org, tuned, tmp_path / "clamped.safetensors", 4, clamp_quantile=0.9)
    plain = group_lora_tensors(load_lora_file(tmp_path / "plain.safetensors")[0])
    clamped = group_lora_tensors(load_lora_file(tmp_path / "clamped.safetensors")[0])
    for name, module in plain.items():
        limit = torch.quantile(torch.cat([module.up.flatten(), module.down.flatten()]).abs(), 0.9)
        torch.testing.assert_close(clamped[name].up, module.up.clamp(-limit, limit), atol=1e-6, rtol=0)
        torch.testing.assert_close(clamped[name].down, module.down.clamp(-limit, limit), atol=1e-6, rtol=0)


@pytest.mark.parametrize("case, error, words", [
    ("families", ToolError, "same family"),
    ("said sdxl", ToolError, "drop --sdxl"),
    ("identical", ToolError, "nothing to extract"),
    ("exists", ToolError, "already exists"),
    ("pickle", ModelError, "convert it to .safetensors"),
    ("dim", ToolError, "--dim must be a whole number"),
])
def test_bad_input_is_one_line_that_says_what_to_do(case, error, words, sd1, tmp_path):
    org, tuned, _, _ = sd1
    out = tmp_path / "out.safetensors"
    call = {"model_org": org, "model_tuned": tuned, "save_to": out, "dim": 4}
    if case == "families":
        call["model_tuned"] = save_single_file(tiny_base_model("sdxl"), tmp_path / "xl.safetensors")
    elif case == "said sdxl":
        call["family"] = "sdxl"
    elif case == "identical":
        call["model_tuned"] = org
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "pickle":
        call["model_org"] = tmp_path / "org.ckpt"
        call["model_org"].write_bytes(b"not read")
    elif case == "dim":
        call["dim"] = 0
    with pytest.raises(error) as raised:
        extract_lora(**call)
    assert words in str(raised.value) and "\n" not in str(raised.value)
    assert case == "exists" or not out.exists()


def test_cli_extract(sd1, tmp_path, capsys):
    from lorasmith.cli import main

    org, tuned, lora, base = sd1
    out = tmp_path / "cli.safetensors"
    argv = ["lora", "extract", "--model_org", str(org), "--model_tuned", str(tuned), "--dim", "4",
            "--conv_dim", "2", "--clamp_quantile", "1", "--save_to", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "extracted 97 modules" in printed and "saved" in printed
    assert_same_deltas(out, lora, target_names(base, conv=True))
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and "already exists" in error
    assert main(argv + ["--sdxl", "--v2", "--overwrite"]) == 2
    assert "at most one" in capsys.readouterr().err
