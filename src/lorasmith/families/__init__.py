"""What each model family does its own way, behind one interface.

A family's row in `models/families.py` names its behaviour module here (`unet` for SD1/SD2/SDXL,
`flux` for Flux.1). The trainer, the validator, the samplers and the savers call only the functions
of `FamilyBehaviour`, so none of them asks which family it runs; adding a family (SD3.5, Chroma)
means a module here and a row in the table.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import torch

from lorasmith.models.base import BaseModel
from lorasmith.models.families import Family


class FamilyBehaviour(Protocol):
    """The functions a behaviour module defines (a module satisfies this Protocol)."""

    def prepare_for_training(self, base: BaseModel, config: Any, train_text_encoder: bool) -> None:
        """Freeze the base, choose attention, switch on gradient checkpointing where asked."""

    def network_spec(self, config: Any) -> Any:
        """The LoRA network a TrainConfig asks for (the spec has `train_text_encoder`)."""

    def create_network(self, base: BaseModel, spec: Any) -> Any:
        """Inject it into `base` (in place); the network has the face of `network.lora.LoraNetwork`."""

    def encode_captions(self, base: BaseModel, captions: list[str], config: Any) -> Any:
        """Text conditioning of a training batch: `models.text.TextEmbeddings(context, pooled)`."""

    def training_recipe(self, config: Any) -> Any:
        """The objective's settings, read once from the config."""

    def training_loss(self, base: BaseModel, latents: torch.Tensor, text: Any, batch: Any,
                      generator: torch.Generator, recipe: Any) -> torch.Tensor:
        """One batch's loss: noise drawn from `generator`, prediction, weighting (train.batches.TensorBatch)."""

    def fixed_loss(self, base: BaseModel, latents: torch.Tensor, context: torch.Tensor, draw: Any,
                   pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> torch.Tensor:
        """The loss at given noise and timesteps (of 1000), for validation and `evaluate`."""

    def encode_prompts(self, base: BaseModel, prompts: list[str], clip_skip: int, max_token_length: int) -> Any:
        """Text conditioning of prompts outside training (validation, evaluate), as training reads captions."""

    def run_pipeline(self, base: BaseModel, request: Any, precision: str) -> list:
        """PIL images of one `sampling.generate.GenerationRequest`."""

    def metadata(self, config: Any, base_info: dict) -> dict[str, str | None]:
        """ss_* and modelspec.* keys this family writes over or beside the common ones (None: leave it out).
        `base_info` is the loaded model's `info` (its hashes, layout, variant)."""

    def apply_loras(self, base: BaseModel, loras: list) -> Any:
        """Merge kohya LoRA files into `base`; the returned object's `restore()` undoes it exactly."""

    def lora_file_bytes(self, family_name: str, config: Any, configs: dict | None) -> int:
        """The size of the LoRA file `config` trains, from the architecture on the meta device."""


def family_behaviour(family: Family) -> FamilyBehaviour:
    """The behaviour module of `family` (imported when first asked for)."""
    return importlib.import_module(f"lorasmith.families.{family.behaviour}")
