"""Measurements kept on disk: read back by a later process, keyed by arguments and code, never half-read."""

from __future__ import annotations

import json

import pytest

from lorasmith.memory import disk_cache, estimate_training_memory, measure
from lorasmith.memory.activations import EncodeMeasure, StepMeasure
from lorasmith.memory.disk_cache import decode, encode, on_disk
from lorasmith.memory.weights import PartBytes

from .conftest import tiny_config, tiny_configs


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASMITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LORASMITH_MEMORY_CACHE", raising=False)
    return tmp_path / "cache" / "memory"


def counting(calls: list):
    @on_disk
    def measured(name: str, size: int, shape: tuple) -> StepMeasure:
        calls.append((name, size, shape))
        return StepMeasure(peak=size, gradient_bytes=2, trainable_shapes=(shape, (4,)), lora_bytes=8, text="frozen",
                           seconds=0.5)

    return measured


def test_measurements_round_trip_through_json():
    values = [StepMeasure(10, 2, ((4, 320), (320, 4)), 8, "cached", 1.5), EncodeMeasure(5, True),
              (PartBytes("unet", (("fp16", 100), ("fp32", 4))), 7), None, 3]
    for value in values:
        assert decode(json.loads(json.dumps(encode(value)))) == value


def test_a_later_call_reads_the_file_instead_of_measuring(cache_dir):
    calls = []
    first = counting(calls)("sdxl", 3, (1, 2))
    again = counting(calls)("sdxl", 3, (1, 2))  # a new function object: as a new process would have
    assert again == first and calls == [("sdxl", 3, (1, 2))]
    assert len(list(cache_dir.glob("measured-*.json"))) == 1
    counting(calls)("sdxl", 4, (1, 2))  # other arguments: measured
    assert len(calls) == 2


def test_changed_code_measures_again(cache_dir, monkeypatch):
    calls = []
    counting(calls)("sd1", 1, ())
    monkeypatch.setattr(disk_cache, "code_fingerprint", lambda: "another lorasmith")
    counting(calls)("sd1", 1, ())
    assert len(calls) == 2


def test_a_broken_file_is_measured_again_and_replaced(cache_dir):
    calls = []
    counting(calls)("sd1", 1, ())
    (path,) = cache_dir.glob("*.json")
    path.write_text('{"dataclass": "lorasmith.memory.activa')  # a write cut short
    assert counting(calls)("sd1", 1, ()).peak == 1 and len(calls) == 2
    assert json.loads(path.read_text())["fields"]["peak"] == 1


def test_only_lorasmith_memory_types_are_made_from_a_file():
    with pytest.raises(TypeError, match="unexpected type"):
        decode({"dataclass": "subprocess:Popen", "fields": {"args": "true"}})


def test_turned_off_or_unwritable_it_still_measures(cache_dir, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setenv("LORASMITH_MEMORY_CACHE", "0")
    counting(calls)("sd1", 1, ())
    assert not cache_dir.exists()
    monkeypatch.delenv("LORASMITH_MEMORY_CACHE")
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("LORASMITH_CACHE_DIR", str(blocker))  # its "memory" folder cannot be made
    assert counting(calls)("sd1", 1, ()).peak == 1 and len(calls) == 2


def test_an_estimate_in_a_new_process_comes_from_disk(cache_dir, monkeypatch):
    config = tiny_config(train_batch_size=3)
    measure.forget_in_memory()  # (other tests' estimates are in memory, measured into their cache folder)
    first = estimate_training_memory(config, "sd1", configs=tiny_configs("sd1"))
    assert list(cache_dir.glob("step-*.json")) and list(cache_dir.glob("weights-*.json"))
    measure.forget_in_memory()  # what a new process has in memory: nothing

    def measured_again(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(measure, "tracked_step", measured_again)
    monkeypatch.setattr(measure, "tracked_encode", measured_again)
    monkeypatch.setattr(measure, "meta_base", measured_again)
    again = estimate_training_memory(config, "sd1", configs=tiny_configs("sd1"))
    assert again.parts == first.parts and again.training == first.training


def test_past_its_limit_the_oldest_half_goes(cache_dir, monkeypatch):
    import os

    calls = []
    for size in range(5):
        counting(calls)("sd1", size, ())
    for age, path in enumerate(sorted(cache_dir.glob("*.json"))):
        os.utime(path, (1000 + age, 1000 + age))  # written long ago, one after the other
    kept = max(cache_dir.glob("*.json"), key=lambda path: path.stat().st_mtime)
    monkeypatch.setattr(disk_cache, "MAX_FILES", 4)
    counting(calls)("sd1", 99, ())  # the sixth file: past 4, down to 2
    left = list(cache_dir.glob("*.json"))
    assert len(left) == 2 and kept in left
