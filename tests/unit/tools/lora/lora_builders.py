"""Tiny base models and random LoRA files for the LoRA-tool tests, built by the tests themselves."""

from __future__ import annotations

from pathlib import Path


def random_lora(base, rank: int = 4, alpha: float = 2.0, conv_rank: int = 0, seed: int = 0,
                train_text_encoder: bool = True) -> dict:
    """kohya tensors (float32) of a LoRA on `base` with random non-zero down and up weights."""
    import torch

    from lorasmith.network.lora import LoraSpec, create_lora_network

    network = create_lora_network(base, LoraSpec(rank=rank, alpha=alpha, conv_rank=conv_rank, conv_alpha=alpha,
                                                 train_text_encoder=train_text_encoder))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules:
            module.down.copy_(torch.randn(module.down.shape, generator=generator) * 0.1)
            module.up.copy_(torch.randn(module.up.shape, generator=generator) * 0.1)
    tensors = network.kohya_state_dict(torch.float32)
    network.remove()
    return tensors


def save_random_lora(base, path: Path, metadata: dict | None = None, **options) -> Path:
    from lorasmith.network.files import save_lora_file

    return save_lora_file(path, random_lora(base, **options), metadata or {"ss_network_module": "networks.lora"})


def tiny_checkpoint_file(path: Path, family: str = "sd1", seed: int = 0, dtype=None) -> Path:
    """A tiny random SD checkpoint in the original single-file layout."""
    from lorasmith.models.single_file import save_single_file
    from lorasmith.models.tiny import tiny_base_model

    return save_single_file(tiny_base_model(family, seed=seed), path, dtype)
