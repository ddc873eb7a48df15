"""Meta builds in one thread leave every other thread's modules real (the GUI plans and estimates side by side)."""

from __future__ import annotations

import threading

import torch

from lorasmith.models.empty import empty_weights


def test_only_the_building_thread_gets_empty_weights():
    inside, release, built = threading.Event(), threading.Event(), {}

    def build_on_meta():
        with empty_weights():
            built["meta"] = torch.nn.Linear(4, 4)
            inside.set()
            release.wait(10)
            built["meta_late"] = torch.nn.Linear(4, 4)

    worker = threading.Thread(target=build_on_meta)
    worker.start()
    inside.wait(10)
    real = torch.nn.Linear(4, 4)  # while the other thread is inside its block
    release.set()
    worker.join(10)
    assert real.weight.device.type == "cpu" and real.weight.abs().sum() > 0
    assert built["meta"].weight.is_meta and built["meta_late"].weight.is_meta
    assert isinstance(built["meta"].weight, torch.nn.Parameter) and built["meta"].weight.requires_grad
    assert torch.nn.Linear(4, 4).weight.device.type == "cpu"  # nothing left behind after the block
