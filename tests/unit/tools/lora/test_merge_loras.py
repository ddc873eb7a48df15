"""`lora merge` of LoRAs into one LoRA against the math: the ratio-weighted sum of their deltas."""

from __future__ import annotations

import pytest
import torch

from lorasmith.cli import main
from lorasmith.errors import ModelError, ToolError
from lorasmith.network.apply import delta_shape, lora_delta
from lorasmith.network.files import load_lora_file, save_lora_file
from lorasmith.network.kohya_tensors import group_lora_tensors
from lorasmith.tools.lora.merge_loras import merge_lora_files, merge_loras
from tests.unit.tools.lora.lora_builders import random_lora

# random_lora builds both LoRAs on one tiny model; peft warns about the second adapter.
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`")

RATIOS = [0.7, -0.3]  # a negative ratio subtracts a LoRA: its sign must survive the square roots


@pytest.fixture(scope="module")
def base():
    from lorasmith.models.tiny import tiny_base_model

    return tiny_base_model("sd1", seed=0)


@pytest.fixture(scope="module")
def loras(base):
    """a: rank 4 (alpha 2) with 3x3 convolutions at rank 2; b: rank 2 (alpha 1), UNet only, no 3x3 modules."""
    a = random_lora(base, rank=4, alpha=2.0, conv_rank=2, seed=1)
    b = random_lora(base, rank=2, alpha=1.0, seed=2, train_text_encoder=False)
    return a, b


@pytest.fixture(scope="module")
def files(loras, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    spec = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1/lora"}
    paths = []
    for name, tensors, title in (("a", loras[0], "Alice"), ("b", loras[1], None)):
        metadata = {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1", **spec}
        if title:
            metadata["modelspec.title"] = title
        paths.append(save_lora_file(folder / f"{name}.safetensors", tensors, metadata))
    return paths


def deltas(tensors) -> dict:
    return {name: lora_delta(m, delta_shape(m)).double() for name, m in group_lora_tensors(tensors).items()}


def weighted_sum(loras, ratios) -> dict:
    total: dict = {}
    for tensors, ratio in zip(loras, ratios):
        for name, delta in deltas(tensors).items():
            total[name] = total.get(name, 0) + ratio * delta
    return total


def is_3x3(delta) -> bool:
    return delta.dim() == 4 and tuple(delta.shape[2:]) != (1, 1)


def test_joined_ranks_give_the_exact_weighted_sum(loras):
    result = merge_loras(list(loras), RATIOS)
    expected, merged = weighted_sum(loras, RATIOS), deltas(result.tensors)
    only_a = set(deltas(loras[0])) - set(deltas(loras[1]))
    assert only_a and merged.keys() == expected.keys()
    for name, delta in expected.items():
        torch.testing.assert_close(merged[name], delta, rtol=1e-5, atol=1e-7, msg=name)
    ranks = {m.name: m.rank for m in result.modules}
    assert {ranks[n] for n in expected if n not in only_a} == {6}
    assert {ranks[n] for n in only_a} == {4, 2}  # the text encoder's linears and a's 3x3 convolutions
    assert all(m.energy_kept == 1.0 for m in result.modules)


def test_new_rank_at_the_sum_of_ranks_is_exact_too(loras):
    merged, expected = deltas(merge_loras(list(loras), RATIOS, new_rank=6).tensors), weighted_sum(loras, RATIOS)
    for name, delta in expected.items():
        torch.testing.assert_close(merged[name], delta, rtol=1e-4, atol=1e-6, msg=name)


def test_a_lower_rank_is_the_truncated_svd_of_the_sum(loras):
    result = merge_loras(list(loras), RATIOS, new_rank=3, new_conv_rank=1)
    merged, reports = deltas(result.tensors), {m.name: m for m in result.modules}
    for name, delta in weighted_sum(loras, RATIOS).items():
        rank = 1 if is_3x3(delta) else 3
        u, s, vh = torch.linalg.svd(delta.flatten(1), full_matrices=False)
        best = ((u[:, :rank] * s[:rank]) @ vh[:rank]).reshape(delta.shape)
        torch.testing.assert_close(merged[name], best, rtol=1e-4, atol=1e-6, msg=name)
        discarded = float(s[rank:].square().sum().sqrt())
        assert float((merged[name] - delta).norm()) == pytest.approx(discarded, rel=1e-4)
        assert reports[name].rank == rank
        assert reports[name].energy_kept == pytest.approx(float(s[:rank].square().sum() / s.square().sum()), rel=1e-5)


def test_merged_file_metadata_and_precision(files, tmp_path):
    out = tmp_path / "blend.safetensors"
    report = merge_lora_files(files, [0.7, 0.3], out, new_rank=3, new_conv_rank=1, save_precision="fp16")
    tensors, metadata = load_lora_file(out)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert metadata["ss_network_module"] == "networks.lora" and metadata["ss_base_model_version"] == "sd_v1"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("3", "3.0")
    assert metadata["ss_network_args"] == '{"conv_dim": "1", "conv_alpha": "1"}'
    assert metadata["ss_training_comment"] == "merged by SVD from a.safetensors x 0.7, b.safetensors x 0.3"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert (metadata["modelspec.title"], metadata["modelspec.merged_from"]) == ("blend", "Alice, b")
    assert metadata["sshs_model_hash"] and report.file_bytes == out.stat().st_size


def test_joined_file_keeps_the_inputs_dtype_and_says_dynamic(files, tmp_path):
    report = merge_lora_files(files, None, tmp_path / "joined.safetensors")
    tensors, metadata = load_lora_file(report.save_to)
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert metadata["ss_network_dim"] == "Dynamic"  # rank 6 where both have a module, 4 where only a has
    assert report.ratios == [1.0, 1.0]
    assert any("exact" in line for line in report.summary_lines())


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_ratios_must_match_models(files, tmp_path):
    with pytest.raises(ToolError) as error:
        merge_lora_files(files, [0.5], tmp_path / "out.safetensors")
    assert "2 models but 1 ratios; give one --ratios value per model" in one_line(error)


def test_a_module_whose_shapes_differ_is_refused(loras):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    other = {**loras[1], f"{name}.lora_down.weight": torch.ones(2, 7)}
    with pytest.raises(ToolError) as error:
        merge_loras([loras[0], other], [1, 1], names=["a.safetensors", "b.safetensors"])
    message = one_line(error)
    assert f"'{name}' is [32, 32] in a.safetensors but [32, 7] in b.safetensors" in message
    assert "one model family" in message


def test_loras_of_two_families_are_refused(loras):
    sdxl = {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(2, 8),
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(8, 2)}
    with pytest.raises(ToolError) as error:
        merge_loras([loras[0], sdxl], [1, 1], names=["sd1.safetensors", "xl.safetensors"])
    assert "sd1.safetensors is an SD1/SD2 LoRA but xl.safetensors is an SDXL LoRA" in one_line(error)


def test_base_model_versions_must_agree(loras, tmp_path):
    a = save_lora_file(tmp_path / "a.safetensors", loras[0], {"ss_base_model_version": "sd_v1"})
    b = save_lora_file(tmp_path / "b.safetensors", loras[1], {"ss_base_model_version": "sd_v2"})
    with pytest.raises(ToolError) as error:
        merge_lora_files([a, b], [1, 1], tmp_path / "out.safetensors")
    assert "a.safetensors is for sd_v1 but b.safetensors for sd_v2" in one_line(error)


@pytest.mark.parametrize("options, words", [
    ({"new_rank": 7}, ["--new_rank 7 would not add anything", "add up to 6", "pick 6 or less"]),
    ({"new_rank": 3, "new_conv_rank": 3}, ["--new_conv_rank 3", "add up to 2"]),
    ({"new_conv_rank": 1}, ["--new_conv_rank needs --new_rank"]),
    ({"new_rank": 0}, ["--new_rank must be 1 or more"]),
])
def test_bad_ranks_are_one_line(files, tmp_path, options, words):
    with pytest.raises(ToolError) as error:
        merge_lora_files(files, RATIOS, tmp_path / "out.safetensors", **options)
    message = one_line(error)
    assert all(word in message for word in words), message


def test_a_checkpoint_is_not_a_lora(base, files, tmp_path):
    from lorasmith.models.single_file import save_single_file

    checkpoint = save_single_file(base, tmp_path / "model.safetensors")
    with pytest.raises(ModelError, match="holds no kohya LoRA weights"):
        merge_lora_files([files[0], checkpoint], [1, 1], tmp_path / "out.safetensors")


def test_outputs_are_never_replaced_unasked(files, tmp_path):
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep me")
    with pytest.raises(ToolError, match="already exists; pick another --save_to or add --overwrite"):
        merge_lora_files(files, RATIOS, taken)
    assert taken.read_bytes() == b"keep me"
    with pytest.raises(ToolError, match="is one of the inputs"):
        merge_lora_files(files, RATIOS, files[1], overwrite=True)


def test_cli_merge(files, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    args = ["lora", "merge", "--models", str(files[0]), str(files[1]), "--ratios", "0.7", "0.3"]
    assert main([*args, "--save_to", str(out), "--new_rank", "3", "--new_conv_rank", "1"]) == 0
    printed = capsys.readouterr().out
    assert "merged 2 LoRAs (0.7 x a.safetensors, 0.3 x b.safetensors)" in printed
    assert "energy kept by the SVD" in printed and f"saved {out}" in printed
    assert main([*args, "--save_to", str(tmp_path / "joined.safetensors")]) == 0
    assert "exact" in capsys.readouterr().out
    assert main([*args, "0.1", "--save_to", str(tmp_path / "x.safetensors")]) == 2
    assert "error: 2 models but 3 ratios" in capsys.readouterr().err
    assert main([*args, "--save_to", str(tmp_path / "x.safetensors"), "--sd_model", "m.safetensors",
                 "--new_rank", "4"]) == 2
    assert "leave them out with --sd_model" in capsys.readouterr().err
