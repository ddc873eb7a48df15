"""Fixtures for end-to-end training tests: a tiny character dataset and configs that train in seconds."""

from __future__ import annotations

import pytest

from lorasmith.config.schema import TrainConfig, with_values


@pytest.fixture
def tiny_train_config(make_dataset, tmp_path):
    """A config for 4 images at 64 px, rank 4: a few seconds per run on a CPU."""

    def make(**overrides) -> TrainConfig:
        root = make_dataset({"2_mychar": 4}, root=tmp_path / "train")
        values = {
            "train_data_dir": str(root), "output_dir": str(tmp_path / "out"), "output_name": "mychar",
            "resolution": "64,64", "min_bucket_reso": 64, "max_bucket_reso": 128, "train_batch_size": 2,
            "max_train_epochs": 2, "learning_rate": 1e-3, "network_dim": 4, "network_alpha": 2,
            "num_cpu_threads_per_process": 1, "seed": 7,
        }
        values.update(overrides)
        return with_values(TrainConfig(), values)

    return make
