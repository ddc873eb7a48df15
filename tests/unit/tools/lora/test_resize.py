"""`lora resize` against the math: the truncated SVD of every module's delta (Eckart-Young)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lorasmith.cli import main
from lorasmith.errors import ModelError, ToolError
from lorasmith.network.apply import delta_shape, lora_delta
from lorasmith.network.files import load_lora_file, save_lora_file
from lorasmith.network.kohya_tensors import group_lora_tensors
from lorasmith.tools.lora.resize import resize_lora, resize_lora_file
from tests.unit.tools.lora.lora_builders import random_lora

RANK, ALPHA, CONV_RANK = 4, 2.0, 2  # linear scale 0.5; 3x3 convolutions: scale 1.0


@pytest.fixture(scope="module")
def base():
    from lorasmith.models.tiny import tiny_base_model

    return tiny_base_model("sd1", seed=0)


@pytest.fixture(scope="module")
def lora(base):
    return random_lora(base, rank=RANK, alpha=ALPHA, conv_rank=CONV_RANK, seed=1)


@pytest.fixture(scope="module")
def lora_file(lora, tmp_path_factory):
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(RANK), "ss_network_alpha": str(ALPHA),
                "ss_training_comment": "my character", "ss_base_model_version": "sd_v1",
                "ss_network_args": json.dumps({"conv_dim": str(CONV_RANK), "conv_alpha": "2"})}
    return save_lora_file(tmp_path_factory.mktemp("lora") / "char.safetensors", lora, metadata)


def deltas(tensors) -> dict:
    return {name: lora_delta(m, delta_shape(m)).double() for name, m in group_lora_tensors(tensors).items()}


def is_3x3(delta) -> bool:
    return delta.dim() == 4 and tuple(delta.shape[2:]) != (1, 1)


def truncated(delta, rank):
    """The best rank-`rank` approximation of `delta` and the singular values of the whole, from a full SVD."""
    u, s, vh = torch.linalg.svd(delta.flatten(1), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).reshape(delta.shape), s


def test_the_source_rank_gives_back_every_delta(lora):
    before, after = deltas(lora), deltas(resize_lora(lora, RANK, CONV_RANK).tensors)
    assert any(is_3x3(d) for d in before.values()) and any(d.dim() == 2 for d in before.values())
    assert before.keys() == after.keys()
    for name, delta in before.items():
        torch.testing.assert_close(after[name], delta, rtol=1e-4, atol=1e-6, msg=name)


def test_without_new_conv_rank_3x3_modules_keep_their_lower_rank(lora):
    result = resize_lora(lora, 3)
    ranks = {(m.conv, m.new_rank) for m in result.modules}
    assert ranks == {(False, 3), (True, CONV_RANK)}


def test_a_lower_rank_is_the_truncated_svd_and_its_error_is_the_discarded_values(lora):
    result = resize_lora(lora, 2, new_conv_rank=1)
    before, after = deltas(lora), deltas(result.tensors)
    reports = {m.name: m for m in result.modules}
    for name, delta in before.items():
        rank = 1 if is_3x3(delta) else 2
        best, s = truncated(delta, rank)
        discarded = float(s[rank:].square().sum().sqrt())
        error = float((after[name] - delta).norm())
        assert error == pytest.approx(discarded, rel=1e-4), name
        torch.testing.assert_close(after[name], best, rtol=1e-4, atol=1e-6, msg=name)
        report = reports[name]
        assert (report.old_rank, report.new_rank) == (CONV_RANK if is_3x3(delta) else RANK, rank)
        assert report.discarded_norm == pytest.approx(discarded, rel=1e-4)
        assert report.energy_kept == pytest.approx(float(s[:rank].square().sum() / s.square().sum()), rel=1e-5)


def test_the_alpha_rank_ratio_is_kept(lora):
    tensors = resize_lora(lora, 2, new_conv_rank=1).tensors
    for name, module in group_lora_tensors(tensors).items():
        expected = 1.0 if module.down.dim() == 4 and module.down.shape[2] == 3 else ALPHA / RANK
        assert module.scale == pytest.approx(expected), name


def known_lora(singular_values, out_features=16, in_features=20, alpha=None):
    """One linear module whose delta has exactly these singular values (scale 1 unless alpha says)."""
    rank = len(singular_values)
    generator = torch.Generator().manual_seed(3)
    left, _ = torch.linalg.qr(torch.randn(out_features, rank, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(in_features, rank, generator=generator, dtype=torch.float64))
    up = left * torch.tensor(singular_values, dtype=torch.float64)
    return {"lora_unet_test.lora_down.weight": right.T.float().contiguous(),
            "lora_unet_test.lora_up.weight": up.float().contiguous(),
            "lora_unet_test.alpha": torch.tensor(float(alpha or rank))}


S = [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625]  # sum 15.9375, sum of squares 85.33


@pytest.mark.parametrize("method, param, cap, expected", [
    ("sv_ratio", 10, 8, 4),  # S >= 8 / 10 keeps 8, 4, 2, 1
    ("sv_ratio", 1000, 6, 6),  # every value passes: the cap decides
    ("sv_ratio", 1000, 16, 8),  # a cap above the source rank is only a cap
    ("sv_cumulative", 0.9, 8, 4),  # 15 / 15.94 = 0.941 is the first share >= 0.9
    ("sv_cumulative", 0.95, 8, 5),  # 15.5 / 15.94 = 0.973
    ("sv_fro", 0.99, 8, 3),  # 84 / 85.33 = 0.984 >= 0.99^2 = 0.980
])
def test_dynamic_methods_pick_the_rank_their_rule_says(method, param, cap, expected):
    result = resize_lora(known_lora(S), cap, dynamic_method=method, dynamic_param=param)
    assert result.modules[0].new_rank == expected
    kept = sum(s * s for s in S[:expected]) / sum(s * s for s in S)
    assert result.modules[0].energy_kept == pytest.approx(kept, rel=1e-5)


def test_an_odd_scale_stays_exact_in_fp16():
    """alpha 1 / rank 3: the new alpha rounds in fp16, the rounding is folded into up."""
    tensors = known_lora([3.0, 2.0, 1.0], alpha=1.0)
    resized = resize_lora(tensors, 2, dtype=torch.float16).tensors
    delta = deltas(resized)["lora_unet_test"]
    best, _ = truncated(deltas(tensors)["lora_unet_test"], 2)
    assert float((delta - best).norm() / best.norm()) < 1e-3


def test_fp16_file_with_updated_metadata(lora_file, tmp_path):
    report = resize_lora_file(lora_file, tmp_path / "small.safetensors", 2, save_precision="fp16")
    tensors, metadata = load_lora_file(report.save_to)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert metadata["ss_network_dim"] == "2" and metadata["ss_network_alpha"] == "1.0"
    assert metadata["ss_training_comment"] == "dimension is resized from 4 to 2; my character"
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "2"}
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["sshs_model_hash"]
    assert report.file_bytes == report.save_to.stat().st_size
    assert any("energy kept" in line for line in report.summary_lines())


def test_without_save_precision_the_input_dtype_is_kept(lora_file, tmp_path):
    report = resize_lora_file(lora_file, tmp_path / "small.safetensors", 3, dynamic_method="sv_fro",
                              dynamic_param=0.9)
    tensors, metadata = load_lora_file(report.save_to)
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert metadata["ss_network_dim"] == metadata["ss_network_alpha"] == "Dynamic"
    assert metadata["ss_training_comment"].startswith("Dynamic resize with sv_fro: 0.9 from 4; ")


@pytest.mark.parametrize("options, words", [
    ({"new_rank": 8}, ["has rank 4", "--new_rank 8 would not add anything", "pick 4 or less"]),
    ({"new_rank": 2, "new_conv_rank": 3}, ["has rank 2", "--new_conv_rank 3", "pick 2 or less"]),
    ({"new_rank": 0}, ["--new_rank must be 1 or more"]),
    ({"new_rank": 2, "dynamic_method": "sv_magic", "dynamic_param": 1}, ["unknown --dynamic_method 'sv_magic'"]),
    ({"new_rank": 2, "dynamic_method": "sv_fro"}, ["needs --dynamic_param"]),
    ({"new_rank": 2, "dynamic_method": "sv_fro", "dynamic_param": 1.5}, ["sv_fro", "from 0 to 1, got 1.5"]),
    ({"new_rank": 2, "dynamic_method": "sv_ratio", "dynamic_param": 0.5}, ["sv_ratio", "at least 1"]),
    ({"new_rank": 2, "dynamic_param": 0.5}, ["--dynamic_param needs --dynamic_method"]),
])
def test_bad_options_are_one_line(lora_file, tmp_path, options, words):
    with pytest.raises(ToolError) as error:
        resize_lora_file(lora_file, tmp_path / "out.safetensors", **options)
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message
    assert not (tmp_path / "out.safetensors").exists()


def test_a_checkpoint_is_not_a_lora(base, tmp_path):
    from lorasmith.models.single_file import save_single_file

    checkpoint = save_single_file(base, tmp_path / "model.safetensors")
    with pytest.raises(ModelError, match="holds no kohya LoRA weights"):
        resize_lora_file(checkpoint, tmp_path / "out.safetensors", 2)


def test_a_lycoris_file_is_refused_with_its_kind(tmp_path):
    loha = {f"lora_unet_x.hada_{part}": torch.ones(2, 2) for part in ("w1_a", "w1_b", "w2_a", "w2_b")}
    save_file({**loha, "lora_unet_x.alpha": torch.tensor(2.0)}, tmp_path / "loha.safetensors")
    with pytest.raises(ToolError, match="is a LyCORIS LoHa; resize works on LoRA/LoCon files"):
        resize_lora_file(tmp_path / "loha.safetensors", tmp_path / "out.safetensors", 2)


def test_outputs_are_never_replaced_unasked(lora_file, tmp_path):
    existing = tmp_path / "taken.safetensors"
    existing.write_bytes(b"keep me")
    with pytest.raises(ToolError, match="already exists; pick another --save_to or add --overwrite"):
        resize_lora_file(lora_file, existing, 2)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(ToolError, match="is one of the inputs"):
        resize_lora_file(lora_file, lora_file, 2, overwrite=True)
    resize_lora_file(lora_file, existing, 2, overwrite=True)
    assert load_lora_file(existing)[1]["ss_network_dim"] == "2"


def test_cli_resize(lora_file, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    code = main(["lora", "resize", "--model", str(lora_file), "--save_to", str(out), "--new_rank", "2",
                 "--new_conv_rank", "1", "--save_precision", "bf16", "--verbose"])
    printed = capsys.readouterr().out
    assert code == 0 and out.exists()
    modules = len(group_lora_tensors(load_lora_file(lora_file)[0]))
    assert f"resized {modules} modules from rank 2-4 to 1-2" in printed and "energy kept:" in printed
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in printed and f"saved {out}" in printed
    assert main(["lora", "resize", "--model", str(lora_file), "--save_to", str(tmp_path / "no.safetensors"),
                 "--new_rank", "8"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: '") and "has rank 4; --new_rank 8" in error and error.count("\n") == 1

