"""Flux.1 configurations: the kohya_ss GUI's Flux preset, sd-scripts' Flux keys, the flux-24gb preset, the
plan's file size, and the settings that lose or cannot apply on a Flux model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorasmith import api
from lorasmith.config.checks import check_family_shapes
from lorasmith.config.kohya_ss import translate
from lorasmith.config.losing import losing_settings, unhonoured_settings
from lorasmith.config.presets import load_preset
from lorasmith.config.schema import TrainConfig, from_dict, with_values
from lorasmith.errors import ConfigError
from lorasmith.models.families import FLUX, SD1

# The kohya_ss GUI's own Flux preset (bmaltais/kohya_ss presets/lora/"flux1D - adamw8bit fp8.json"), the keys
# that matter here with the values it ships.
GUI_FLUX_PRESET = {
    "LoRA_type": "Flux1", "flux1_checkbox": True, "ae": "put the full path to ae.sft here",
    "clip_l": "put the full path to clip_l.safetensors here", "t5xxl": "put the full path to the file here",
    "apply_t5_attn_mask": True, "discrete_flow_shift": 3, "guidance_scale": 1, "model_prediction_type": "raw",
    "timestep_sampling": "sigmoid", "t5xxl_max_token_length": 512, "flux1_cache_text_encoder_outputs": True,
    "flux1_cache_text_encoder_outputs_to_disk": True, "fp8_base": True, "full_bf16": True, "min_snr_gamma": 7,
    "noise_offset": 0.05, "noise_offset_type": "Original", "network_dim": 16, "network_alpha": 16,
    "optimizer": "AdamW8bit", "mixed_precision": "bf16", "save_precision": "bf16", "max_resolution": "512,512",
    "train_blocks": "all", "split_mode": False, "sdxl_cache_text_encoder_outputs": True, "epoch": 1,
    "learning_rate": 0.0003, "unet_lr": 0.0003, "max_train_steps": 1000,
}


def test_the_kohya_gui_flux_preset_reads_as_a_flux_run_with_its_recipe():
    values, notes = translate(GUI_FLUX_PRESET)
    config = from_dict(values)
    assert config.model_family == "flux" and config.network_module == "networks.lora_flux"
    assert (config.timestep_sampling, config.model_prediction_type, config.guidance_scale) == ("sigmoid", "raw", 1.0)
    assert config.discrete_flow_shift == 3.0 and config.t5xxl_max_token_length == 512 and config.apply_t5_attn_mask
    assert config.ae.startswith("put the full path") and config.cache_text_encoder_outputs
    assert config.network_train_unet_only  # the GUI's rule: a unet_lr without a text-encoder rate
    assert config.fp8_base and config.full_bf16 and config.cache_text_encoder_outputs_to_disk  # built: kept
    assert not any("fp8_base" in n or "full_bf16" in n or "cache_text_encoder_outputs" in n for n in notes)


def test_gui_flux_fields_become_sd_scripts_network_args():
    values, _ = translate({**GUI_FLUX_PRESET, "img_attn_dim": 8, "single_dim": 4, "train_t5xxl": True,
                           "split_mode": True, "train_double_block_indices": "0-3"})
    assert values["network_args"] == ["img_attn_dim=8", "single_dim=4", "train_double_block_indices=0-3",
                                      "train_blocks=single", "train_t5xxl=True"]


def test_flux_keys_are_left_out_without_the_flux_checkbox():
    values, _ = translate({"LoRA_type": "Standard", "guidance_scale": 1, "ae": "x", "epoch": 1})
    assert "guidance_scale" not in values and "ae" not in values and values["model_family"] == "auto"


def test_settings_flux_does_not_read_say_so_and_flux_keys_on_sd_say_so():
    config = with_values(TrainConfig(), {"min_snr_gamma": 7, "noise_offset": 0.05, "clip_skip": 2})
    lines = losing_settings(config, {"min_snr_gamma", "noise_offset", "clip_skip"}, "flux")
    assert [line.split()[0] for line in lines] == ["min_snr_gamma", "noise_offset", "clip_skip"]
    assert all("Flux.1" in line for line in lines)
    sd = losing_settings(with_values(TrainConfig(), {"guidance_scale": 1.0}), {"guidance_scale"}, "sd1")
    assert sd == ["guidance_scale 1 has no effect: only Flux.1 models read it, and this is sd1; remove it or give a "
                  "Flux.1 model"]
    assert losing_settings(config, {"min_snr_gamma"}, None) == []  # family not known: nothing said


def test_a_flux_network_arg_typo_is_refused_in_one_line_naming_it():
    config = with_values(TrainConfig(), {"network_module": "networks.lora_flux",
                                         "network_args": ["train_blocks=single", "img_atn_dim=4"]})
    lines = unhonoured_settings(config)
    assert len(lines) == 1 and "img_atn_dim" in lines[0]
    fine = with_values(config, {"network_args": ["train_blocks=single", "img_attn_dim=4"]})
    assert unhonoured_settings(fine) == []


def test_flux_buckets_must_be_multiples_of_16():
    with pytest.raises(ConfigError, match="bucket_reso_steps 40"):
        check_family_shapes(with_values(TrainConfig(), {"bucket_reso_steps": 40}), FLUX)
    with pytest.raises(ConfigError, match="resolution 520,520"):
        check_family_shapes(with_values(TrainConfig(), {"enable_bucket": False, "resolution": "520,520"}), FLUX)
    check_family_shapes(with_values(TrainConfig(), {"bucket_reso_steps": 40}), SD1)  # SD takes 8


def test_the_flux_24gb_preset_plans_with_the_flux_lora_file_size(make_dataset, tmp_path):
    config = with_values(load_preset("flux-24gb"), {"train_data_dir": str(make_dataset({"10_mychar": 4})),
                                                   "output_dir": str(tmp_path / "out")})
    assert config.model_family == "flux" and config.mixed_precision == "bf16" and config.network_train_unet_only
    plan = api.plan(config)
    # rank 16 unet only in bf16: sd-scripts' file is 153,268,528 bytes with only the sshs_* metadata
    assert 153_268_528 <= plan.lora_file_bytes <= 153_268_528 + 8_000
    assert any("LoRA file: about 153." in line for line in plan.lines())
    with_clip = api.plan(with_values(config, {"network_train_unet_only": False}))
    # CLIP-L's 72 modules, as in sd-scripts' files (the header's padding to 8 bytes aside)
    assert abs((with_clip.lora_file_bytes - plan.lora_file_bytes) - (158_605_512 - 153_268_528)) <= 8


def test_the_flux_preset_file_names_only_keys_of_the_schema():
    from importlib import resources

    import tomllib

    text = resources.files("lorasmith.config").joinpath("presets/flux-24gb.toml").read_text("utf-8")
    values = tomllib.loads(text)
    assert set(values) <= set(json.loads(json.dumps(list(TrainConfig.__dataclass_fields__))))
    assert Path(str(resources.files("lorasmith.models").joinpath("assets/t5_tokenizer/NOTICE"))).is_file()
