"""Training states on disk: checksummed, newest first, damaged ones named and passed over, the newest two kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorasmith.errors import TrainingError
from lorasmith.train.run import state_folder, step_state_folder
from lorasmith.train.state import Position, find_resume_state, load_state, prune_states, run_states, save_state


def _write(folder: Path, step: int) -> Path:
    weight = torch.nn.Parameter(torch.full((2, 2), float(step)))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.ones(2, 2)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return save_state(folder, {"lora.weight": weight}, optimizer, scheduler, Position(step, step // 4, 0), {"seed": 1})


def test_the_newest_complete_state_is_found_and_a_damaged_one_is_named_and_skipped(tmp_path):
    _write(state_folder(tmp_path, "mychar", 1), 4)
    _write(step_state_folder(tmp_path, "mychar", 6), 6)
    newest = _write(state_folder(tmp_path, "mychar", 2), 8)
    assert [step for step, _ in run_states(tmp_path, "mychar")] == [8, 6, 4]
    assert find_resume_state(tmp_path, "mychar") == (newest, [])

    data = (newest / "lora_fp32.safetensors").read_bytes()
    (newest / "lora_fp32.safetensors").write_bytes(data[:-8] + b"\0" * 8)  # same size, other bytes
    folder, skipped = find_resume_state(tmp_path, "mychar")
    assert folder == step_state_folder(tmp_path, "mychar", 6)
    assert skipped == ["skipped the damaged training state mychar-000002-state "
                       "(lora_fp32.safetensors does not match its checksum)"]
    with pytest.raises(TrainingError, match=r"mychar-000002-state' is damaged \(lora_fp32.*--resume auto"):
        load_state(newest)
    tensors, optim, position, config = load_state(folder)
    assert position == Position(6, 1, 0) and config == {"seed": 1}
    assert torch.all(tensors["lora.weight"] < 6.0)  # the weight after its optimizer step, as saved
    assert optim["optimizer"]["state"][0]["step"] == 1

def test_an_unreadable_info_file_or_a_missing_part_is_damage_too(tmp_path):
    first = _write(state_folder(tmp_path, "mychar", 1), 4)
    second = _write(state_folder(tmp_path, "mychar", 2), 8)
    (second / "trainer_state.json").write_text("{not json")
    (first / "optim.pt").unlink()
    folder, skipped = find_resume_state(tmp_path, "mychar")
    assert folder is None and len(skipped) == 2
    assert any("mychar-000002-state" in line and "trainer_state.json" in line for line in skipped)
    assert any("mychar-000001-state (optim.pt is missing)" in line for line in skipped)


def test_pruning_keeps_the_newest_two_and_clears_what_a_killed_save_left(tmp_path):
    for epoch in (1, 2, 3):
        _write(state_folder(tmp_path, "mychar", epoch), epoch * 4)
    other = _write(state_folder(tmp_path, "other", 1), 4)
    leftover = tmp_path / ".mychar-000004-state.k2j3x1"
    leftover.mkdir()
    removed = prune_states(tmp_path, "mychar")
    assert sorted(p.name for p in removed) == [".mychar-000004-state.k2j3x1", "mychar-000001-state"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mychar-000002-state", "mychar-000003-state",
                                                          "other-000001-state"]
    assert other.is_dir()  # another output_name's states are not this run's


def test_a_new_run_never_takes_an_earlier_runs_states_for_its_own(tmp_path):
    from lorasmith.train.state import start_afresh

    _write(state_folder(tmp_path, "mychar", 1), 4)
    with pytest.raises(TrainingError, match="training states of 'mychar' from an earlier run.*--resume auto.*"
                                            "--overwrite"):
        start_afresh(tmp_path, "mychar", overwrite=False)
    assert [p.name for p in start_afresh(tmp_path, "mychar", overwrite=True)] == ["mychar-000001-state"]
    assert run_states(tmp_path, "mychar") == [] and start_afresh(tmp_path, "mychar", overwrite=False) == []
