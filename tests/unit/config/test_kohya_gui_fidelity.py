"""kohya_ss GUI JSON and sd-scripts TOML mean here what they meant there (kohya_gui/lora_gui.py's rules)."""

from __future__ import annotations

import json

import pytest

from lorasmith import api
from lorasmith.config.sources import resolve_config
from lorasmith.errors import ConfigError
from lorasmith.models.tiny import tiny_base_model

# Shaped like the GUI's own presets (presets/lora/*.json): numbers as strings, every key written.
GUI_PRESET = {
    "LoRA_type": "Standard", "adaptive_noise_scale": 0.00357, "additional_parameters": "--log_prefix=xl-loha",
    "bucket_no_upscale": True, "bucket_reso_steps": 64.0, "cache_latents": True, "caption_dropout_rate": 0,
    "caption_extension": ".txt", "clip_skip": "1", "conv_alpha": 4, "conv_dim": 8, "enable_bucket": True,
    "epoch": 6, "gradient_accumulation_steps": "1", "keep_tokens": "1", "learning_rate": 1.0, "lr_scheduler": "cosine",
    "lr_scheduler_num_cycles": "", "lr_warmup": 5, "max_bucket_reso": 2048, "max_grad_norm": 0,
    "max_resolution": "1024,1024", "max_token_length": "75", "max_train_epochs": "", "max_train_steps": "",
    "min_bucket_reso": 256, "min_snr_gamma": 5, "mixed_precision": "bf16", "multires_noise_discount": 0.2,
    "multires_noise_iterations": 8, "network_alpha": 16, "network_dim": 32, "noise_offset": 0.0357,
    "noise_offset_type": "Original", "optimizer": "DAdaptAdam",
    "optimizer_args": '"decouple=True" "weight_decay=0.1" "betas=0.9,0.91"', "prior_loss_weight": 1.0,
    "rank_dropout": 0, "module_dropout": 0, "sample_every_n_epochs": 2,
    "sample_prompts": "mychar, 1girl, smiling --w 832 --h 1216 --s 20 --l 4 --d 42", "sample_sampler": "euler_a",
    "save_every_n_epochs": 1, "save_every_n_steps": 0, "save_precision": "bf16", "scale_weight_norms": 1, "sdxl": True,
    "seed": "1337", "shuffle_caption": True, "text_encoder_lr": 1.0, "train_batch_size": 2, "unet_lr": 1.0,
    "v2": False, "xformers": "xformers",
}


def _load(tmp_path, values: dict, name: str = "preset.json"):
    path = tmp_path / name
    path.write_text(json.dumps(values))
    return resolve_config(str(path))


def test_a_gui_preset_loads_with_the_settings_it_names(tmp_path):
    resolved = _load(tmp_path, GUI_PRESET)
    config = resolved.config
    assert (config.model_family, config.optimizer_type, config.lr_scheduler) == ("sdxl", "DAdaptAdam", "cosine")
    assert config.optimizer_args == ["decouple=True", "weight_decay=0.1", "betas=0.9,0.91"]
    assert (config.max_train_epochs, config.max_train_steps) == (6, 0)  # `epoch` when neither limit is set
    assert config.lr_warmup_steps == 0.05 and config.seed == 1337 and config.keep_tokens == 1
    assert config.max_grad_norm == 1.0  # the GUI leaves a 0 out, so sd-scripts' default applies
    assert (config.noise_offset, config.adaptive_noise_scale) == (0.0357, 0.00357)
    assert config.multires_noise_iterations == 0  # noise_offset_type Original passes no multires settings
    assert any("noise_offset_type Original leaves out multires_noise_iterations" in n for n in resolved.notes)
    # a Standard LoRA: the GUI passes no conv settings, and no network_args for zero dropouts
    assert (config.network_module, config.network_args, config.conv_dim) == ("networks.lora", [], 0)
    assert config.bucket_reso_steps == 64 and config.resolution == "1024,1024"
    assert any("--log_prefix" in n and "xformers" in n for n in resolved.notes)


