"""The streaming safetensors writer and the single-file / diffusers-folder writers."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lorasmith.models.single_file import save_single_file
from lorasmith.models.tensor_files import write_safetensors


def test_streaming_writer_matches_what_safetensors_reads(tmp_path):
    tensors = {
        "b.half": torch.randn(3, dtype=torch.float16),  # odd byte count before wider dtypes would misalign
        "a.float": torch.randn(2, 5),
        "c.ids": torch.arange(7),
        "d.scalar": torch.tensor(16.0),
        "e.marker": torch.tensor([]),
        "f.view": torch.randn(4, 4).T,  # non-contiguous
    }
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, {"k": "v"})
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value) and loaded[key].dtype == value.dtype
    with safe_open(str(path), "pt") as file:
        assert file.metadata() == {"k": "v"}


def test_writer_casts_floating_tensors_only(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"w": torch.randn(3, 3), "ids": torch.arange(3)}, dtype=torch.float16)
    loaded = load_file(str(path))
    assert loaded["w"].dtype == torch.float16 and loaded["ids"].dtype == torch.int64


def test_single_file_layout_metadata_and_marker(tmp_path, tiny_models):
    path = save_single_file(tiny_models("sd2", v_prediction=True), tmp_path / "m.safetensors", dtype=torch.float16)
    with safe_open(str(path), "pt") as file:
        keys = set(file.keys())
        configs = json.loads(file.metadata()["lorasmith.configs"])
        assert file.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
    assert "v_pred" in keys
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "first_stage_model.decoder.mid.attn_1.proj_out.weight" in keys
    assert configs["family"] == "sd2" and configs["v_prediction"] is True
    assert configs["unet"]["use_linear_projection"] is True and configs["text_encoder"]["hidden_act"] == "gelu"


def test_diffusers_folder_loads_in_diffusers_pipeline(saved_models):
    from diffusers import StableDiffusionXLPipeline

    folder = saved_models("sdxl", "diffusers")
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.tokenizer_2.pad_token == "!"
    assert pipe.text_encoder_2.config.projection_dim == 32
