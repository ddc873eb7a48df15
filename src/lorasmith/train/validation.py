"""The validation loss during training, and early stopping on it.

The held-out images (validation_split) are scored with the live LoRA on the same fixed batch that
`lorasmith evaluate` uses afterwards (`sampling.evaluate.fixed_batch`: the same images, noise and
evenly spaced timesteps, seed `validation_seed`), so the curve during training and the one evaluate
draws from the saved files agree, and two runs with the same seed give the same losses.

Early stopping: when the loss has risen above the best one for `early_stop_patience` checks in a row,
the run stops; the best check is the run's best epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lorasmith.sampling.evaluate import batch_loss, fixed_batch

VALIDATION_TIMESTEPS = 5  # as `lorasmith evaluate`


@dataclass
class ValidationHistory:
    losses: list[tuple[int, int, float]] = field(default_factory=list)  # (epoch, step, loss)
    patience: int = 0

    def add(self, epoch: int, step: int, loss: float) -> None:
        self.losses.append((epoch, step, loss))

    @property
    def best(self) -> tuple[int, int, float] | None:
        """The check with the lowest loss (the earlier one on a tie: less training)."""
        return min(self.losses, key=lambda item: (item[2], item[1])) if self.losses else None

    def should_stop(self) -> bool:
        """The last `patience` checks all came after the best one and were higher."""
        if not self.patience or len(self.losses) <= self.patience:
            return False
        best_index = self.losses.index(self.best)
        return len(self.losses) - 1 - best_index >= self.patience


class Validator:
    """Scores the live network on the held-out images; built while the VAE is still at hand."""

    def __init__(self, base, config, images: list) -> None:
        width, height = config.resolution_wh
        self.config = config
        self.batch = fixed_batch(base, images, None, min(width, height), VALIDATION_TIMESTEPS, config.validation_seed)
        self.history = ValidationHistory(patience=config.early_stop_patience)

    def due(self, epoch: int | None, step: int) -> bool:
        """At the end of an epoch (`epoch` given) or after a step (`epoch` None), by the config's intervals."""
        every_epochs, every_steps = self.config.validate_every_n_epochs, self.config.validate_every_n_steps
        if epoch is not None:
            return bool(every_epochs) and epoch % every_epochs == 0
        return bool(every_steps) and step % every_steps == 0

    def run(self, model, modules, epoch: int, step: int) -> float:
        from lorasmith.families import family_behaviour

        modes = [module.training for module in modules]
        for module in modules:
            module.eval()  # no LoRA dropout while measuring
        try:
            with torch.no_grad():
                loss = batch_loss(model, self.batch, self.config.clip_skip,
                                  family_behaviour(model.family).fixed_loss, self.config.max_token_length)
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)
        self.history.add(epoch, step, loss)
        return loss
