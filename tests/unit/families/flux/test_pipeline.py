"""Flux sampling with diffusers' FluxPipeline on the tiny Flux: sizes, seeds, and the same conditioning as training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorasmith.errors import ToolError
from lorasmith.families.flux.pipeline import flux_pipeline, generate_flux_images
from lorasmith.families.flux.text import encode_flux_captions
from lorasmith.families.flux.tiny import tiny_flux_base_model


@pytest.fixture(scope="module")
def dev():
    return tiny_flux_base_model("dev")


@pytest.fixture(scope="module")
def pipe(dev):
    return flux_pipeline(dev)


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_pipeline_shares_the_base_modules(dev, pipe):
    assert pipe.transformer is dev.unet and pipe.vae is dev.vae
    assert pipe.text_encoder is dev.text_encoders[0] and pipe.text_encoder_2 is dev.text_encoders[1]
    assert pipe.scheduler is not dev.noise_scheduler  # sampling must not move the training schedule
    assert pipe.vae_scale_factor == 8


def test_images_have_the_size_asked_and_follow_their_seeds(dev, pipe):
    options = dict(width=32, height=32, steps=2, guidance_scale=3.5, t5_max_length=32, pipe=pipe)
    first = generate_flux_images(dev, ["a cat", "a cat"], seeds=[1, 2], **options)
    again = generate_flux_images(dev, ["a cat"], seeds=[1], **options)
    assert [image.size for image in first] == [(32, 32), (32, 32)]
    assert np.array_equal(_pixels(first[0]), _pixels(again[0]))
    assert np.abs(_pixels(first[0]) - _pixels(first[1])).max() > 0
    wide = generate_flux_images(dev, ["a cat"], width=64, height=32, steps=2, guidance_scale=1.0, seeds=[1])
    assert wide[0].size == (64, 32)


def test_schnell_ignores_guidance():
    schnell = tiny_flux_base_model("schnell")
    images = [generate_flux_images(schnell, ["a cat"], width=32, height=32, steps=2, guidance_scale=scale,
                                   seeds=[5], t5_max_length=16)[0] for scale in (0.0, 3.5)]
    assert np.array_equal(_pixels(images[0]), _pixels(images[1]))


def test_bad_requests_say_what_to_do(dev, pipe):
    for bad in (dict(width=40), dict(height=8), dict(steps=0), dict(seeds=[1, 2])):
        request = dict(width=32, height=32, steps=2, guidance_scale=3.5, seeds=[1], pipe=pipe) | bad
        with pytest.raises(ToolError, match="multiple of 16|steps|one seed"):
            generate_flux_images(dev, ["a cat"], **request)


def test_pipeline_encodes_prompts_as_training_does(dev, pipe):
    prompts = ["a photo of mychar, 1girl, smiling", "a red cube"]
    with torch.no_grad():
        embeds, pooled, ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, max_sequence_length=512)
        text = encode_flux_captions(dev, prompts)
    assert torch.equal(embeds, text.t5) and torch.equal(pooled, text.clip_pooled)
    assert torch.equal(ids, torch.zeros(512, 3))
