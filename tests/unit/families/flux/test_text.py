"""Flux caption encoding on the tiny Flux: lengths per variant, the T5 mask, CLIP's pooled output."""

from __future__ import annotations

import pytest
import torch

from lorasmith.errors import ConfigError
from lorasmith.families.flux.text import FluxText, encode_flux_captions, tokenize_flux
from lorasmith.families.flux.tiny import T5_WIDTH, tiny_flux_base_model
from lorasmith.models.tiny import TEXT_WIDTH

CAPTIONS = ["a photo of mychar, 1girl, smiling", "a red cube"]


@pytest.fixture(scope="module")
def dev():
    return tiny_flux_base_model("dev")


@pytest.fixture(scope="module")
def schnell():
    return tiny_flux_base_model("schnell")


def test_default_t5_length_is_512_for_dev_and_256_for_schnell(dev, schnell):
    with torch.no_grad():
        for base, length in ((dev, 512), (schnell, 256)):
            text = encode_flux_captions(base, CAPTIONS)
            assert text.t5.shape == (2, length, T5_WIDTH)
            assert text.t5_mask.shape == (2, length)
            assert text.clip_pooled.shape == (2, TEXT_WIDTH)
            assert text.context is text.t5 and text.pooled is text.clip_pooled  # SD's TextEmbeddings names


def test_explicit_length_pads_and_truncates(dev):
    tokens = tokenize_flux(dev, ["word " * 40, "a"], t5_max_length=20)
    assert tokens.clip.shape == (2, 77) and tokens.t5.shape == (2, 20)
    assert tokens.t5_mask[0].sum() == 20 and tokens.t5[0, -1] == 1  # cut, still ending in </s>
    assert tokens.t5[1, :3].tolist() == [3, 9, 1] and tokens.t5_mask[1].tolist() == [1] * 3 + [0] * 17  # "▁", "a", </s>
    with torch.no_grad():
        assert encode_flux_captions(dev, CAPTIONS, t5_max_length=20).t5.shape == (2, 20, T5_WIDTH)
    for bad in (0, 513):
        with pytest.raises(ConfigError, match="t5xxl_max_token_length"):
            tokenize_flux(dev, CAPTIONS, bad)


def test_attention_mask_zeroes_the_padding_and_hides_it_from_t5(dev):
    with torch.no_grad():
        masked = encode_flux_captions(dev, CAPTIONS, 32, apply_t5_attn_mask=True)
        plain = encode_flux_captions(dev, CAPTIONS, 32)
        mask = masked.t5_mask.bool()
        assert (masked.t5[~mask] == 0).all()
        assert (plain.t5[~mask].abs().sum(-1) > 0).all()  # unmasked T5 gives the padding states
        # with the mask, the caption's states are those of the caption alone, without any padding
        count = int(mask[1].sum())
        alone = encode_flux_captions(dev, CAPTIONS[1:], count)
        assert torch.allclose(masked.t5[1, :count], alone.t5[0], atol=1e-5)
        assert not torch.allclose(plain.t5[1, :count], alone.t5[0], atol=1e-5)
        assert torch.equal(masked.clip_pooled, plain.clip_pooled)


def test_same_caption_same_conditioning(dev):
    with torch.no_grad():
        first = encode_flux_captions(dev, CAPTIONS, 64)
        again = encode_flux_captions(dev, CAPTIONS[::-1], 64)
    assert torch.allclose(first.t5[0], again.t5[1], atol=1e-6)
    assert torch.allclose(first.clip_pooled[0], again.clip_pooled[1], atol=1e-6)
    assert not torch.allclose(first.t5[0], first.t5[1])


def test_clip_pooled_is_the_pooler_output(dev):
    ids = dev.tokenizers[0](CAPTIONS, max_length=77, padding="max_length", truncation=True,
                            return_tensors="pt").input_ids
    with torch.no_grad():
        expected = dev.text_encoders[0](ids).pooler_output
        assert torch.equal(encode_flux_captions(dev, CAPTIONS, 16).clip_pooled, expected)


def test_gradients_reach_the_encoders(dev):
    text = encode_flux_captions(dev, CAPTIONS[:1], 16)
    assert isinstance(text, FluxText)
    (text.t5.sum() + text.clip_pooled.sum()).backward()
    for encoder in dev.text_encoders:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
        encoder.zero_grad(set_to_none=True)
