"""ss_* / modelspec metadata as sd-scripts writes it, and the LoRA size estimate."""

from __future__ import annotations

import json

import pytest

from lorasmith.config.schema import TrainConfig
from lorasmith.errors import ConfigError
from lorasmith.models.families import SD1, SD2, SDXL
from lorasmith.network.metadata import build_metadata
from lorasmith.network.size import estimate_lora_bytes

REFERENCE_KEYS = """ss_network_module ss_network_dim ss_network_alpha ss_learning_rate ss_unet_lr ss_text_encoder_lr
ss_lr_scheduler ss_optimizer ss_num_epochs ss_epoch ss_steps ss_max_train_steps ss_batch_size_per_device
ss_num_train_images ss_num_reg_images ss_resolution ss_enable_bucket ss_bucket_info ss_mixed_precision
ss_gradient_checkpointing ss_cache_latents ss_seed ss_clip_skip ss_noise_offset ss_min_snr_gamma ss_keep_tokens
ss_shuffle_caption ss_sd_model_name ss_sd_model_hash ss_new_sd_model_hash ss_base_model_version ss_output_name
ss_training_comment ss_dataset_dirs ss_tag_frequency ss_session_id modelspec.architecture modelspec.sai_model_spec
modelspec.title modelspec.resolution modelspec.prediction_type modelspec.date""".split()


def metadata(config: TrainConfig, family=SD1, v_prediction=False) -> dict[str, str]:
    return build_metadata(
        config, family=family, v_prediction=v_prediction, base_model_name="nai.safetensors",
        base_model_hashes={"sd_model_hash": "925997e9", "new_sd_model_hash": "ab" * 32},
        epoch=2, steps=160, max_steps=800, num_train_images=80, num_reg_images=0,
        dataset_dirs={"10_mychar": {"n_repeats": 10, "img_count": 8}}, tag_frequency={"10_mychar": {"1girl": 8}},
        bucket_info={"buckets": {"0": {"resolution": [512, 512], "count": 80}}, "mean_img_ar_error": 0.0},
        session_id="12345", training_started_at=1700000000.5, saved_at=1700000100.0,
    )


def test_every_reference_key_as_sd_scripts_formats_it():
    config = TrainConfig(output_name="mychar", network_dim=32, network_alpha=16, resolution="512,512",
                         text_encoder_lr=5e-5, optimizer_args=["weight_decay=0.01"])
    meta = metadata(config)
    assert not [k for k in REFERENCE_KEYS if k not in meta]
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("32", "16.0")
    assert meta["ss_resolution"] == "(512, 512)"
    assert (meta["ss_learning_rate"], meta["ss_text_encoder_lr"], meta["ss_unet_lr"]) == ("0.0001", "5e-05", "None")
    assert meta["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.01)"
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_mychar": {"n_repeats": 10, "img_count": 8}}
    assert json.loads(meta["ss_tag_frequency"]) == {"10_mychar": {"1girl": 8}}
    assert json.loads(meta["ss_bucket_info"])["buckets"]["0"]["count"] == 80
    assert (meta["ss_epoch"], meta["ss_steps"], meta["ss_max_train_steps"]) == ("2", "160", "800")
    assert (meta["ss_enable_bucket"], meta["ss_v2"], meta["ss_noise_offset"]) == ("True", "False", "None")
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_new_sd_model_hash"] == "ab" * 32
    assert "ss_network_args" not in meta
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert (meta["modelspec.title"], meta["modelspec.resolution"]) == ("mychar", "512x512")
    assert meta["modelspec.prediction_type"] == "epsilon" and meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.date"].startswith("2023-11-1")


def test_family_specific_values_and_network_args():
    config = TrainConfig(conv_dim=8, conv_alpha=4, resolution="768", network_dropout=0.1, noise_offset=0.05)
    meta = metadata(config, SD2, v_prediction=True)
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "4"}
    assert (meta["ss_network_dropout"], meta["ss_noise_offset"]) == ("0.1", "0.05")
    assert (meta["ss_v2"], meta["ss_base_model_version"]) == ("True", "sd_v2")
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_resolution"] == "(768, 768)"
    meta = metadata(TrainConfig(resolution="1024,1024"), SDXL)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"


def test_size_estimate_matches_the_reference_files_and_the_tutorial():
    # sd-scripts' files for SD1.5: rank 32 -> 37,864,328 bytes, rank 8 -> 9,550,952 bytes.
    assert abs(estimate_lora_bytes("sd1", 32) - 37_864_328) < 200
    assert abs(estimate_lora_bytes("sd1", 8) - 9_550_952) < 200
    per_rank_mb = (estimate_lora_bytes("sd1", 64) - estimate_lora_bytes("sd1", 32)) / 32 / 2**20
    assert 1.10 < per_rank_mb < 1.15  # the tutorial's "about 1.125 x rank MB"
    assert estimate_lora_bytes("sd1", 32, save_precision="float") > 2 * estimate_lora_bytes("sd1", 32) - 200_000
    assert estimate_lora_bytes("sd1", 32, conv_rank=8) > estimate_lora_bytes("sd1", 32)
    assert estimate_lora_bytes("sd1", 32, train_text_encoder=False) < estimate_lora_bytes("sd1", 32)
    assert estimate_lora_bytes("sdxl", 32) > 3 * estimate_lora_bytes("sd1", 32)
    with pytest.raises(ConfigError, match="save_precision"):
        estimate_lora_bytes("sd1", 32, save_precision="fp8")


@pytest.mark.parametrize("family, layout", [("sd1", "single_file"), ("sdxl", "diffusers")])
def test_size_estimate_reads_the_architecture_a_checkpoint_carries(tiny, tmp_path, family, layout):
    # The demo's tiny model (or any diffusers folder) is not the family's real architecture: the
    # plan must size the LoRA of the model it will train, not of SD1.5.
    from lorasmith.models.detect import detect_family
    from lorasmith.models.single_file import save_diffusers_folder, save_single_file
    from lorasmith.network.lora import LoraSpec, create_lora_network
    from lorasmith.network.size import METADATA_BYTES_ESTIMATE, tensor_index_bytes

    base = tiny(family)
    saved = (save_single_file(base, tmp_path / "tiny.safetensors") if layout == "single_file"
             else save_diffusers_folder(base, tmp_path / "tiny"))
    configs = detect_family(saved)[1]["configs"]
    tensors = create_lora_network(base, LoraSpec(rank=4, alpha=2)).kohya_state_dict()
    header = tensor_index_bytes({k: tuple(t.shape) for k, t in tensors.items()}, "fp16") + METADATA_BYTES_ESTIMATE
    tensor_bytes = sum(t.numel() * 2 for t in tensors.values())  # fp16
    assert estimate_lora_bytes(family, 4, configs=configs) == 8 + header + tensor_bytes
    assert 8 + header + tensor_bytes < estimate_lora_bytes(family, 4) / 20  # far from the real architecture's size
