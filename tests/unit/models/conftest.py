"""Fixtures for the model tests: tiny models of each family, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_models():
    """tiny_models(family, v_prediction=False) -> a cached tiny BaseModel (do not mutate it)."""
    from lorasmith.models.tiny import tiny_base_model

    cache: dict = {}

    def get(family: str, v_prediction: bool = False):
        key = (family, v_prediction)
        if key not in cache:
            cache[key] = tiny_base_model(family, v_prediction=v_prediction, seed=1)
        return cache[key]

    return get

