"""Family detection from tensor names and shapes, and from diffusers folders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lorasmith.errors import ModelError
from lorasmith.models.detect import detect_family, family_from_tensors

U = "model.diffusion_model."


@pytest.mark.parametrize("layout", ["single_file", "diffusers"])
@pytest.mark.parametrize(("family", "v_prediction"), [("sd1", None), ("sd2", True), ("sdxl", None)])
def test_detects_tiny_models_in_both_layouts(saved_models, family, layout, v_prediction):
    name, details = detect_family(saved_models(family, layout))
    assert name == family
    assert details["layout"] == layout
    assert details["v_prediction"] is v_prediction
    assert details["configs"]["unet"]["cross_attention_dim"] in (32, 64)


# Names (with real shapes) as they appear in published checkpoints, without any weights.
REAL = {
    "sd1": {U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)},
    "sd2": {U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
            "cond_stage_model.model.ln_final.weight": (1024,)},
    "sdxl": {U + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
             U + "label_emb.0.0.weight": (1280, 2816),
             "conditioner.embedders.1.model.ln_final.weight": (1280,)},
}


@pytest.mark.parametrize("family", REAL)
def test_detects_real_layouts_from_names(family):
    name, details = family_from_tensors({U + "input_blocks.0.0.weight": (320, 4, 3, 3), **REAL[family]}, {}, "x")
    assert name == family
    assert details["configs"] is None  # real files load with the shipped configs
    assert details["in_channels"] == 4


@pytest.mark.parametrize(("context", "family"), [(768, "sd1"), (1024, "sd2")])
def test_unet_only_file_by_context_width(context, family):
    shapes = {U + "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, context)}
    assert family_from_tensors(shapes, {}, "x")[0] == family


def test_comfyui_v_pred_marker(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(2, 1024),
               "v_pred": torch.tensor([])}, str(path))
    assert detect_family(path) == ("sd2", {"layout": "single_file", "v_prediction": True, "configs": None,
                                          "context_dim": 1024, "in_channels": None})


def test_lora_file_is_named_as_such(tmp_path):
    path = tmp_path / "char.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(path))
    with pytest.raises(ModelError, match="char.safetensors is a LoRA, not a base model"):
        detect_family(path)


def test_unknown_family_asks_for_family():
    with pytest.raises(ModelError, match="pass --family"):
        family_from_tensors({U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 48)}, {}, "odd")


def test_sdxl_refiner_is_refused():
    with pytest.raises(ModelError, match="refiner"):
        family_from_tensors({U + "x": (1,), "conditioner.embedders.0.model.ln_final.weight": (1280,)}, {}, "r")


def test_folder_that_is_not_a_diffusers_model(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ModelError, match="not a diffusers model"):
        detect_family(tmp_path)


def test_diffusers_folder_family_from_configs(tmp_path):
    for part, config in {"unet": {"cross_attention_dim": 1024}, "vae": {}, "text_encoder": {"hidden_act": "gelu"}}.items():
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text(json.dumps(config))
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text('{"prediction_type": "v_prediction"}')
    name, details = detect_family(tmp_path)
    assert (name, details["v_prediction"]) == ("sd2", True)
