"""An exponential moving average of the LoRA weights, as OneTrainer and SimpleTuner offer it.

From `start_step` on, every `update_interval` optimizer steps: ema = decay * ema + (1 - decay) * weights
(the first update copies the weights). The average is saved as a LoRA file of its own beside the plain
one; `swapped_in` puts it into the network for the moment of a save or a sample, then restores the
trained weights exactly.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class LoraEma:
    def __init__(self, parameters: list, decay: float, start_step: int = 0, update_interval: int = 1) -> None:
        self.parameters = parameters
        self.decay, self.start_step, self.update_interval = decay, start_step, max(update_interval, 1)
        self.shadow: list[torch.Tensor] | None = None

    def update(self, step: int) -> None:
        """After optimizer step `step` (from 1)."""
        if step < self.start_step or (step - self.start_step) % self.update_interval:
            return
        with torch.no_grad():
            if self.shadow is None:
                self.shadow = [p.detach().float().clone() for p in self.parameters]
                return
            for average, parameter in zip(self.shadow, self.parameters):
                average.mul_(self.decay).add_(parameter.detach().float(), alpha=1 - self.decay)

    @contextmanager
    def swapped_in(self):
        """The network holds the averaged weights inside the block (the trained ones before any update)."""
        if self.shadow is None:
            yield
            return
        saved = [p.detach().clone() for p in self.parameters]
        with torch.no_grad():
            for parameter, average in zip(self.parameters, self.shadow):
                parameter.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, trained in zip(self.parameters, saved):
                    parameter.copy_(trained)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = None if state.get("shadow") is None else [t.float().clone() for t in state["shadow"]]
