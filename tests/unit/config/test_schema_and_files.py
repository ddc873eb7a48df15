import json

import pytest

from lorasmith.config.checks import check_config
from lorasmith.config.files import load_config, parse_overrides, save_config
from lorasmith.config.presets import PRESETS, load_preset
from lorasmith.config.schema import FIELDS, TrainConfig, from_dict, parse_value, with_values
from lorasmith.errors import ConfigError

TUTORIAL_KEYS = [
    "pretrained_model_name_or_path", "model_family", "v_parameterization", "train_data_dir", "reg_data_dir",
    "output_dir", "logging_dir", "output_name", "training_comment", "train_batch_size", "max_train_epochs",
    "save_every_n_epochs", "learning_rate", "text_encoder_lr", "unet_lr", "lr_scheduler", "lr_warmup_steps",
    "optimizer_type", "resolution", "network_dim", "network_alpha", "num_cpu_threads_per_process",
    "max_data_loader_n_workers", "gradient_checkpointing", "mixed_precision", "save_precision", "seed",
    "caption_extension", "shuffle_caption", "keep_tokens", "clip_skip", "enable_bucket", "noise_offset",
    "min_snr_gamma", "max_train_steps",
]


def test_schema_has_every_tutorial_parameter_with_a_doc():
    for key in TUTORIAL_KEYS:
        assert key in FIELDS, key
    for key, spec in FIELDS.items():
        assert spec.metadata["doc"], f"{key} has no explanation"
        assert spec.metadata["group"] in {"model", "folders", "basic", "advanced", "flux", "samples"}


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_save_then_load_gives_back_the_same_configuration(tmp_path, suffix):
    config = with_values(TrainConfig(), {
        "network_dim": 64, "network_alpha": 32, "learning_rate": 6e-5, "text_encoder_lr": 3e-5,
        "resolution": "576,576", "optimizer_args": ["weight_decay=0.01"], "training_comment": 'a "quoted" note',
        "gradient_checkpointing": True, "output_name": "mychar",
    })
    path = save_config(config, tmp_path / f"run{suffix}")
    loaded, notes = load_config(path)
    assert loaded == config and notes == []


def test_unknown_key_names_it_and_the_closest_valid_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("network_dimm = 32\n")
    with pytest.raises(ConfigError, match=r"unknown configuration key 'network_dimm'.*did you mean 'network_dim'"):
        load_config(path)


@pytest.mark.parametrize("key,value,pattern", [
    ("learning_rate", -1e-4, "learning_rate must be greater than 0"),
    ("bucket_reso_steps", 1, "bucket_reso_steps 1 does not fit.*multiple of 8.*64 is today's default"),
    ("network_dim", 0, "network_dim must be at least 1"),
    ("optimizer_type", "SGDX", "optimizer_type 'SGDX' is not known; use one of AdamW, AdamW8bit"),
    ("network_dropout", 1.5, "between 0 and 1"),
    ("lr_warmup_steps", 2.5, "lr_warmup_steps must be a whole number of steps, or below 1"),
    ("max_token_length", 100, "max_token_length must be 75, 150 or 225"),
])
def test_invalid_values_say_what_is_allowed(key, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        check_config(with_values(TrainConfig(), {key: value}), check_paths=False)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="network_dim must be a whole number"):
        from_dict({"network_dim": "lots"})
    with pytest.raises(ConfigError, match="gradient_checkpointing must be true or false"):
        parse_value("gradient_checkpointing", "maybe")


