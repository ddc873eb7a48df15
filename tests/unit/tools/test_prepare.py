"""Dataset preparation: kohya folder names, copies only, repeats from target steps as the plan counts."""

from __future__ import annotations

import pytest

from lorasmith.config.schema import TrainConfig, with_values
from lorasmith.dataset.plan import plan_steps
from lorasmith.dataset.scan import scan_dataset
from lorasmith.errors import ToolError
from lorasmith.events import Message, collect_events
from lorasmith.tools.prepare import prepare_dataset, prepare_project, repeats_for_steps
from tests.unit.tools.builders import file_hashes, solid


@pytest.fixture
def raw(tmp_path):
    folder = tmp_path / "raw"
    for index in range(6):
        solid(folder / f"pic{index}.png", (64, 64), (index * 40, 10, 10))
    (folder / "pic0.txt").write_text("mychar, 1girl", encoding="utf-8")
    return folder


def test_repeats_copy_images_and_captions_into_the_kohya_folder(tmp_path, raw):
    before = file_hashes(raw)
    result = prepare_dataset(raw, tmp_path / "img", "mychar", "girl", repeats=10)
    subset = tmp_path / "img" / "10_mychar girl"
    assert result.subset_dir == subset and result.images == 6
    assert sorted(p.name for p in subset.iterdir()) == sorted(["pic0.txt"] + [f"pic{i}.png" for i in range(6)])
    assert file_hashes(raw) == before  # originals untouched...
    assert file_hashes(subset) == before  # ...and the copies byte for byte the same
    dataset = scan_dataset(tmp_path / "img")
    assert [(s.name, s.repeats, len(s.images)) for s in dataset.subsets] == [("mychar girl", 10, 6)]


def test_target_steps_choose_repeats_the_plan_agrees_with(tmp_path, raw):
    seen = []
    result = prepare_dataset(raw, tmp_path / "img", "mychar", target_steps=300, epochs=5, batch_size=2,
                             events=collect_events(seen))
    assert result.repeats == repeats_for_steps(300, 6, 5, 2) == 20  # 6 x 20 x 5 / 2 = 300
    assert (tmp_path / "img" / "20_mychar").is_dir()
    messages = [e.text for e in seen if isinstance(e, Message)]
    assert "6 images x 20 repeats x 5 epochs / batch size 2 = 300 steps (target 300)" in messages
    config = with_values(TrainConfig(), {"train_data_dir": str(tmp_path / "img"), "resolution": "64,64",
                                         "min_bucket_reso": 64, "train_batch_size": 2, "max_train_epochs": 5})
    assert plan_steps(config, scan_dataset(tmp_path / "img")).total_steps == 300


def test_regularisation_images_go_to_repeats_class(tmp_path, raw):
    reg_src = tmp_path / "reg_raw"
    solid(reg_src / "r.png", (64, 64), (1, 2, 3))
    result = prepare_project(raw, tmp_path / "project", "mychar", "girl", repeats=4, reg_images_dir=reg_src)
    assert result.train_data_dir == tmp_path / "project" / "img"
    assert (tmp_path / "project" / "reg" / "1_girl" / "r.png").is_file()
    assert result.output_dir.is_dir() and result.logging_dir.is_dir()
    with pytest.raises(ToolError, match="give the class"):
        prepare_dataset(raw, tmp_path / "x", "mychar", repeats=1, reg_images_dir=reg_src, reg_data_dir=tmp_path / "r")


def test_a_non_empty_destination_needs_overwrite_and_files_are_never_replaced(tmp_path, raw):
    prepare_dataset(raw, tmp_path / "img", "mychar", repeats=3)
    subset = tmp_path / "img" / "3_mychar"
    (subset / "pic0.txt").write_text("edited by hand", encoding="utf-8")
    with pytest.raises(ToolError, match="already holds files; choose another name or add --overwrite"):
        prepare_dataset(raw, tmp_path / "img", "mychar", repeats=3)
    solid(raw / "new.png", (64, 64), (9, 9, 9))
    result = prepare_dataset(raw, tmp_path / "img", "mychar", repeats=3, overwrite=True)
    assert [p.name for p in result.copied] == ["new.png"]
    assert (subset / "pic0.txt").read_text(encoding="utf-8") == "edited by hand"


@pytest.mark.parametrize("kwargs,message", [
    ({}, "either repeats or target_steps"),
    ({"repeats": 2, "target_steps": 100}, "either repeats or target_steps"),
    ({"repeats": 0}, "repeats must be at least 1"),
    ({"target_steps": 100, "batch_size": 0}, "batch_size must be at least 1"),
    ({"repeats": 1, "reg_data_dir": "reg"}, "needs the regularisation images"),
    ({"repeats": 1, "reg_images_dir": "raw"}, "need a reg_data_dir"),
])
def test_bad_step_arguments_are_one_line_errors(tmp_path, raw, kwargs, message):
    with pytest.raises(ToolError, match=message):
        prepare_dataset(raw, tmp_path / "img", "mychar", **kwargs)
    assert not (tmp_path / "img").exists()


def test_a_name_must_make_a_folder(tmp_path, raw):
    with pytest.raises(ToolError, match="cannot name a folder"):
        prepare_dataset(raw, tmp_path / "img", "my/char", repeats=1)


def test_the_raw_folder_is_not_a_training_folder(raw):
    before = sorted(raw.iterdir())
    with pytest.raises(ToolError, match="is the folder of raw images; choose a new folder"):
        prepare_dataset(raw, raw, "mychar", repeats=1)
    assert sorted(raw.iterdir()) == before


def test_an_image_file_given_as_the_folder_names_its_folder(tmp_path, raw):
    with pytest.raises(ToolError, match="'.*pic1.png' is a file; give the folder that holds your images"):
        prepare_dataset(raw / "pic1.png", tmp_path / "img", "mychar", repeats=1)


def test_images_in_sub_folders_are_named_not_copied(tmp_path, raw):
    solid(raw / "extra" / "more.png", (64, 64), (9, 9, 9))
    seen = []
    result = prepare_dataset(raw, tmp_path / "img", "mychar", repeats=2, events=collect_events(seen))
    assert result.images == 6 and not (result.subset_dir / "more.png").exists()
    warnings = [e.text for e in seen if isinstance(e, Message) and e.level == "warning"]
    assert any("1 image(s) in sub-folders" in w and "extra/more.png" in w for w in warnings), warnings


def test_a_folder_with_images_only_in_sub_folders_says_which_to_give(tmp_path):
    solid(tmp_path / "raw" / "alice" / "a.png", (64, 64), (1, 1, 1))
    solid(tmp_path / "raw" / "bob" / "b.png", (64, 64), (2, 2, 2))
    with pytest.raises(ToolError, match=r"only in sub-folders \(alice, bob\); give the folder of one"):
        prepare_dataset(tmp_path / "raw", tmp_path / "img", "mychar", repeats=1)
    solid(tmp_path / "ready" / "10_mychar" / "a.png", (64, 64), (1, 1, 1))
    with pytest.raises(ToolError, match=r"already laid out for training \(10_mychar\); use it as train_data_dir"):
        prepare_dataset(tmp_path / "ready", tmp_path / "img2", "mychar", repeats=1)
    assert not (tmp_path / "img").exists() and not (tmp_path / "img2").exists()
