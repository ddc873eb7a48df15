"""Fixtures for the LoRA network tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny():
    """tiny(family, v_prediction=False) -> a fresh tiny BaseModel (seed 0; tests may mutate it)."""
    from lorasmith.models.tiny import tiny_base_model

    return lambda family, v_prediction=False: tiny_base_model(family, v_prediction=v_prediction, seed=0)
