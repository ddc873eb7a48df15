"""Flux.1 end to end on a tiny random model written in the files users have: train through `api.train`,
then the file: sd-scripts' keys and metadata, a lower flow-matching loss at fixed noise and sigmas, and
diffusers' FluxPipeline loading it fully with the same effect as our merge."""

from __future__ import annotations

import logging

import pytest
import torch

from lorasmith import api
from lorasmith.config.schema import TrainConfig, with_values
from lorasmith.families.flux.tiny import tiny_flux_base_model
from lorasmith.families.flux.tiny_files import write_tiny_flux
from lorasmith.models.load import load_base_model
from lorasmith.network.apply import apply_loras
from lorasmith.network.files import load_lora_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flux_layouts(tmp_path_factory):
    """layout -> the files of one tiny Flux.1-dev (the same weights in each)."""
    base = tiny_flux_base_model("dev", seed=3)
    return {layout: write_tiny_flux(base, tmp_path_factory.mktemp(layout), layout) for layout in ("bfl", "diffusers")}


def model_values(files: dict) -> dict:
    values = {"pretrained_model_name_or_path": str(files["model"])}
    values.update({key: str(files[key]) for key in ("ae", "clip_l", "t5xxl") if key in files})
    return values


def load(files: dict):
    return load_base_model(str(files["model"]), ae=files.get("ae"), clip_l=files.get("clip_l"),
                           t5xxl=files.get("t5xxl"))


def fixed_flow_loss(base, images: list, captions: list[str]) -> float:
    """The family's validation loss (raw flow matching) at five fixed sigmas per image, fixed noise."""
    from lorasmith.sampling.evaluate import batch_loss, fixed_batch

    batch = fixed_batch(base, images, captions, 64, 5, seed=11)
    from lorasmith.families import family_behaviour

    return batch_loss(base, batch, 1, family_behaviour(base.family).fixed_loss)