def test_sample_prompts_text_becomes_the_runs_prompt_file(tmp_path):
    from lorasmith.sampling.prompts import is_prompt_text, read_prompts_file, run_prompts_file

    config = _load(tmp_path, GUI_PRESET).config
    assert is_prompt_text(config.sample_prompts)
    path = run_prompts_file(config.sample_prompts, tmp_path / "out")
    assert path == tmp_path / "out" / "sample" / "prompt.txt"  # where the GUI writes it
    [prompt] = read_prompts_file(path)
    assert (prompt.prompt, prompt.width, prompt.height, prompt.steps, prompt.seed) == ("mychar, 1girl, smiling",
                                                                                       832, 1216, 20, 42)
    assert run_prompts_file(config.sample_prompts, tmp_path / "out") == path  # the same text: the same file
    (path).write_text("a prompt of the user's own\n")
    other = run_prompts_file(config.sample_prompts, tmp_path / "out")
    assert other.name == "prompt-2.txt" and path.read_text() == "a prompt of the user's own\n"  # never replaced
    assert not is_prompt_text("prompts/mychar.txt") and not is_prompt_text("C:\\lora\\prompts")


@pytest.mark.parametrize("changes, expected", [
    ({"noise_offset_type": "Multires"}, {"noise_offset": 0.0, "adaptive_noise_scale": 0.0,
                                         "multires_noise_iterations": 8, "multires_noise_discount": 0.2}),
    ({"text_encoder_lr": 0, "unet_lr": 1e-4}, {"network_train_unet_only": True, "unet_lr": 1e-4}),
    ({"unet_lr": "", "text_encoder_lr": 5e-5}, {"network_train_text_encoder_only": True}),
    ({"max_train_steps": "320"}, {"max_train_epochs": 0, "max_train_steps": 320}),  # steps set: epoch unused
    ({"max_train_epochs": "16", "max_train_steps": "320"}, {"max_train_epochs": 16, "max_train_steps": 320}),
    ({"lr_scheduler": "adafactor", "optimizer": "Adafactor",
      "optimizer_args": "scale_parameter=False relative_step=False warmup_init=False"},
     {"lr_scheduler": "adafactor", "optimizer_type": "Adafactor"}),
    ({"additional_parameters": '--lr_scheduler_type "CosineAnnealingLR" --lr_scheduler_args "T_max=1000" '
                               '"eta_min=0e-0" --network_train_unet_only --max_grad_norm=0'},
     {"lr_scheduler_type": "CosineAnnealingLR", "lr_scheduler_args": ["T_max=1000", "eta_min=0e-0"],
      "network_train_unet_only": True, "max_grad_norm": 0.0}),
    ({"lora_network_weights": "/loras/start.safetensors"}, {"network_weights": "/loras/start.safetensors"}),
])
def test_the_guis_rules_for_each_setting(tmp_path, changes, expected):
    config = _load(tmp_path, {**GUI_PRESET, **changes}).config
    assert {key: getattr(config, key) for key in expected} == expected


@pytest.mark.parametrize("lora_type, module, args, conv", [
    ("Kohya LoCon", "networks.lora", [], (8, 4.0)),
    ("LyCORIS/LoHa", "lycoris.kohya", ["algo=loha", "preset=full", "use_tucker=True"], (8, 4.0)),
    ("LyCORIS/LoKr", "lycoris.kohya", ["algo=lokr", "preset=full", "use_tucker=True", "factor=6"], (8, 4.0)),
    ("LoCon", "lycoris.kohya", ["algo=locon", "preset=full", "use_tucker=True"], (8, 4.0)),  # renamed by the GUI
    ("Flux1", "networks.lora_flux", [], (0, 1.0)),
])
def test_lora_types_become_the_network_module_and_args_the_gui_passes(tmp_path, lora_type, module, args, conv):
    values = {**GUI_PRESET, "LoRA_type": lora_type, "LyCORIS_preset": "full", "use_tucker": True,
              "factor": 6 if "LoKr" in lora_type else -1}
    config = _load(tmp_path, values).config
    assert (config.network_module, config.network_args, (config.conv_dim, config.conv_alpha)) == (module, args, conv)


