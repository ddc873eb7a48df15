"""A setting the user gave that loses to another says so, naming both keys and what to do."""

from __future__ import annotations

import pytest

from lorasmith.cli import main
from lorasmith.config.losing import losing_settings, unhonoured_settings
from lorasmith.config.schema import TrainConfig, with_values
from lorasmith.config.sources import resolve_config


def lines_for(values: dict, given=None) -> list[str]:
    config = with_values(TrainConfig(), values)
    return losing_settings(config, set(values) if given is None else given)


@pytest.mark.parametrize("values, expected", [
    ({"max_train_epochs": 10, "max_train_steps": 500},
     "max_train_steps 500 has no effect: max_train_epochs 10 decides the length (as in sd-scripts); set "
     "max_train_epochs 0 to train 500 steps"),
    ({"text_encoder_lr": 5e-5, "network_train_unet_only": True},
     "text_encoder_lr 5e-05 has no effect: network_train_unet_only trains no text encoder"),
    ({"unet_lr": 1e-4, "network_train_text_encoder_only": True},
     "unet_lr 0.0001 has no effect: network_train_text_encoder_only trains no UNet"),
    ({"learning_rate": 2e-4, "unet_lr": 1e-4, "text_encoder_lr": 5e-5},
     "learning_rate 0.0002 has no effect: unet_lr and text_encoder_lr set the rate of each part"),
    ({"sample_every_n_epochs": 2}, "sample_every_n_epochs 2 has no effect: sample_prompts is not set"),
    ({"sample_sampler": "ddim"}, "sample_sampler ddim has no effect: sample_prompts is not set"),
    ({"sample_prompts": "mychar, 1girl"},
     "sample_prompts mychar, 1girl has no effect: neither sample_every_n_epochs nor sample_every_n_steps is set"),
    ({"cache_text_encoder_outputs": True},
     "cache_text_encoder_outputs true has no effect: the text encoder is trained"),
    ({"cache_text_encoder_outputs": True, "network_train_unet_only": True, "shuffle_caption": True},
     "cache_text_encoder_outputs true has no effect: shuffle_caption or caption dropout changes the captions"),
    ({"cache_text_encoder_outputs_to_disk": True, "network_train_unet_only": True, "caption_dropout_rate": 0.1},
     "cache_text_encoder_outputs_to_disk true has no effect: shuffle_caption or caption dropout changes"),
    ({"fp8_base": True, "fp8_base_unet": True}, "fp8_base true has no effect: fp8_base_unet keeps the text encoders"),
    ({"keep_tokens": 1}, "keep_tokens 1 has no effect: only shuffle_caption and caption_tag_dropout_rate"),
    ({"multires_noise_discount": 0.1}, "multires_noise_discount 0.1 has no effect: multires_noise_iterations is 0"),
    ({"text_encoder_batch_size": 4}, "text_encoder_batch_size 4 has no effect: text-encoder outputs are not cached"),
    ({"conv_alpha": 4}, "conv_alpha 4 has no effect: conv_dim is 0"),
    ({"lr_warmup_steps": 100}, "lr_warmup_steps 100 has no effect: lr_scheduler constant has no warm-up; use "
                               "constant_with_warmup"),
    ({"lr_scheduler_num_cycles": 3, "lr_scheduler": "cosine"},
     "lr_scheduler_num_cycles 3 has no effect: only lr_scheduler cosine_with_restarts restarts"),
    ({"lr_scheduler_power": 2.0}, "lr_scheduler_power 2 has no effect: only lr_scheduler polynomial uses a power"),
    ({"lr_scheduler": "cosine", "lr_scheduler_type": "CosineAnnealingLR"},
     "lr_scheduler cosine has no effect: lr_scheduler_type CosineAnnealingLR replaces it"),
    ({"lr_scheduler": "cosine", "optimizer_type": "AdamWScheduleFree"},
     "lr_scheduler cosine has no effect: AdamWScheduleFree is schedule-free and needs no scheduler"),
    ({"optimizer_type": "Adafactor", "unet_lr": 1e-4},
     "unet_lr 0.0001 has no effect: Adafactor with relative_step (sd-scripts' default) sets its own rates"),
    ({"save_last_n_epochs": 3, "save_every_n_epochs": 0},
     "save_last_n_epochs 3 has no effect: save_every_n_epochs is 0"),
    ({"enable_bucket": False, "min_bucket_reso": 128}, "min_bucket_reso 128 has no effect: enable_bucket is off"),
    ({"network_args": ["dropout=0.1"]}, "network_args dropout has no effect (sd-scripts' networks.lora ignores it"),
    ({"huber_c": 0.3}, "huber_c 0.3 has no effect: loss_type l2 has no threshold; set loss_type huber"),
    ({"ip_noise_gamma_random_strength": True},
     "ip_noise_gamma_random_strength true has no effect: ip_noise_gamma is 0"),
])
def test_each_losing_setting_gets_one_line(values, expected):
    lines = lines_for(values)
    assert any(line.startswith(expected) for line in lines), lines


