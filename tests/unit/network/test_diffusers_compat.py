"""Files we write load in diffusers (as sd-scripts files do), with the same effect as our merge."""

from __future__ import annotations

import logging

import pytest
import torch

from lorasmith.network.apply import apply_loras
from lorasmith.network.files import save_lora_file
from lorasmith.network.lora import LoraSpec, create_lora_network
from tests.unit.network.helpers import max_diff, model_inputs, outputs, randomize_up


def pipeline(base):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if base.family.name == "sdxl":
        return StableDiffusionXLPipeline(
            vae=base.vae, text_encoder=base.text_encoders[0], text_encoder_2=base.text_encoders[1],
            tokenizer=base.tokenizers[0], tokenizer_2=base.tokenizers[1], unet=base.unet,
            scheduler=base.noise_scheduler)
    return StableDiffusionPipeline(
        vae=base.vae, text_encoder=base.text_encoders[0], tokenizer=base.tokenizers[0], unet=base.unet,
        scheduler=base.noise_scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("family, v_prediction, rank, alpha", [
    ("sd1", False, 4, 2.0), ("sd2", True, 4, 1.0), ("sdxl", False, 2, 8.0),
])
def test_diffusers_loads_our_file_fully_and_matches_our_merge(tiny, tmp_path, family, v_prediction, rank, alpha):
    from peft.tuners.lora import LoraLayer

    trained = tiny(family, v_prediction)
    network = create_lora_network(trained, LoraSpec(rank=rank, alpha=alpha))
    randomize_up(network)
    save_lora_file(tmp_path / "mine.safetensors", network.kohya_state_dict(torch.float32), {"ss_network_dim": str(rank)})

    theirs = tiny(family, v_prediction)
    inputs = model_inputs(theirs)
    before = outputs(theirs, inputs)
    handler = Collect()
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        pipeline(theirs).load_lora_weights(str(tmp_path), weight_name="mine.safetensors")
    finally:
        logger.removeHandler(handler)
    assert not [m for m in handler.messages if "unexpected" in m.lower() or "missing" in m.lower()]
    wrapped = sum(isinstance(m, LoraLayer) for c in (theirs.unet, *theirs.text_encoders) for m in c.modules())
    assert wrapped == network.modules_count()

    ours = tiny(family, v_prediction)
    apply_loras(ours, [(str(tmp_path / "mine.safetensors"), 1.0)])
    with_diffusers, merged = outputs(theirs, inputs), outputs(ours, inputs)
    assert max_diff(before, merged) > 1e-2  # the LoRA really changes UNet and text encoders
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(before, merged))
    assert max_diff(with_diffusers, merged) < 1e-4  # alpha / rank honoured the same way
    assert max_diff(outputs(trained, inputs), merged) < 1e-4
