"""masked_loss: the loss (and so the gradient) counts only where the mask is white, as sd-scripts weighs it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lorasmith.dataset.masks import MaskSource, latent_mask, load_mask, mask_path_for
from lorasmith.models.tiny import tiny_base_model
from lorasmith.train import step
from lorasmith.train.step import NoiseDraw, denoising_loss


def test_the_gradient_is_unchanged_where_the_mask_is_one_and_zero_where_it_is_zero(monkeypatch):
    base = tiny_base_model("sd1")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    draw = NoiseDraw(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([500]))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1.0  # the left half trains
    gradients = []
    for loss_mask in (None, mask):
        prediction = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
        monkeypatch.setattr(step, "predict_noise", lambda *args, p=prediction: p)
        denoising_loss(base, latents, None, draw, loss_mask=loss_mask).backward()
        gradients.append(prediction.grad)
    plain, masked = gradients
    assert torch.equal(masked[..., :4], plain[..., :4])
    assert torch.count_nonzero(masked[..., 4:]) == 0 and torch.count_nonzero(plain[..., 4:]) > 0


def test_masks_are_found_cropped_like_their_image_and_averaged_to_the_latent_grid(tmp_path):
    image = tmp_path / "img" / "10_mychar" / "a.png"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (128, 64)).save(image)
    cond = tmp_path / "cond" / "10_mychar"
    cond.mkdir(parents=True)
    mask = Image.new("L", (128, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # white from x=32 to 64 of the 128-wide picture
    mask.save(cond / "a.png")
    assert mask_path_for(image, tmp_path / "img", tmp_path / "cond") == cond / "a.png"
    (cond / "a.png").rename(tmp_path / "cond" / "a.png")  # flat works too
    assert mask_path_for(image, tmp_path / "img", tmp_path / "cond") == tmp_path / "cond" / "a.png"
    cropped = load_mask(tmp_path / "cond" / "a.png", (64, 64))  # centre crop of the wide image: x 32..96
    assert cropped.shape == (1, 64, 64) and cropped[0, :, :32].min() == 1.0 and cropped[0, :, 32:].max() == 0.0
    small = latent_mask(cropped, (8, 8))
    assert small.shape == (1, 8, 8) and small[0, :, :4].mean() == pytest.approx(1.0)
    source = MaskSource(str(tmp_path / "img"), str(tmp_path / "cond"))
    assert source.missing([image, tmp_path / "img" / "10_mychar" / "b.png"]) == [tmp_path / "img" / "10_mychar" /
                                                                                    "b.png"]
    assert torch.equal(source.for_latents(image, (64, 64), (8, 8), mirrored=True), small.flip(-1))


def test_alpha_masks_read_the_images_alpha_channel(tmp_path):
    path = Path(tmp_path / "a.png")
    picture = Image.new("RGBA", (64, 64), (200, 10, 10, 0))
    picture.paste((200, 10, 10, 255), (0, 0, 32, 64))
    picture.save(path)
    mask = MaskSource(str(tmp_path), alpha_mask=True).for_latents(path, (64, 64), (8, 8))
    assert mask[0, :, :4].min() == 1.0 and mask[0, :, 4:].max() == 0.0