def transformer_and_clip_outputs(base) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    inner = base.unet.config
    tokens, text = 16, 8
    with torch.no_grad():
        sample = base.unet(
            hidden_states=torch.randn(1, tokens, inner.in_channels, generator=generator),
            encoder_hidden_states=torch.randn(1, text, inner.joint_attention_dim, generator=generator),
            pooled_projections=torch.randn(1, inner.pooled_projection_dim, generator=generator),
            timestep=torch.tensor([0.6]), img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3),
            guidance=torch.tensor([1.0]),
        ).sample
        ids = base.tokenizers[0](["smithy, 1girl"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        clip = base.text_encoders[0](ids).pooler_output
    return [sample, clip]


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("layout", ["bfl", "diffusers"])
def test_flux_trains_to_a_lower_loss_and_its_file_loads_in_diffusers_like_our_merge(flux_layouts, make_dataset,
                                                                                     tmp_path, layout):
    from diffusers import FluxPipeline
    from peft.tuners.lora import LoraLayer

    files = flux_layouts[layout]
    data = make_dataset({"10_smithy": 3}, size=(64, 64))
    images = sorted(data.glob("10_smithy/*.png"))
    captions = [p.with_suffix(".txt").read_text() for p in images]
    config = with_values(TrainConfig(), {
        **model_values(files), "train_data_dir": str(data), "output_dir": str(tmp_path / "out"),
        "output_name": "fluxchar", "resolution": "64,64", "enable_bucket": False, "train_batch_size": 1,
        "max_train_epochs": 3, "learning_rate": 2e-3, "text_encoder_lr": 1e-3, "network_dim": 4,
        "network_alpha": 4, "network_module": "networks.lora_flux", "guidance_scale": 1.0,
        "timestep_sampling": "shift", "discrete_flow_shift": 3.1582, "model_prediction_type": "raw",
        "t5xxl_max_token_length": 16, "save_every_n_epochs": 0, "save_precision": "float", "seed": 7,
        "num_cpu_threads_per_process": 1,
        # diffusers' kohya converter splits single blocks' linear1 at Flux.1's real widths (3072 x 3 + 12288),
        # which a tiny model has not: double blocks and CLIP-L here; single blocks are checked against that
        # converter at the real widths in tests/unit/families/flux/test_lora_topology.py
        "network_args": ["train_blocks=double"],
    })
    result = api.train(config)
    tensors, metadata = load_lora_file(result.final_file)

    assert all(key.startswith(("lora_unet_double_blocks_", "lora_te1_text_model_")) for key in tensors)
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight" in tensors
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha" in tensors
    assert metadata["ss_base_model_version"] == "flux1"
    assert metadata["ss_network_module"] == "networks.lora_flux"
    assert metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert metadata["ss_guidance_scale"] == "1.0" and metadata["ss_timestep_sampling"] == "shift"
    assert "modelspec.prediction_type" not in metadata

    before = load(files)
    loss_before = fixed_flow_loss(before, images, captions)
    ours = load(files)
    apply_loras(ours, [(result.final_file, 1.0)])
    loss_after = fixed_flow_loss(ours, images, captions)
    assert loss_after < loss_before * 0.98, (loss_before, loss_after)

    theirs = load(files)
    pipe = FluxPipeline(scheduler=theirs.noise_scheduler, vae=theirs.vae, text_encoder=theirs.text_encoders[0],
                        tokenizer=theirs.tokenizers[0], text_encoder_2=theirs.text_encoders[1],
                        tokenizer_2=theirs.tokenizers[1], transformer=theirs.unet)
    handler = Collect()
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        pipe.load_lora_weights(result.final_file)
    finally:
        logger.removeHandler(handler)
    assert not [m for m in handler.messages if "unexpected" in m.lower() or "missing" in m.lower()]
    assert any(isinstance(m, LoraLayer) for m in theirs.unet.modules())
    assert any(isinstance(m, LoraLayer) for m in theirs.text_encoders[0].modules())

    base_out, merged_out, diffusers_out = (transformer_and_clip_outputs(m) for m in (before, ours, theirs))
    for plain, merged, loaded in zip(base_out, merged_out, diffusers_out):
        assert (plain - merged).abs().max() > 1e-3  # the LoRA changes the transformer and CLIP-L
        assert (loaded - merged).abs().max() < 1e-4  # diffusers applies it exactly as our merge


def test_flux_demo_trains_end_to_end_with_samples(tmp_path):
    result = api.demo(str(tmp_path / "demo"), family="flux", max_train_epochs=2, sample_every_n_epochs=2)
    assert result.final_file and result.steps > 0
    samples = sorted((tmp_path / "demo" / "output-flux" / "sample").glob("*.png"))
    assert samples, "the Flux demo makes its sample images"
    tensors, metadata = load_lora_file(result.final_file)
    assert metadata["ss_base_model_version"] == "flux1"
    assert "lora_unet_single_blocks_1_linear1.lora_down.weight" in tensors  # every block by default


def test_a_stopped_flux_run_resumes_to_the_file_an_uninterrupted_run_writes(flux_layouts, make_dataset, tmp_path):
    """Stop (as Ctrl-C does) after step 3 with save_state; resume auto; the same LoRA as one run of 6 steps."""
    import threading

    from lorasmith.events import Progress

    data = make_dataset({"10_smithy": 2}, size=(64, 64))
    values = {**model_values(flux_layouts["bfl"]), "train_data_dir": str(data), "resolution": "64,64",
              "enable_bucket": False, "max_train_epochs": 0, "max_train_steps": 6, "network_dim": 4,
              "learning_rate": 1e-3, "network_module": "networks.lora_flux", "t5xxl_max_token_length": 16,
              "save_every_n_epochs": 0, "save_precision": "float", "save_state": True, "seed": 3,
              "model_prediction_type": "raw", "num_cpu_threads_per_process": 1}
    whole = api.train(with_values(TrainConfig(), {**values, "output_dir": str(tmp_path / "whole")}))

    config = with_values(TrainConfig(), {**values, "output_dir": str(tmp_path / "stopped")})
    stop = threading.Event()

    def stop_after_three(event):
        if isinstance(event, Progress) and event.task == "train" and event.done == 3:
            stop.set()

    first = api.train(config, events=stop_after_three, stop=stop)
    assert first.interrupted and first.steps == 3 and first.state_dir
    resumed = api.train(with_values(config, {"resume": "auto"}))
    assert resumed.steps == 6 and not resumed.interrupted
    a, _ = load_lora_file(resumed.final_file)
    b, _ = load_lora_file(whole.final_file)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_generate_applies_an_sd_scripts_flux_lora_and_weight_zero_is_the_base(flux_layouts, tmp_path):
    """A file in sd-scripts' networks.lora_flux layout (random up weights, every block and CLIP-L) through
    `lorasmith generate` on the tiny Flux files: it changes the image; at weight 0 the image is the base's."""
    import numpy as np

    from lorasmith.families.flux.lora import FluxLoraSpec, create_flux_lora_network
    from lorasmith.network.files import save_lora_file

    files = flux_layouts["bfl"]
    donor = load(files)
    network = create_flux_lora_network(donor, FluxLoraSpec(rank=4, alpha=4))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in network.modules:
            module.up.copy_(torch.randn(module.up.shape, generator=generator) * 0.5)
    lora = tmp_path / "sdscripts_flux.safetensors"
    save_lora_file(lora, network.kohya_state_dict(torch.bfloat16), {"ss_network_module": "networks.lora_flux"})

    base = load(files)
    common = dict(prompt="smithy, 1girl", steps=2, width=64, height=64, seed=5, base=base)
    plain = np.asarray(api.generate(None, **common).images[0], dtype=np.int16)
    at_zero = np.asarray(api.generate(None, loras=[(str(lora), 0.0)], **common).images[0], dtype=np.int16)
    with_lora = np.asarray(api.generate(None, loras=[(str(lora), 1.0)], **common).images[0], dtype=np.int16)
    assert np.abs(plain - at_zero).max() <= 1
    assert np.abs(plain - with_lora).mean() > 2.0
