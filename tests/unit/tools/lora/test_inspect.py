"""`lora inspect`: the report of files we train, convert, or get from LyCORIS and elsewhere, from headers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lorasmith.cli import main
from lorasmith.errors import ToolError
from lorasmith.network.files import save_lora_file
from lorasmith.tools.lora.consumers import architecture
from lorasmith.tools.lora.convert import convert_lora
from lorasmith.tools.lora.inspect_lora import inspect_lora
from tests.unit.tools.lora.lora_builders import random_lora

TAGS = {"10_smithy": {"smithy": 12, "red hair": 9, "1girl": 12}, "5_style": {"red hair": 4, " outdoors": 2}}
METADATA = {
    "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
    "ss_network_args": json.dumps({"conv_dim": "2", "conv_alpha": "2"}), "ss_base_model_version": "sd_v1",
    "ss_sd_model_name": "tiny-sd1", "ss_new_sd_model_hash": "ab" * 32, "ss_sd_model_hash": "1234abcd",
    "ss_resolution": "(512, 512)", "ss_epoch": "2", "ss_num_epochs": "10", "ss_steps": "500",
    "ss_max_train_steps": "1000", "ss_learning_rate": "0.0001", "ss_unet_lr": "None", "ss_text_encoder_lr": "5e-05",
    "ss_optimizer": "torch.optim.adamw.AdamW", "ss_training_comment": "smithy, a red-haired smith",
    "ss_tag_frequency": json.dumps(TAGS), "modelspec.architecture": "stable-diffusion-v1/lora",
}


@pytest.fixture(scope="module")
def sd1():
    from lorasmith.models.tiny import tiny_base_model

    return tiny_base_model("sd1", seed=0)


@pytest.fixture(scope="module")
def tensors(sd1):
    return random_lora(sd1, rank=4, alpha=2.0, conv_rank=2, seed=1)


@pytest.fixture(scope="module")
def trained(tensors, tmp_path_factory):
    return save_lora_file(tmp_path_factory.mktemp("lora") / "smithy.safetensors", tensors, METADATA, "fp16")


def test_a_file_we_train_reports_family_blocks_parts_and_trigger_words(trained, tensors, monkeypatch):
    import safetensors

    read = []  # tensors read: only alphas (one number each), the rest comes from the header
    real = safetensors.safe_open

    class Spy:
        def __init__(self, *args, **kwargs):
            self.file = real(*args, **kwargs)

        def __enter__(self):
            self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def get_tensor(self, key):
            read.append(key)
            return self.file.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    report = inspect_lora(trained)
    assert read and all(k.endswith(".alpha") for k in read)

    assert (report.family, report.architecture, report.key_format) == ("sd1", "sd1-tiny", "kohya")
    assert report.dtypes == ["F16"] and report.file_hash and report.tensors == len(tensors)
    downs = [v for k, v in tensors.items() if k.endswith("lora_down.weight")]
    convs, ones = sum(v.shape[-1] == 3 for v in downs), sum(v.dim() == 4 and v.shape[-1] == 1 for v in downs)
    assert report.network_types == {"LoRA": {"linear": len(downs) - convs - ones, "conv 1x1": ones},
                                    "LoCon": {"conv 3x3": convs}}
    assert report.parts == ["UNet", "text encoder", f"conv layers ({convs} modules, rank 2)"]
    rows = {r.block: (r.modules, r.rank, r.alpha) for r in report.blocks}
    assert [r.block for r in report.blocks] == ["text encoder", "down 0", "down 1", "mid", "up 0", "up 1"]
    assert rows["text encoder"] == (18, "4", "2")  # 3 layers x (q, k, v, out, fc1, fc2)
    assert rows["down 0"] == (16, "2/4", "2")  # attention (12), resnet (conv1, conv2, time_emb_proj), downsampler
    assert sum(m for m, _, _ in rows.values()) == len(tensors) // 3
    assert report.trigger_words == [("red hair", 13), ("1girl", 12), ("smithy", 12), ("outdoors", 2)]
    assert report.training == {
        "epochs": "2 of 10", "steps": "500 of 1000", "resolution": "(512, 512)", "learning rate": "0.0001",
        "text encoder lr": "5e-05", "optimizer": "torch.optim.adamw.AdamW", "network module": "networks.lora",
        "network dim": "4", "network alpha": "2.0", "network args": METADATA["ss_network_args"],
        "comment": "smithy, a red-haired smith"}
    assert report.base_model == {"version": "sd_v1", "name": "tiny-sd1", "hash": "1234abcd", "sha256": "ab" * 32,
                                 "modelspec": "stable-diffusion-v1/lora"}
    assert [(v.consumer, v.line()) for v in report.consumers] == [
        ("AUTOMATIC1111", "yes"), ("ComfyUI", "yes"), ("diffusers", "yes")]
    text = "\n".join(report.lines())
    assert "trigger words: red hair (13), 1girl (12), smithy (12), outdoors (2)" in text
    assert "  down 0             16   2/4      2" in text


def test_a_diffusers_file_reads_the_same_and_comfyui_skips_its_attention(trained, tmp_path):
    convert_lora(trained, "diffusers", tmp_path / "d.safetensors")
    kohya, report = inspect_lora(trained), inspect_lora(tmp_path / "d.safetensors")
    assert (report.family, report.key_format) == ("sd1", "diffusers-peft")
    assert report.blocks == kohya.blocks  # alphas from lora_adapter_metadata, ranks, per block
    assert report.network_types == kohya.network_types and report.trigger_words == kohya.trigger_words
    a1111, comfy, diffusers = report.consumers
    assert a1111.loads == "no" and diffusers.line() == "yes"
    assert comfy.loads == "partly" and comfy.skipped  # ComfyUI maps unet.….processor.to_q, not peft's ….to_q
    assert all(k.startswith("unet.") and (".attn1.to_" in k or ".attn2.to_" in k) for k in comfy.skipped)
    assert "alpha taken as rank" in comfy.note


def test_a_lycoris_loha_file(sd1, tmp_path):
    from lycoris.modules.loha import LohaModule

    arch, tensors = architecture("sd1-tiny"), {}
    chosen = [s for s in arch.slots if s.component == "unet" and (s.path.endswith(("to_q", "proj_in", "conv1")))]
    for slot in chosen:
        layer = sd1.unet.get_submodule(slot.path)
        for key, value in LohaModule(slot.kohya, layer, lora_dim=4, alpha=1).state_dict().items():
            tensors[f"{slot.kohya}.{key}"] = value.contiguous()
    save_file(tensors, tmp_path / "loha.safetensors")
    report = inspect_lora(tmp_path / "loha.safetensors")
    assert report.key_format == "LyCORIS"
    # 4 attention blocks: attn1/attn2 to_q (linear) and proj_in (1x1 in SD1); 8 resnets' conv1 (3x3)
    assert report.network_types == {"LoHa": {"linear": 8, "conv 1x1": 4, "conv 3x3": 8}}
    assert report.family == "sd1" and report.unrecognised == []
    assert any(p.startswith("conv layers") for p in report.parts)
    a1111, comfy, diffusers = report.consumers
    assert (a1111.loads, comfy.loads, diffusers.loads) == ("yes", "yes", "no")
    assert "have not been correctly renamed" in diffusers.note  # its kohya converter knows no LoHa keys


def test_keys_no_program_maps_are_listed(tensors, tmp_path):
    odd = {"lora_unet_down_blocks_5_attentions_0_proj_in.lora_down.weight": torch.ones(4, 32, 1, 1),
           "lora_unet_down_blocks_5_attentions_0_proj_in.lora_up.weight": torch.ones(32, 4, 1, 1),
           "lora_te_text_model_encoder_layers_40_mlp_fc1.lora_down.weight": torch.ones(4, 32),
           "lora_te_text_model_encoder_layers_40_mlp_fc1.lora_up.weight": torch.ones(37, 4)}
    save_file({**tensors, **odd}, tmp_path / "odd.safetensors")
    report = inspect_lora(tmp_path / "odd.safetensors")
    assert report.family == "sd1"
    assert report.unrecognised == ["lora_te_text_model_encoder_layers_40_mlp_fc1",
                                   "lora_unet_down_blocks_5_attentions_0_proj_in"]
    for verdict in report.consumers:
        assert verdict.loads == "partly" and verdict.skipped == sorted(odd), verdict.consumer
        assert verdict.line().startswith(f"partly: 4 of {len(tensors) + 4} keys skipped (lora_te_text_model")

    save_file({**tensors, "model.diffusion_model.out.2.weight": torch.ones(4)}, tmp_path / "mixed.safetensors")
    a1111, comfy, diffusers = inspect_lora(tmp_path / "mixed.safetensors").consumers
    assert a1111.skipped == comfy.skipped == ["model.diffusion_model.out.2.weight"]
    assert diffusers.loads == "no" and "holds no 'lora'" in diffusers.note


def test_sdxl_keys_in_diffusers_layout_miss_one_layer_in_a1111(tmp_path):
    from lorasmith.models.tiny import tiny_base_model

    arch = architecture("sdxl-tiny")
    tensors = random_lora(tiny_base_model("sdxl", seed=0), rank=2, alpha=1.0, conv_rank=2)
    diffusers_named = {}
    for key, value in tensors.items():  # as diffusers' convert_state_dict_to_kohya names SDXL's UNet
        name, _, part = key.partition(".")
        slot = arch.by_kohya[name]
        name = f"lora_unet_{slot.path.replace('.', '_')}" if slot.component == "unet" else name
        diffusers_named[f"{name}.{part}"] = value
    save_file(diffusers_named, tmp_path / "sdxl.safetensors")
    report = inspect_lora(tmp_path / "sdxl.safetensors")
    assert report.family == "sdxl" and report.unrecognised == []
    a1111, comfy, _ = report.consumers
    # A1111 puts up block 0's upsampler after a resnet (SD1's layout); SDXL's up block 0 has attention.
    assert a1111.skipped == [f"lora_unet_up_blocks_0_upsamplers_0_conv.{p}"
                             for p in ("alpha", "lora_down.weight", "lora_up.weight")]
    assert comfy.loads == "yes"


@pytest.mark.parametrize("name, content, said", [
    ("notes.safetensors", b"not a LoRA", "is not a safetensors file"),
    ("old.ckpt", b"\x80\x02", "is a pickle file"),
])
def test_what_is_not_a_safetensors_file_is_said_in_one_line(tmp_path, capsys, name, content, said):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ToolError, match=said) as error:
        inspect_lora(tmp_path / name)
    assert "\n" not in str(error.value)
    assert main(["lora", "inspect", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and said in err and err.count("\n") == 1


def test_json_output_parses(trained, capsys):
    assert main(["lora", "inspect", str(trained), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["family"] == "sd1" and found["key_format"] == "kohya"
    assert found["trigger_words"][0] == ["red hair", 13]
    assert [c["line"] for c in found["consumers"]] == ["yes", "yes", "yes"]
    assert found["blocks"][0] == {"block": "text encoder", "modules": 18, "rank": "4", "alpha": "2"}
    assert main(["lora", "inspect", str(trained)]) == 0
    assert "loads in:" in capsys.readouterr().out
