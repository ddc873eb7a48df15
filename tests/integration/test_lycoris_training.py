"""Training each LyCORIS network type end to end on the tiny models, from sd-scripts keys and kohya_ss GUI files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lorasmith import api
from lorasmith.config.sources import resolve_config
from lorasmith.models.tiny import tiny_base_model
from lorasmith.network.apply import apply_loras
from lorasmith.network.files import load_lora_file
from tests.integration.test_training import fixed_noise_loss

# (network_module, network_args, a tensor suffix only that network type writes)
NETWORKS = [
    ("lycoris.kohya", ["algo=loha"], "hada_w1_a"),
    ("lycoris.kohya", ["algo=lokr", "factor=4"], "lokr_w1"),
    ("lycoris.kohya", ["algo=ia3"], "on_input"),
    ("lycoris.kohya", ["algo=glora"], "a1.weight"),
    ("lycoris.kohya", ["algo=locon", "conv_dim=2", "conv_alpha=1"], "lora_mid.weight"),
    ("networks.lora", ["dora_wd=True"], "dora_scale"),
]


@pytest.mark.parametrize("module,args,suffix", NETWORKS, ids=["loha", "lokr", "ia3", "glora", "locon", "dora"])
def test_each_network_type_lowers_the_loss_and_saves_a_file_whose_merge_is_the_trained_network(
        tiny_train_config, module, args, suffix):
    extra = ["use_tucker=True"] if "algo=locon" in args else []
    config = tiny_train_config(max_train_epochs=6, learning_rate=1e-2, network_module=module,
                               network_args=args + extra, save_precision="float", optimizer_type="AdamW")
    base = tiny_base_model("sd1", seed=0)
    before = fixed_noise_loss(base, config)
    result = api.train(config, base=base)
    after = fixed_noise_loss(base, config)  # the network is live in `base`
    assert after < before, (before, after)

    tensors, metadata = load_lora_file(result.final_file)
    assert any(key.endswith(f".{suffix}") for key in tensors)
    assert metadata["ss_network_module"] == module
    assert set(args) <= {f"{k}={v}" for k, v in json.loads(metadata["ss_network_args"]).items()}

    fresh = tiny_base_model("sd1", seed=0)
    apply_loras(fresh, [(result.final_file, 1.0)])
    assert fixed_noise_loss(fresh, config) == pytest.approx(after, rel=1e-4)  # our merge = the trained network


# Shaped like the kohya_ss GUI's own LyCORIS presets (presets/lora/loha-sd15.json, lokr-sd15.json,
# iA3-sd15.json, "sd15 - GLoRA v1.0.json"): the LyCORIS fields as those files give them.
GUI_LYCORIS = {
    "LyCORIS/LoHa": ({"network_dim": 32, "network_alpha": 16, "conv_dim": 8, "conv_alpha": 4, "factor": -1,
                      "use_cp": True, "decompose_both": False, "rank_dropout": 0, "module_dropout": 0}, "hada_w1_a"),
    "LyCORIS/LoKr": ({"network_dim": 64, "network_alpha": 64, "conv_dim": 64, "conv_alpha": 64, "factor": -1,
                      "use_cp": False, "decompose_both": False, "rank_dropout": 0, "module_dropout": 0}, "lokr_w1"),
    "LyCORIS/iA3": ({"network_dim": 64, "network_alpha": 64, "conv_dim": 64, "conv_alpha": 64, "factor": -1,
                     "use_cp": False, "rank_dropout": 0, "module_dropout": 0}, "on_input"),
    "LyCORIS/GLoRA": ({"network_dim": 8, "network_alpha": 1, "conv_dim": 4, "conv_alpha": 1, "factor": -1,
                       "rank_dropout": 0, "module_dropout": 0}, "a1.weight"),
}


@pytest.mark.parametrize("lora_type", list(GUI_LYCORIS))
def test_a_kohya_gui_lycoris_preset_trains_its_own_algorithm(tiny_train_config, tmp_path, lora_type):
    fields, suffix = GUI_LYCORIS[lora_type]
    plain = tiny_train_config(max_train_epochs=1)
    preset = {"LoRA_type": lora_type, "LyCORIS_preset": "full", "train_norm": False, "dora_wd": False,
              "optimizer": "AdamW", "learning_rate": 0.0001, "unet_lr": 0.0001, "text_encoder_lr": 5e-05,
              "lr_scheduler": "constant", "epoch": 1, "max_train_epochs": "", "max_train_steps": "",
              "max_resolution": "64,64", "min_bucket_reso": 64, "max_bucket_reso": 128, "bucket_reso_steps": 64,
              "enable_bucket": True, "train_batch_size": 2, "save_precision": "fp16", "mixed_precision": "no",
              "train_data_dir": plain.train_data_dir, "output_dir": plain.output_dir, "output_name": "mychar",
              "num_cpu_threads_per_process": 1, "sdxl": False, "v2": False, "seed": "1234", **fields}
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    resolved = resolve_config(str(path))
    result = api.train(resolved.config, given=resolved.given, base=tiny_base_model("sd1"))
    tensors, metadata = load_lora_file(result.final_file)
    assert any(key.endswith(f".{suffix}") for key in tensors), sorted(tensors)[:4]
    assert metadata["ss_network_module"] == "lycoris.kohya"
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())


def test_generate_applies_a_lycoris_file_and_weight_zero_is_the_base(tiny_train_config):
    config = tiny_train_config(max_train_epochs=2, learning_rate=1e-2, network_module="lycoris.kohya",
                               network_args=["algo=loha"])
    result = api.train(config, base=tiny_base_model("sd1"))

    def image(weight: float) -> np.ndarray:
        made = api.generate(None, "mychar, 1girl", loras=[(result.final_file, weight)] if weight is not None else [],
                            steps=2, seed=3, width=64, height=64, base=tiny_base_model("sd1"))
        return np.asarray(made.images[0], dtype=np.int16)

    plain, zero, full = image(None), image(0.0), image(1.0)
    assert np.array_equal(plain, zero)
    assert np.abs(full - plain).max() > 0


def test_network_weights_start_a_lycoris_run_from_its_file_and_a_file_of_another_kind_is_refused(tiny_train_config,
                                                                                                  tmp_path):
    from lorasmith.errors import ModelError
    from lorasmith.events import Message

    first = api.train(tiny_train_config(max_train_epochs=1, learning_rate=1e-2, network_module="lycoris.kohya",
                                        network_args=["algo=loha"]), base=tiny_base_model("sd1"))
    events = []
    again = tiny_train_config(max_train_epochs=1, learning_rate=1e-12, network_module="lycoris.kohya",
                              network_args=["algo=loha"], network_weights=first.final_file,
                              output_dir=str(tmp_path / "again"), save_precision="float")
    second = api.train(again, events=events.append, base=tiny_base_model("sd1"))
    assert any(isinstance(e, Message) and e.text.startswith("starting from the LoRA weights") for e in events)
    a, _ = load_lora_file(first.final_file)
    b, _ = load_lora_file(second.final_file)
    for key in a:  # a rate of 1e-12 leaves the weights where the file had them
        torch.testing.assert_close(b[key], a[key].float(), rtol=0, atol=1e-6)
    other = tiny_train_config(max_train_epochs=1, network_module="lycoris.kohya", network_args=["algo=lokr"],
                              network_weights=first.final_file, output_dir=str(tmp_path / "other"))
    with pytest.raises(ModelError, match="hada_.*lokr network does not have"):
        api.train(other, base=tiny_base_model("sd1"))
