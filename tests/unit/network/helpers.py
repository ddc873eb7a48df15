"""Helpers for the LoRA network tests: LoRAs that really change outputs, fixed inputs, forwards."""

from __future__ import annotations

import torch


def randomize_up(network, seed: int = 1, std: float = 0.1) -> None:
    """Give lora_up non-zero values (it starts at zero), so the LoRA changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules:
            module.up.copy_(torch.randn(module.up.shape, generator=generator) * std)


def model_inputs(base, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    config = base.unet.config
    inputs = {
        "sample": torch.randn(1, 4, 8, 8, generator=generator),
        "hidden": torch.randn(1, 77, config.cross_attention_dim, generator=generator),
        "ids": torch.randint(0, 49406, (1, 77), generator=generator),
    }
    if config.addition_embed_type == "text_time":
        inputs["added"] = {"text_embeds": torch.randn(1, 32, generator=generator),
                           "time_ids": torch.randn(1, 6, generator=generator)}
    return inputs


@torch.no_grad()
def outputs(base, inputs: dict) -> list[torch.Tensor]:
    """[UNet output, each text encoder's last hidden state] for fixed inputs."""
    kwargs = {"added_cond_kwargs": inputs["added"]} if "added" in inputs else {}
    result = [base.unet(inputs["sample"], 10, inputs["hidden"], **kwargs).sample]
    result += [encoder(inputs["ids"]).last_hidden_state for encoder in base.text_encoders]
    return result


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))
