"""One entry point for every network type: the spec a config asks for, and the network built from it.

networks.lora (LoRA, LoCon) is peft's, in `lora.py`; lycoris.kohya (LoHa, LoKr, iA3, GLoRA, ...)
and a plain LoRA with DoRA or rank/module dropout are lycoris-lora's, in `lycoris_network.py`.
Both give the trainer, the savers and the samplers the same calls.
"""

from __future__ import annotations

from typing import Any

from lorasmith.models.base import BaseModel


def network_spec(config: Any) -> Any:
    """LoraSpec or LycorisSpec for a TrainConfig."""
    from lorasmith.network.lora import LoraSpec
    from lorasmith.network.lycoris_network import LycorisSpec, uses_lycoris

    return LycorisSpec.from_config(config) if uses_lycoris(config) else LoraSpec.from_config(config)


def create_network(base: BaseModel, spec: Any) -> Any:
    """Inject the network `spec` describes into `base` (in place; base weights frozen)."""
    from lorasmith.network.lora import LoraSpec, create_lora_network
    from lorasmith.network.lycoris_network import create_lycoris_network

    if isinstance(spec, LoraSpec):
        return create_lora_network(base, spec)
    return create_lycoris_network(base, spec)