def test_missing_folder_is_an_error(tmp_path):
    config = with_values(TrainConfig(), {"train_data_dir": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="train_data_dir .* does not exist"):
        check_config(config, for_training=False)


def test_alpha_above_rank_is_allowed_but_warned():
    warnings = check_config(with_values(TrainConfig(), {"network_dim": 8, "network_alpha": 16}), check_paths=False)
    assert any("network_alpha" in w and "above" in w for w in warnings)


def test_overrides_parse_flags_values_and_lists():
    values = parse_overrides(["--network_dim", "64", "--gradient_checkpointing", "--optimizer_args", "a=1", "b=2",
                              "--unet_lr=1e-5"])
    config = with_values(TrainConfig(), values)
    assert (config.network_dim, config.gradient_checkpointing, config.optimizer_args, config.unet_lr) == (
        64, True, ["a=1", "b=2"], 1e-5)
    with pytest.raises(ConfigError, match="did you mean 'network_alpha'"):
        parse_overrides(["--network_alfa", "8"])


def test_presets_load_and_differ_as_the_tutorial_says():
    assert {"8gb", "12gb", "flux-8gb", "flux-12gb", "flux-16gb", "flux-24gb"} == set(PRESETS)
    medium, high = load_preset("8gb"), load_preset("12gb")
    assert medium.gradient_checkpointing and medium.cache_latents and medium.optimizer_type == "AdamW8bit"
    assert medium.resolution_wh == (512, 512) and medium.train_batch_size <= 2
    assert high.train_batch_size == 4 and high.resolution_wh[0] > 512
    for preset in (medium, high):
        check_config(preset, check_paths=False)


def test_sd_scripts_style_toml_tables_are_flattened(tmp_path):
    path = tmp_path / "sd.toml"
    path.write_text("[model_arguments]\nv_parameterization = true\n[training_arguments]\ntrain_batch_size = 2\n")
    config, _ = load_config(path)
    assert config.v_parameterization and config.train_batch_size == 2


def test_sd_scripts_arguments_without_meaning_here_are_one_note_and_typos_still_fail(tmp_path):
    path = tmp_path / "sd.toml"
    path.write_text('[network_arguments]\nnetwork_module = "networks.lora"\nnetwork_dim = 8\n'
                    '[training_arguments]\nxformers = true\npersistent_data_loader_workers = true\n')
    config, notes = load_config(path)
    assert config.network_dim == 8
    assert notes == ["sd-scripts settings with no effect here: xformers, persistent_data_loader_workers"]
    path.write_text('network_module = "lycoris.kohya"\nnetwork_args = ["algo=loha", "conv_dim=4"]\n'
                    'color_aug = true\nrandom_crop = false\n')
    config, notes = load_config(path)  # read as it is: train refuses it (tests/unit/config/test_losing.py)
    assert (config.network_module, config.network_args, config.conv_dim) == ("lycoris.kohya", ["algo=loha"], 4)
    assert notes == ["sd-scripts settings lorasmith does not train yet, left out: color_aug=True"]
    path.write_text('xformers = true\nnetwrok_dim = 8\n')
    with pytest.raises(ConfigError, match="unknown configuration key 'netwrok_dim'.*did you mean 'network_dim'"):
        load_config(path)


KOHYA_GUI_JSON = {
    "LoRA_type": "Standard", "adaptive_noise_scale": 0, "additional_parameters": "--noise_offset 0.05 --foo",
    "bucket_no_upscale": True, "bucket_reso_steps": 64, "cache_latents": True, "cache_latents_to_disk": False,
    "caption_dropout_every_n_epochs": 0.0, "caption_dropout_rate": 0, "caption_extension": ".txt", "clip_skip": "2",
    "color_aug": False, "conv_alpha": 1, "conv_dim": 1, "enable_bucket": True, "epoch": 10, "flip_aug": False,
    "full_fp16": False, "gradient_accumulation_steps": 1.0, "gradient_checkpointing": True, "keep_tokens": "0",
    "learning_rate": "0.0001", "logging_dir": "", "lr_scheduler": "constant", "lr_warmup": "0",
    "max_data_loader_n_workers": "0", "max_resolution": "512,512", "max_token_length": "75",
    "max_train_epochs": "", "mixed_precision": "fp16", "model_list": "custom", "network_alpha": 16,
    "network_dim": 32, "noise_offset": 0, "num_cpu_threads_per_process": 4, "optimizer": "AdamW8bit",
    "optimizer_args": "", "output_dir": "", "output_name": "mychar", "pretrained_model_name_or_path": "",
    "prior_loss_weight": 1.0, "reg_data_dir": "", "resume": "", "save_every_n_epochs": 1,
    "save_model_as": "safetensors", "save_precision": "fp16", "seed": "1234", "shuffle_caption": False,
    "text_encoder_lr": "5e-5", "train_batch_size": 2, "train_data_dir": "", "unet_lr": "0.0001",
    "v2": False, "v_parameterization": False, "xformers": True, "sdxl": False, "max_train_steps": "",
}


def test_kohya_ss_gui_json_loads_as_it_is(tmp_path):
    path = tmp_path / "medium_vram.json"
    path.write_text(json.dumps(KOHYA_GUI_JSON))
    config, notes = load_config(path)
    assert config.max_train_epochs == 10 and config.resolution_wh == (512, 512)
    assert config.optimizer_type == "AdamW8bit" and config.clip_skip == 2 and config.seed == 1234
    assert config.text_encoder_lr == 5e-5 and config.unet_lr == 1e-4 and config.train_batch_size == 2
    assert config.noise_offset == 0.05  # from additional_parameters
    assert config.conv_dim == 0  # Standard LoRA: the GUI's conv_dim does not apply
    assert config.model_family == "auto" and config.output_name == "mychar"
    assert len(notes) == 1 and "xformers" in notes[0] and "--foo" in notes[0]
    check_config(config, check_paths=False)


def test_kohya_ss_gui_json_v2_and_sdxl_pick_the_family(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({**KOHYA_GUI_JSON, "sdxl": True}))
    assert load_config(path)[0].model_family == "sdxl"
    path.write_text(json.dumps({**KOHYA_GUI_JSON, "v2": True, "v_parameterization": True}))
    config = load_config(path)[0]
    assert config.model_family == "sd2" and config.v_parameterization


def test_kohya_ss_gui_warmup_percent_becomes_a_fraction_of_the_steps(tmp_path):
    path = tmp_path / "warm.json"
    path.write_text(json.dumps({**KOHYA_GUI_JSON, "lr_warmup": "10", "lr_scheduler": "cosine"}))
    config, notes = load_config(path)
    assert config.lr_warmup_steps == 0.1 and not any("lr_warmup" in n for n in notes)
    path.write_text(json.dumps({**KOHYA_GUI_JSON, "lr_warmup": "10", "lr_warmup_steps": 50}))
    assert load_config(path)[0].lr_warmup_steps == 50  # a step count the GUI also wrote wins
    path.write_text(json.dumps({**KOHYA_GUI_JSON, "lr_warmup": "100"}))
    with pytest.raises(ConfigError, match="lr_warmup must be a percent"):
        load_config(path)


def test_kohya_ss_gui_max_token_length_applies(tmp_path):
    path = tmp_path / "long.json"
    path.write_text(json.dumps({**KOHYA_GUI_JSON, "max_token_length": "225"}))
    config, notes = load_config(path)
    assert config.max_token_length == 225 and not any("max_token_length" in n for n in notes)
