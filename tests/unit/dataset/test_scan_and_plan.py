import pytest

from lorasmith.config.schema import TrainConfig, with_values
from lorasmith.dataset.batches import epoch_samples, make_batches
from lorasmith.dataset.buckets import assign_bucket, bucket_resolutions
from lorasmith.dataset.plan import assign_buckets, plan_steps, read_image_sizes
from lorasmith.dataset.scan import check_images_readable, parse_subset_name, scan_dataset
from lorasmith.errors import DatasetError


def test_subset_names_parse_and_bad_names_show_the_expected_form():
    assert parse_subset_name("10_mychar girl") == (10, "mychar girl")
    with pytest.raises(DatasetError, match="must be named '<repeats>_<name>', e.g. '10_mychar'"):
        parse_subset_name("mychar")


@pytest.mark.parametrize("folder, meant", [
    ("mychar_10", "10_mychar"), ("10 mychar girl", "10_mychar girl"), ("10-mychar", "10_mychar"),
    ("0_mychar", "10_mychar"), ("mychar girl", "10_mychar girl"),
])
def test_a_misnamed_folder_suggests_the_name_meant(folder, meant):
    with pytest.raises(DatasetError, match=f"e.g. '{meant}'"):
        parse_subset_name(folder)


def test_scan_reads_captions_and_falls_back_to_the_folder_name(make_dataset):
    root = make_dataset({"10_mychar girl": 2, "3_other": 1})
    (root / "10_mychar girl" / "img01.txt").unlink()
    (root / "10_mychar girl" / "notes.md").write_text("not an image")
    dataset = scan_dataset(root)
    by_name = {s.name: s for s in dataset.subsets}
    assert by_name["mychar girl"].repeats == 10 and len(by_name["mychar girl"].images) == 2
    captions = [i.caption for i in by_name["mychar girl"].images]
    assert captions == ["mychar, 1girl, tag0", "mychar girl"]
    assert by_name["mychar girl"].images[1].caption_path is None
    assert dataset.samples_per_epoch == 2 * 10 + 1 * 3


def test_folder_without_prefix_fails_with_the_expected_name(make_dataset):
    root = make_dataset({"mychar": 2})
    with pytest.raises(DatasetError, match="'mychar' must be named '<repeats>_<name>', e.g. '10_mychar'"):
        scan_dataset(root)


def test_empty_dataset_and_loose_images_are_explained(tmp_path, make_dataset):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="has no images"):
        scan_dataset(tmp_path / "empty")
    loose = make_dataset({"": 0}, root=tmp_path / "loose")
    from tests.conftest import write_image
    write_image(tmp_path / "loose" / "a.png")
    with pytest.raises(DatasetError, match="must go into a sub-folder such as"):
        scan_dataset(loose)
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "missing")


def test_unreadable_images_are_all_reported_by_path(make_dataset):
    root = make_dataset({"5_a": 3})
    bad1 = root / "5_a" / "img00.png"
    bad1.write_bytes(b"not a png at all")
    bad2 = root / "5_a" / "img02.png"
    bad2.write_bytes(bad2.read_bytes()[:120])  # truncated
    with pytest.raises(DatasetError) as caught:
        check_images_readable(scan_dataset(root))
    message = str(caught.value)
    assert "2 unreadable" in message and str(bad1) in message and str(bad2) in message
    assert "\n" not in message


def test_buckets_follow_sd_scripts_rules():
    buckets = bucket_resolutions((512, 512), 256, 1024, 64)
    assert (512, 512) in buckets and (384, 640) in buckets and (640, 384) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    assert assign_bucket((1000, 1000), buckets) == (512, 512)
    assert assign_bucket((600, 1000), buckets) == (384, 640)
    assert assign_bucket((1200, 600), buckets)[0] > assign_bucket((1200, 600), buckets)[1]
    assert assign_bucket((200, 300), buckets, no_upscale=True) == (192, 256)


def test_plan_matches_the_kohya_gui_arithmetic(make_dataset, tmp_path):
    root = make_dataset({"10_mychar": 3, "5_extra": 2})
    config = with_values(TrainConfig(), {"train_data_dir": str(root), "train_batch_size": 2, "max_train_epochs": 4,
                                         "resolution": "64,64", "min_bucket_reso": 64, "max_bucket_reso": 128})
    step_plan = plan_steps(config, scan_dataset(root))
    assert step_plan.samples_per_epoch == 40
    assert step_plan.steps_per_epoch == 20 and step_plan.total_steps == 80 == step_plan.gui_arithmetic_steps
    assert step_plan.lines()[-1] == "total steps: 80"
    assert any("10_mychar: 3 images x 10 repeats = 30" in line for line in step_plan.lines())
    # regularisation images double the samples per epoch
    reg = make_dataset({"1_girl": 2}, root=tmp_path / "reg")
    with_reg = plan_steps(config, scan_dataset(root), scan_dataset(reg, is_reg=True))
    assert with_reg.total_steps == 160 == with_reg.gui_arithmetic_steps
    # gradient accumulation and max_train_steps
    accumulated = plan_steps(with_values(config, {"gradient_accumulation_steps": 4}), scan_dataset(root))
    assert accumulated.total_steps == 4 * 5
    epochs_win = plan_steps(with_values(config, {"max_train_steps": 7}), scan_dataset(root))  # as in sd-scripts
    assert epochs_win.total_steps == 80 == epochs_win.gui_arithmetic_steps
    steps_decide = plan_steps(with_values(config, {"max_train_epochs": 0, "max_train_steps": 30}), scan_dataset(root))
    assert (steps_decide.epochs, steps_decide.total_steps) == (2, 30)
    assert not any("arithmetic gives" in line for line in steps_decide.lines())  # no "gives 0" beside it


def test_plan_counts_short_batches_of_buckets_like_the_trainer(make_dataset, tmp_path):
    root = make_dataset({"1_wide": 3}, size=(128, 64))
    make_dataset({"1_tall": 1}, size=(64, 128), root=root)
    config = with_values(TrainConfig(), {"train_data_dir": str(root), "train_batch_size": 2, "max_train_epochs": 1,
                                         "resolution": "128,128", "min_bucket_reso": 64, "max_bucket_reso": 256})
    dataset = scan_dataset(root)
    step_plan = plan_steps(config, dataset)
    sizes = read_image_sizes([dataset])
    batches = make_batches(epoch_samples(dataset), assign_buckets(config, sizes), 2)
    assert step_plan.total_steps == len(batches) == 3  # wide: 2+1, tall: 1
    assert step_plan.gui_arithmetic_steps == 2


def test_rules_of_thumb_advice(make_dataset):
    root = make_dataset({"1_a": 3})
    config = with_values(TrainConfig(), {"train_data_dir": str(root), "network_dim": 128, "network_alpha": 128,
                                         "resolution": "64,64", "min_bucket_reso": 64})
    advice = " ".join(plan_steps(config, scan_dataset(root)).advice)
    assert "suggests network_dim 32" in advice and "half the rank: 64" in advice