def test_settings_that_win_or_apply_say_nothing():
    assert lines_for({"max_train_epochs": 0, "max_train_steps": 500, "network_dim": 64}) == []
    assert lines_for({"text_encoder_lr": 5e-5, "shuffle_caption": True, "keep_tokens": 1}) == []
    # a setting nobody gave is no news: the defaults (or a preset's values) lose quietly
    assert lines_for({"max_train_epochs": 10, "max_train_steps": 500}, given={"max_train_epochs"}) == []


def test_max_train_steps_given_alone_decides_the_length(tmp_path):
    resolved = resolve_config(None, {"max_train_steps": "100000"})
    assert (resolved.config.max_train_epochs, resolved.config.max_train_steps) == (0, 100000)
    both = resolve_config(None, {"max_train_steps": "500", "max_train_epochs": "4"})
    assert (both.config.max_train_epochs, both.config.max_train_steps) == (4, 500)
    assert losing_settings(both.config, both.given)[0].startswith("max_train_steps 500 has no effect")
    path = tmp_path / "mine.toml"
    path.write_text("max_train_steps = 300\n")
    assert resolve_config(str(path), preset="8gb").config.max_train_epochs == 0  # the preset's epochs lose to it


def test_network_types_not_trained_are_named_for_train_to_refuse():
    assert unhonoured_settings(TrainConfig()) == []
    lycoris = {"network_module": "lycoris.kohya"}
    assert unhonoured_settings(with_values(TrainConfig(), {**lycoris, "network_args": ["algo=loha", "factor=4"]})) == []
    [line] = unhonoured_settings(with_values(TrainConfig(), {**lycoris, "network_args": ["algo=boft"]}))
    assert line.startswith("LyCORIS algo=boft is not trained by lorasmith yet")
    [line] = unhonoured_settings(with_values(TrainConfig(), {**lycoris, "network_args": ["algo=loha", "facter=4"]}))
    assert line.startswith("network_args facter=4 is not read by lycoris.kohya (a typo?)")
    [line] = unhonoured_settings(with_values(TrainConfig(), {"network_module": "networks.oft_flux"}))
    assert line.startswith("Flux.1 OFT (network_module networks.oft_flux) is not trained by lorasmith yet")
    assert unhonoured_settings(with_values(TrainConfig(), {"network_args": ["rank_dropout=0.1"]})) == []
    [line] = unhonoured_settings(with_values(TrainConfig(), {"network_args": ["rank_dropout=0.1", "block_dims=2"]}))
    assert line.startswith("network_args rank_dropout and block_dims cannot be trained together")
    [line] = unhonoured_settings(with_values(TrainConfig(), {"network_args": ["algo=loha"]}))
    assert line.startswith("network_args algo=loha is not trained by lorasmith yet (sd-scripts' networks.lora")


def test_plan_and_train_print_the_lines_and_take_the_preset_anywhere(make_dataset, capsys):
    root = make_dataset({"10_mychar": 2})
    code = main(["plan", "--train_data_dir", str(root), "--preset", "8gb", "--max_train_steps", "100",
                 "--max_train_epochs", "3", "--text_encoder_lr", "1e-5", "--network_train_unet_only"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "warning: max_train_steps 100 has no effect: max_train_epochs 3 decides" in printed.err
    assert "warning: text_encoder_lr 1e-05 has no effect: network_train_unet_only" in printed.err
    assert "total steps: 60" in printed.out  # 2 images x 10 repeats, 3 epochs, the 8gb preset's batch 1
    assert main(["plan", "--preset=12gb", "--train_data_dir", str(root)]) == 0
    assert "batch size: 4" in capsys.readouterr().out
