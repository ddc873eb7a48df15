"""load_base_model: tiny models saved by lorasmith load back identical; bad inputs give one-line errors."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import save_file

from lorasmith.errors import ModelError
from lorasmith.models.hashes import hash_in_background, model_hashes
from lorasmith.models.load import load_base_model


def _outputs(base) -> list[torch.Tensor]:
    """UNet, VAE and text-encoder outputs for fixed inputs."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    image = torch.randn(1, 3, 32, 32, generator=generator)
    ids = base.tokenizers[0]("a photo of mychar", padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        texts = [encoder(ids).last_hidden_state for encoder in base.text_encoders]
        context = torch.cat(texts, dim=-1)
        extra = {}
        if base.family.name == "sdxl":
            pooled = base.text_encoders[1](ids).text_embeds
            extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": torch.zeros(1, 6)}}
        noise = base.unet(latents, 10, encoder_hidden_states=context, **extra).sample
        decoded = base.vae.decode(latents).sample
        encoded = base.vae.encode(image).latent_dist.mean
    return [*texts, noise, decoded, encoded]


def assert_same_outputs(got_base, expected_base) -> None:
    """The same weights in freshly built modules: equal within fp32 noise, not bit for bit, since another
    CPU (or memory layout) may take other kernels for the same arithmetic."""
    for got, expected in zip(_outputs(got_base), _outputs(expected_base), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["single_file", "diffusers"])
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_round_trip_gives_identical_weights_and_the_same_outputs(tiny_models, saved_models, family, layout):
    original = tiny_models(family, v_prediction=family == "sd2")
    loaded = load_base_model(str(saved_models(family, layout)))
    assert loaded.family.name == family
    assert loaded.v_prediction is (family == "sd2")
    assert loaded.noise_scheduler.config.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    assert loaded.info["layout"] == layout
    assert [t.pad_token for t in loaded.tokenizers] == [t.pad_token for t in original.tokenizers]
    for got, expected in zip([*loaded.text_encoders, loaded.unet, loaded.vae],
                             [*original.text_encoders, original.unet, original.vae], strict=True):
        got_state, expected_state = got.state_dict(), expected.state_dict()
        assert got_state.keys() == expected_state.keys()
        assert all(torch.equal(got_state[k], expected_state[k]) for k in expected_state)  # the same stored tensors
    assert_same_outputs(loaded, original)


def test_single_file_metadata_name_and_hash(saved_models):
    path = saved_models("sd1", "single_file")
    base = load_base_model(str(path))
    assert base.name == "tiny-sd1" and base.source == str(path)
    data = path.read_bytes()
    legacy = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert base.info == {"layout": "single_file", "sd_model_hash": legacy}
    assert model_hashes(path) == {"sd_model_hash": legacy, "new_sd_model_hash": hashlib.sha256(data).hexdigest()}
    assert hash_in_background(path).result(timeout=60) == model_hashes(path)


def test_background_hash_hands_a_read_error_to_the_caller(tmp_path):
    with pytest.raises(FileNotFoundError):
        hash_in_background(tmp_path / "gone.safetensors").result(timeout=60)


def test_loads_in_the_requested_dtype_and_keeps_requires_grad(saved_models):
    base = load_base_model(str(saved_models("sdxl", "single_file")), dtype=torch.bfloat16)
    for module in (base.unet, base.vae, *base.text_encoders):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
        assert all(p.requires_grad and p.device.type == "cpu" for p in module.parameters())
    assert base.text_encoders[1].text_model.embeddings.position_ids.dtype == torch.int64


def test_v_parameterization_flag_turns_on_v_prediction(saved_models):
    assert load_base_model(str(saved_models("sd1", "single_file")), v_parameterization=True).v_prediction


def test_pickle_needs_allow_pickle(tmp_path, tiny_models):
    from lorasmith.models.convert import base_model_to_ldm

    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": base_model_to_ldm(tiny_models("sd1")), "global_step": 1}, path)
    with pytest.raises(ModelError, match="--allow_pickle") as error:
        load_base_model(str(path))
    assert "can run any code" in str(error.value) and "\n" not in str(error.value)
    # No lorasmith metadata in a pickle: with family given, the shipped real configs do not fit.
    with pytest.raises(ModelError, match="check --family"):
        load_base_model(str(path), allow_pickle=True)


def test_allowed_pickle_loads(tmp_path, tiny_models, monkeypatch):
    """A pickle has no lorasmith metadata: it loads with the shipped configs (here: the tiny ones)."""
    from lorasmith.models import load
    from lorasmith.models.convert import base_model_to_ldm
    from lorasmith.models.single_file import architecture_configs

    base = tiny_models("sd1")
    monkeypatch.setattr(load, "shipped_config", lambda family, part: architecture_configs(base)[part])
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": base_model_to_ldm(base)}, path)
    loaded = load_base_model(str(path), allow_pickle=True)
    assert loaded.name == "old" and loaded.family.name == "sd1"
    assert_same_outputs(loaded, base)


def test_family_override_that_does_not_fit(saved_models):
    with pytest.raises(ModelError, match="check --family"):
        load_base_model(str(saved_models("sd1", "single_file")), family="sdxl")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.safetensors", "base model not found"),
        (lambda p: (p / "photos").mkdir() or p / "photos", "not a diffusers model"),
        (lambda p: _write(p / "cut.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{}"), "may be truncated"),
        (lambda p: _write(p / "model.onnx", b"x"), "unknown model file type"),
        (lambda p: _lora(p / "char.safetensors"), "is a LoRA, not a base model"),
        (lambda p: _lora(p / "vae.safetensors", "encoder.conv_in.weight"), "holds no Stable Diffusion UNet"),
    ],
)
def test_bad_inputs_give_one_line_errors(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ModelError, match=message) as error:
        load_base_model(str(path))
    assert "\n" not in str(error.value)


