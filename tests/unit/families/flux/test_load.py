"""load_flux_model: a tiny Flux written in every layout users have loads back to the same outputs; bad inputs
give one-line errors naming the config key to set."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from lorasmith.errors import ModelError
from lorasmith.families.flux.load import load_flux_model
from lorasmith.families.flux.tiny_files import as_stored, write_tiny_flux
from lorasmith.models.tensor_files import SafetensorsFile, write_safetensors


@pytest.fixture(scope="module")
def base():
    from lorasmith.families.flux.tiny import tiny_flux_base_model

    return tiny_flux_base_model("dev", seed=1)


@pytest.fixture(scope="module")
def files(base, tmp_path_factory):
    """files(layout) -> the paths write_tiny_flux gave (written once per layout)."""
    cache: dict = {}

    def get(layout: str) -> dict:
        if layout not in cache:
            cache[layout] = write_tiny_flux(base, tmp_path_factory.mktemp(layout), layout)
        return cache[layout]

    return get


def _outputs(model) -> list[torch.Tensor]:
    """Transformer, AE and text-encoder outputs for fixed inputs."""
    generator = torch.Generator().manual_seed(0)
    clip, t5 = model.text_encoders
    tokens, width = 6, model.unet.config.joint_attention_dim
    ids = torch.tensor([[49406, 320, 1125, 539, 49407, 49407]])
    t5_ids = torch.tensor([[3, 9, 1202, 13, 82, 1]])
    extra = {"guidance": torch.tensor([3.5])} if model.unet.config.guidance_embeds else {}
    with torch.no_grad():
        clip_out = clip(ids)
        t5_out = t5(t5_ids).last_hidden_state
        noise = model.unet(
            hidden_states=torch.randn(1, 16, 64, generator=generator),
            encoder_hidden_states=torch.randn(1, tokens, width, generator=generator),
            pooled_projections=clip_out.pooler_output, timestep=torch.tensor([0.5]),
            img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(tokens, 3), **extra,
        ).sample
        latents = model.vae.encode(torch.randn(1, 3, 32, 32, generator=generator)).latent_dist.mean
        decoded = model.vae.decode(torch.randn(1, 16, 4, 4, generator=generator)).sample
    return [clip_out.last_hidden_state, t5_out, noise, latents, decoded]


def _assert_same_outputs(got, expected) -> None:
    for a, b in zip(_outputs(got), _outputs(expected), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _load(paths: dict, **kwargs):
    parts = {key: paths[key] for key in ("ae", "clip_l", "t5xxl") if key in paths}
    return load_flux_model(paths["model"], **{**parts, **kwargs})


@pytest.mark.parametrize("layout", ["bfl", "comfy", "fp8", "diffusers"])
def test_every_layout_loads_back_to_the_same_outputs(base, files, layout):
    paths = files(layout)
    ready: list = []
    loaded = _load(paths, vae_ready=lambda vae, family: ready.append((vae, family.name)))
    assert ready == [(loaded.vae, "flux")]  # the AE first, with the family
    assert loaded.family.name == "flux" and not loaded.v_prediction
    assert loaded.info["layout"] == ("diffusers" if layout == "diffusers" else "single_file")
    assert loaded.info["flux_variant"] == "dev" and loaded.info["float8"] is (layout == "fp8")
    assert loaded.info["files"]["model"] == str(paths["model"])
    assert all(p.dtype == torch.float32 for m in (loaded.unet, *loaded.text_encoders) for p in m.parameters())
    t5 = loaded.text_encoders[1]
    assert t5.shared.weight is t5.encoder.embed_tokens.weight  # read once, tied
    storages = [p.untyped_storage().data_ptr() for p in loaded.unet.parameters()]
    assert len(set(storages)) == len(storages)  # fused BFL tensors split into tensors of their own
    assert type(loaded.noise_scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert loaded.tokenizers[1]("a photo").input_ids == base.tokenizers[1]("a photo").input_ids
    _assert_same_outputs(loaded, as_stored(base, layout))


def test_routing_and_detection_see_flux(files):
    from lorasmith.models.detect import detect_family
    from lorasmith.models.load import load_base_model

    for layout in ("comfy", "diffusers"):
        paths = files(layout)
        family, details = detect_family(paths["model"])
        assert family == "flux" and details["flux_variant"] == "dev"
        assert details["configs"]["transformer"]["num_single_layers"] == 2  # what the planner builds
    paths = files("comfy")
    loaded = load_base_model(str(paths["model"]), ae=paths["ae"], clip_l=paths["clip_l"], t5xxl=paths["t5xxl"],
                             dtype=torch.bfloat16)
    assert loaded.family.name == "flux" and loaded.unet.dtype == torch.bfloat16
    assert loaded.info["sd_model_hash"]


def test_schnell_is_told_by_its_missing_guidance(base, tmp_path):
    from diffusers import FluxTransformer2DModel

    from lorasmith.families.flux.tiny import tiny_flux_transformer_config

    schnell = replace(base, unet=FluxTransformer2DModel(**tiny_flux_transformer_config("schnell")).eval())
    loaded = _load(write_tiny_flux(schnell, tmp_path, "bfl"))
    assert loaded.info["flux_variant"] == "schnell" and not loaded.unet.config.guidance_embeds
    _assert_same_outputs(loaded, as_stored(schnell, "bfl"))


def test_a_folder_takes_an_explicit_file_over_its_own_part(base, files):
    clip_file = files("bfl")["clip_l"]
    loaded = load_flux_model(files("diffusers")["model"], clip_l=clip_file)
    assert loaded.info["files"]["clip_l"] == str(clip_file)
    expected = as_stored(base, "bfl").text_encoders[0].state_dict()
    got = loaded.text_encoders[0].state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def _copy(source, target, rename=lambda k: k, cast=None) -> str:
    with SafetensorsFile(source) as file:
        tensors = {rename(k): file[k] if cast is None else file[k].to(cast) for k in file}
        write_safetensors(target, tensors, file.metadata())
    return str(target)


def test_an_all_in_one_file_needs_no_other_files(files, base, tmp_path):
    paths = files("comfy")
    prefixes = {"model": "", "ae": "vae.", "clip_l": "text_encoders.clip_l.transformer.",
                "t5xxl": "text_encoders.t5xxl.transformer."}
    tensors: dict = {}
    for part, prefix in prefixes.items():
        with SafetensorsFile(paths[part]) as file:
            tensors.update({prefix + k: file[k] for k in file})
            if part == "clip_l":
                metadata = file.metadata()  # CLIP's head count
    write_safetensors(tmp_path / "all.safetensors", tensors, metadata)
    loaded = load_flux_model(tmp_path / "all.safetensors")
    assert loaded.info["files"]["t5xxl"] == str(tmp_path / "all.safetensors")
    _assert_same_outputs(loaded, as_stored(base, "comfy"))


def _message(call) -> str:
    with pytest.raises(ModelError) as error:
        call()
    text = str(error.value)
    assert "\n" not in text
    return text


def _small_file(path, shapes: dict) -> str:
    write_safetensors(path, {k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()})
    return str(path)


def test_bad_inputs_give_one_line_naming_the_key(files, tmp_path):
    bfl = files("bfl")
    model, ae, clip_l, t5 = (str(bfl[k]) for k in ("model", "ae", "clip_l", "t5xxl"))
    text = _message(lambda: load_flux_model(model))
    assert "ae = " in text and "clip_l = " in text and "t5xxl = " in text
    text = _message(lambda: load_flux_model(model, ae=ae, clip_l=clip_l))
    assert "t5xxl = " in text and "clip_l =" not in text
    assert "pretrained_model_name_or_path" in _message(lambda: load_flux_model(tmp_path / "nothing.safetensors"))
    assert "(ae)" in _message(lambda: load_flux_model(model, ae=tmp_path / "no-ae.safetensors", clip_l=clip_l,
                                                      t5xxl=t5))
    text = _message(lambda: load_flux_model(ae, ae=ae, clip_l=clip_l, t5xxl=t5))
    assert "is the Flux AE" in text and "pretrained_model_name_or_path" in text and "and ae = ae.safetensors" in text
    assert "set ae = " in _message(lambda: load_flux_model(model, ae=clip_l, clip_l=clip_l, t5xxl=t5))
    assert "set t5xxl = " in _message(lambda: load_flux_model(model, ae=ae, clip_l=clip_l, t5xxl=ae))
    assert "set clip_l = " in _message(lambda: load_flux_model(model, ae=ae, clip_l=t5, t5xxl=t5))
    sd_vae = _small_file(tmp_path / "sd-vae.safetensors", {"encoder.down.0.block.0.conv1.weight": (8, 8, 3, 3),
                                                            "decoder.conv_in.weight": (8, 4, 3, 3)})
    assert "set ae = " in _message(lambda: load_flux_model(model, ae=sd_vae, clip_l=clip_l, t5xxl=t5))
    wide = _small_file(tmp_path / "clip-g.safetensors", {
        "text_model.embeddings.token_embedding.weight": (10, 48),
        "text_model.encoder.layers.0.self_attn.q_proj.weight": (48, 48),
    })
    assert "48 wide" in (text := _message(lambda: load_flux_model(model, ae=ae, clip_l=wide, t5xxl=t5))) and \
        "set clip_l = " in text
    sd1 = _small_file(tmp_path / "sd1.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3)})
    text = _message(lambda: load_flux_model(sd1, ae=ae, clip_l=clip_l, t5xxl=t5))
    assert "Stable Diffusion checkpoint" in text and "pretrained_model_name_or_path" in text
    e5m2 = _copy(model, tmp_path / "e5m2.safetensors", cast=torch.float8_e5m2)
    assert "float8_e5m2" in (text := _message(lambda: load_flux_model(e5m2, ae=ae, clip_l=clip_l, t5xxl=t5))) and \
        "pretrained_model_name_or_path" in text
    scaled = _copy(t5, tmp_path / "t5_scaled.safetensors", rename=lambda k: k.replace("o.weight", "o.scale_weight"))
    assert "set t5xxl = " in _message(lambda: load_flux_model(model, ae=ae, clip_l=clip_l, t5xxl=scaled))


def test_bad_folders_and_routing_give_one_line(files, tmp_path):
    from lorasmith.models.load import load_base_model

    sd1 = _small_file(tmp_path / "sd1.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3)})
    assert "pretrained_model_name_or_path" in _message(lambda: load_base_model(sd1, family="flux"))
    folder = tmp_path / "not-flux"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert "not a diffusers Flux.1 model" in _message(lambda: load_flux_model(folder))
    incomplete = tmp_path / "incomplete"
    for part in ("transformer", "vae", "text_encoder"):
        (incomplete / part).mkdir(parents=True)
    (incomplete / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert "set t5xxl = " in _message(lambda: load_flux_model(incomplete))