def test_a_standard_lora_with_dropouts_and_block_weights_keeps_them_as_network_args(tmp_path):
    config = _load(tmp_path, {**GUI_PRESET, "rank_dropout": 0.1, "down_lr_weight": "1,1,1,1,1,1,1,1,1,1,1,1"}).config
    assert config.network_args == ["down_lr_weight=1,1,1,1,1,1,1,1,1,1,1,1", "rank_dropout=0.1"]


def test_a_preset_that_plans_with_the_network_type_it_cannot_train_refuses_to_train(tmp_path, make_dataset):
    root = make_dataset({"10_mychar": 2})
    resolved = _load(tmp_path, {**GUI_PRESET, "LoRA_type": "LyCORIS/BOFT", "train_data_dir": str(root)})
    lines = []
    api.plan(resolved.config, given=resolved.given, events=lambda event: lines.append(event.text))
    assert any(line.startswith("train will refuse: LyCORIS algo=boft is not trained by lorasmith yet")
               for line in lines)
    with pytest.raises(ConfigError, match="^LyCORIS algo=boft .* pick one of those"):
        api.train(resolved.config, given=resolved.given, base=tiny_base_model("sdxl"))


def test_old_presets_bucket_steps_and_buckets_off_resolutions_follow_sd_scripts(tmp_path, make_dataset):
    root = make_dataset({"10_mychar": 2})
    old = _load(tmp_path, {**GUI_PRESET, "bucket_reso_steps": 1, "train_data_dir": str(root)}).config
    with pytest.raises(ConfigError, match="bucket_reso_steps 1 does not fit.*sd-scripts needs a multiple of 8.*"
                                          "64 is today's default"):
        api.plan(old)
    # sd-scripts trains "512,650" with buckets off (the EDG presets): so do we
    edg = _load(tmp_path, {**GUI_PRESET, "max_resolution": "512,650", "enable_bucket": False,
                           "train_data_dir": str(root)}).config
    step_plan = api.plan(edg)
    assert set(step_plan.bucket_counts) == {(512, 650)}


def test_sd_scripts_toml_network_args_become_locon_with_sd_scripts_alpha(tmp_path):
    path = tmp_path / "sd.toml"
    path.write_text('[additional_network_arguments]\nnetwork_module = "networks.lora"\nnetwork_dim = 16\n'
                    'network_args = ["conv_dim=8", "conv_alpha=4"]\n')
    config = resolve_config(str(path)).config
    assert (config.conv_dim, config.conv_alpha, config.network_args) == (8, 4.0, [])
    path.write_text('network_args = ["conv_dim=8"]\n')
    assert resolve_config(str(path)).config.conv_alpha == 1.0  # unset: 1.0, as sd-scripts' networks.lora


@pytest.mark.parametrize("args, alpha", [('["conv_dim=8", "conv_alpha=4"]', 4.0), ('["conv_dim=8"]', 1.0)])
def test_sd_scripts_locon_network_args_build_the_modules_and_scale_sd_scripts_builds(tmp_path, args, alpha):
    from lorasmith.network.lora import create_lora_network
    from lorasmith.train.setup import lora_spec

    path = tmp_path / "sd.toml"
    path.write_text(f'network_module = "networks.lora"\nnetwork_dim = 4\nnetwork_alpha = 2\nnetwork_args = {args}\n')
    network = create_lora_network(tiny_base_model("sd1"), lora_spec(resolve_config(str(path)).config))
    tensors = network.kohya_state_dict()
    # sd-scripts' networks.lora with conv_dim: the ResnetBlock2D / Down- / Upsample2D 3x3 convs, at conv_dim
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert tuple(tensors[f"{conv}.lora_down.weight"].shape) == (8, 32, 3, 3)
    assert tuple(tensors[f"{conv}.lora_up.weight"].shape) == (32, 8, 1, 1)
    assert float(tensors[f"{conv}.alpha"]) == alpha
    assert "lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight" in tensors
    module = next(m for m in network.modules if m.key == conv)
    assert module.layer.scaling["lorasmith"] == pytest.approx(alpha / 8)  # scale = conv_alpha / conv_dim
    linear = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert float(tensors[f"{linear}.alpha"]) == 2.0 and tensors[f"{linear}.lora_down.weight"].shape[0] == 4
