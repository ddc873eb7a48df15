"""Fixtures for the dataset tools: the tiny tagger and BLIP are built once per test session."""

from __future__ import annotations

import pytest

from tests.unit.tools.builders import build_blip, build_tagger


@pytest.fixture(scope="session")
def tagger_dir(tmp_path_factory):
    return build_tagger(tmp_path_factory.mktemp("wd14") / "tagger")


@pytest.fixture(scope="session")
def blip_dir(tmp_path_factory):
    return build_blip(tmp_path_factory.mktemp("blip") / "blip")
