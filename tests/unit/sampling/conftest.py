"""Tiny models and LoRA files with random non-zero weights for the sampling tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is as fast and fairer


@pytest.fixture(scope="module")
def sd1():
    from lorasmith.models.tiny import tiny_base_model

    return tiny_base_model("sd1", seed=0)


def write_lora(path: Path, family: str = "sd1", seed: int = 1, std: float = 0.3, epoch: int | None = None) -> Path:
    """A kohya LoRA file for a tiny `family` model whose up weights are random (not sd-scripts' zeros)."""
    from lorasmith.models.tiny import tiny_base_model
    from lorasmith.network.files import save_lora_file
    from lorasmith.network.lora import LoraSpec, create_lora_network

    donor = tiny_base_model(family, seed=0)  # LoRA layers are injected into a throw-away model
    network = create_lora_network(donor, LoraSpec(rank=4, alpha=4))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules:
            module.up.copy_(torch.randn(module.up.shape, generator=generator) * std)
            module.down.copy_(torch.randn(module.down.shape, generator=generator) * std)
    metadata = {"ss_epoch": str(epoch)} if epoch is not None else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_lora_file(path, network.kohya_state_dict(torch.float32), metadata)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as the trainer writes it: two epoch files and the final file (epoch 3)."""
    folder = tmp_path_factory.mktemp("run")
    write_lora(folder / "mychar-000001.safetensors", seed=1, epoch=1)
    write_lora(folder / "mychar-000002.safetensors", seed=2, epoch=2)
    write_lora(folder / "mychar.safetensors", seed=3, epoch=3)
    return folder
