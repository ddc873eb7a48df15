"""The LoRA toolbox against generation: a LoRA merged into a checkpoint makes the images the LoRA makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lorasmith import api
from lorasmith.models.single_file import save_single_file
from lorasmith.models.tiny import tiny_base_model
from lorasmith.network.files import save_lora_file
from tests.unit.tools.lora.lora_builders import random_lora


def _loha(base) -> dict:
    from lorasmith.network.lycoris_network import LycorisSpec, create_lycoris_network

    network = create_lycoris_network(base, LycorisSpec(algo="loha", rank=4, alpha=2))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in network.trainable_parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    tensors = network.kohya_state_dict(torch.float32)
    network.remove()
    return tensors


@pytest.mark.parametrize("kind", ["lora", "loha"])
def test_generating_with_the_merged_checkpoint_equals_generating_with_the_lora_at_weight_one(tmp_path, kind):
    base = tiny_base_model("sd1", seed=0)
    checkpoint = save_single_file(base, tmp_path / "base.safetensors")
    tensors = random_lora(base, rank=4, alpha=2, seed=4) if kind == "lora" else _loha(base)
    lora = save_lora_file(tmp_path / "mychar.safetensors", tensors, {"ss_network_module": "networks.lora"})
    merged = tmp_path / "merged.safetensors"
    api.lora_merge([str(lora)], [1.0], str(merged), sd_model=str(checkpoint))

    def image(model, loras) -> np.ndarray:
        made = api.generate(str(model), "mychar, 1girl", loras=loras, steps=3, seed=11, width=64, height=64)
        return np.asarray(made.images[0], dtype=np.int16)

    with_lora, from_merged, plain = image(checkpoint, [(str(lora), 1.0)]), image(merged, []), image(checkpoint, [])
    assert np.abs(with_lora - plain).max() > 8  # the LoRA shows
    assert np.abs(with_lora - from_merged).max() <= 2  # fp32 noise between two merge orders, no more