def test_unknown_family_name(saved_models):
    with pytest.raises(ModelError, match="unknown model family 'sd3'"):
        load_base_model(str(saved_models("sd1", "single_file")), family="sd3")


def test_truncated_real_looking_file(tmp_path, saved_models):
    data = saved_models("sd1", "single_file").read_bytes()
    path = _write(tmp_path / "half.safetensors", data[: len(data) // 2])
    with pytest.raises(ModelError, match="half.safetensors is not a readable .safetensors file.*download it again"):
        load_base_model(str(path))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _lora(path, key="lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"):
    save_file({key: torch.zeros(2, 2)}, str(path))
    return path


def test_file_sha256_reads_files_larger_than_its_block(tmp_path):
    from lorasmith.models.hashes import file_sha256

    path = tmp_path / "big.bin"
    data = os.urandom(33 * 2**20 + 5)  # two full 16 MiB blocks and a short one
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def other_vae_files(tmp_path_factory):
    """Another tiny VAE (seed 5) saved as users find VAEs: original names, diffusers names, a pickle."""
    from lorasmith.models.convert import base_model_to_ldm
    from lorasmith.models.ldm_layout import VAE_PREFIX
    from lorasmith.models.tiny import tiny_base_model

    other = tiny_base_model("sd1", seed=5)
    original = {key[len(VAE_PREFIX):]: value.contiguous() for key, value in base_model_to_ldm(other).items()
                if key.startswith(VAE_PREFIX)}
    root = tmp_path_factory.mktemp("vae")
    save_file(original, root / "vae-original.safetensors")
    save_file({k: v.contiguous() for k, v in other.vae.state_dict().items()}, root / "vae-diffusers.safetensors")
    torch.save({"state_dict": original}, root / "animevae.pt")
    return other.vae, root


@pytest.mark.parametrize("layout", ["single_file", "diffusers"])
@pytest.mark.parametrize("name", ["vae-original.safetensors", "vae-diffusers.safetensors", "animevae.pt"])
def test_a_separate_vae_file_replaces_the_checkpoints_own(tiny_models, saved_models, other_vae_files, layout, name):
    other_vae, root = other_vae_files
    base = load_base_model(str(saved_models("sd1", layout)), vae_path=str(root / name), allow_pickle=True)
    got, expected = base.vae.state_dict(), other_vae.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    own = tiny_models("sd1")  # everything else is the checkpoint's
    assert all(torch.equal(a, b) for a, b in zip(base.unet.state_dict().values(), own.unet.state_dict().values()))


def test_a_separate_vae_that_is_not_one_is_a_one_line_error(saved_models, other_vae_files, tmp_path):
    _, root = other_vae_files
    checkpoint = str(saved_models("sd1", "single_file"))
    with pytest.raises(ModelError, match="animevae.pt is a pickle.*--allow_pickle"):
        load_base_model(checkpoint, vae_path=str(root / "animevae.pt"))
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, tmp_path / "lora.safetensors")
    with pytest.raises(ModelError, match="lora.safetensors holds no VAE encoder"):
        load_base_model(checkpoint, vae_path=str(tmp_path / "lora.safetensors"))
    with pytest.raises(ModelError, match="VAE file not found"):
        load_base_model(checkpoint, vae_path=str(tmp_path / "gone.safetensors"))


def test_loading_a_diffusers_folder_shows_no_third_party_progress_bar(saved_models, capfd):
    """transformers' "Loading weights: 100%|..." bar would interleave with our own output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    load_base_model(str(saved_models("sdxl", "diffusers")))
    printed = capfd.readouterr()
    assert "Loading" not in printed.err + printed.out and "it/s" not in printed.err + printed.out
    assert transformers_logging.is_progress_bar_enabled() and diffusers_logging.is_progress_bar_enabled()  # restored
