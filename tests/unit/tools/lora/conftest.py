"""Shared by the LoRA-tool tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These matrices are small: with two threads on a busy machine LAPACK spends 10x longer waiting."""
    from lorasmith.tools.lora.svd import one_thread

    with one_thread():
        yield
