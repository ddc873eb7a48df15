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



@pytest.fixture(scope="session")
def saved_models(tmp_path_factory, tiny_models):
    """saved_models(family, layout) -> path of a tiny model saved as "single_file" or "diffusers" (cached).

    SD2 is saved as a v-prediction model, the others as epsilon.
    """
    from lorasmith.models.single_file import save_diffusers_folder, save_single_file

    root = tmp_path_factory.mktemp("saved-models")
    cache: dict = {}

    def get(family: str, layout: str):
        if (family, layout) not in cache:
            base = tiny_models(family, v_prediction=family == "sd2")
            if layout == "single_file":
                cache[family, layout] = save_single_file(base, root / f"tiny-{family}.safetensors")
            else:
                cache[family, layout] = save_diffusers_folder(base, root / f"tiny-{family}")
        return cache[family, layout]

    return get
