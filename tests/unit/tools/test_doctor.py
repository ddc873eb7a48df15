"""The doctor reports each kind of problem once, knows buckets, gives the tutorial's advice, changes nothing."""

from __future__ import annotations

import pytest
from PIL import Image, ImageEnhance

from lorasmith.errors import ToolError
from lorasmith.tools.doctor import doctor_dataset, rank_for, schedule_advice
from tests.conftest import write_image
from tests.unit.tools.builders import file_hashes


@pytest.fixture
def sick(tmp_path):
    """A kohya folder with one of each problem; every other image is fine and captioned."""
    folder = tmp_path / "train" / "10_mychar girl"
    for index in range(4):
        write_image(folder / f"good{index}.png", (128, 128), seed=index + 1)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    whole = write_image(folder / "whole.png", (128, 128), seed=20).read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "copy.png").write_bytes((folder / "good0.png").read_bytes())
    with Image.open(folder / "good1.png") as image:
        ImageEnhance.Brightness(image.convert("RGB")).enhance(1.08).save(folder / "brighter.png")
    write_image(folder / "tiny.png", (24, 24), seed=30)
    write_image(folder / "strip.png", (128, 32), seed=31)
    for image in folder.glob("*.png"):
        if image.stem != "nocaption":
            image.with_suffix(".txt").write_text("mychar, 1girl", encoding="utf-8")
    write_image(folder / "nocaption.png", (128, 128), seed=40)
    (folder / "whole.png").with_suffix(".txt").write_text("", encoding="utf-8")
    return tmp_path / "train"


def paths_of(report, kind):
    return sorted(f.path.name for f in report.of_kind(kind))


def test_each_problem_is_reported_and_nothing_changes(sick):
    before = file_hashes(sick)
    report = doctor_dataset(sick, resolution="64,64", min_bucket_reso=32, max_bucket_reso=128,
                            bucket_reso_steps=32)
    assert report.layout == "kohya" and report.image_count == 12
    assert paths_of(report, "unreadable") == ["corrupt.png"]
    assert paths_of(report, "truncated") == ["truncated.png"]
    assert {f.level for f in report.errors} == {"error"} and len(report.errors) == 2 and not report.ok
    assert paths_of(report, "duplicate") == ["good0.png"]  # named with its twin in the message
    assert "copy.png" in report.of_kind("duplicate")[0].message
    assert paths_of(report, "near_duplicate") == ["good1.png"]
    assert "brighter.png" in report.of_kind("near_duplicate")[0].message
    assert paths_of(report, "too_small") == ["tiny.png"]
    assert paths_of(report, "aspect_ratio") == ["strip.png"]
    assert paths_of(report, "missing_caption") == ["nocaption.png"]
    assert "folder name 'mychar girl'" in report.of_kind("missing_caption")[0].message
    assert paths_of(report, "empty_caption") == ["whole.png"]
    assert file_hashes(sick) == before


def test_plain_images_of_different_colours_are_not_near_duplicates(tmp_path):
    folder = tmp_path / "train" / "10_mychar"
    folder.mkdir(parents=True)
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220)), ("red2", (215, 25, 22))):
        Image.new("RGB", (128, 128), colour).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text("mychar")
    report = doctor_dataset(tmp_path / "train", resolution="64,64", min_bucket_reso=32, max_bucket_reso=128,
                            bucket_reso_steps=32)
    pairs = [finding.message for finding in report.of_kind("near_duplicate")]
    # the same perceptual hash for all three (flat images); only the two reds share their colours too
    assert len(pairs) == 1 and "red.png" in pairs[0] and "red2.png" in pairs[0], pairs


def test_buckets_and_advice(sick):
    report = doctor_dataset(sick, resolution="64,64", min_bucket_reso=32, max_bucket_reso=128,
                            bucket_reso_steps=32)
    folder = sick / "10_mychar girl"
    assert report.buckets[folder / "good0.png"] == (64, 64)
    assert report.buckets[folder / "strip.png"] == (128, 32)
    assert folder / "corrupt.png" not in report.buckets
    lines = report.lines()
    assert any(line.startswith("bucket 64x64:") for line in lines)
    assert "network_dim 32, network_alpha 16" in report.advice[0]
    assert lines[-1] == "2 error(s), 6 warning(s)"


def test_a_flat_folder_of_clean_images_is_fine(tmp_path):
    for index in range(3):
        write_image(tmp_path / f"{index}.png", (64, 64), seed=index + 1).with_suffix(".txt").write_text("a, b")
    report = doctor_dataset(tmp_path, resolution=(64, 64), min_bucket_reso=64)
    assert report.layout == "flat" and report.ok and not report.warnings, report.lines()
    assert "use 67 repeats" in report.advice[1]  # 3 images x 67 x 10 epochs ~ 2000 steps


def test_a_misnamed_folder_is_an_error(tmp_path):
    write_image(tmp_path / "train" / "mychar" / "a.png")
    report = doctor_dataset(tmp_path / "train", resolution=64)
    assert [f.kind for f in report.errors] == ["folder_name"]


@pytest.mark.parametrize("count,rank", [(20, 32), (30, 32), (50, 64), (99, 64), (100, 128)])
def test_rank_follows_the_tutorial(count, rank):
    assert rank_for(count) == rank


def test_schedule_advice_aims_for_1500_to_3000_steps():
    assert "10 epochs make 2000 steps" in schedule_advice(20, 200, 1)  # 20 images x 10 repeats
    assert "use 2 repeats" in schedule_advice(100, 10_000, 1)  # 100 repeats: far too many steps


def test_bucket_steps_training_refuses_are_refused_here_too(tmp_path):
    write_image(tmp_path / "10_mychar" / "a.png")
    with pytest.raises(ToolError, match="bucket_reso_steps must be a multiple of 8"):
        doctor_dataset(tmp_path, bucket_reso_steps=1)
    assert doctor_dataset(tmp_path, resolution="500", bucket_reso_steps=64).image_count == 1  # trains, as sd-scripts


def test_captions_longer_than_the_token_limit_are_one_warning(tmp_path):
    folder = tmp_path / "train" / "10_mychar"
    for index in range(3):
        write_image(folder / f"{index}.png", (128, 128), seed=index + 1)
        (folder / f"{index}.txt").write_text("mychar, 1girl", encoding="utf-8")
    long_tags = "mychar, " + ", ".join(f"tag{i}" for i in range(30))  # 112 tokens
    (folder / "1.txt").write_text(long_tags, encoding="utf-8")
    (folder / "2.txt").write_text(long_tags + ", smile", encoding="utf-8")
    report = doctor_dataset(tmp_path / "train", resolution="64,64", min_bucket_reso=64, max_bucket_reso=128)
    [finding] = report.of_kind("long_caption")
    assert finding.path.name == "2.png" and finding.message.startswith("2 captions are longer than 75 tokens")
    assert "longest: 114" in finding.message and "max_token_length 150 or 225" in finding.message
    assert not doctor_dataset(tmp_path / "train", resolution="64,64", min_bucket_reso=64,
                              max_bucket_reso=128, max_token_length=150).of_kind("long_caption")


def test_a_photo_stored_sideways_with_an_exif_rotation_is_a_warning(tmp_path):
    from PIL import Image

    for index in range(2):
        write_image(tmp_path / f"{index}.png", (64, 64), seed=index + 1).with_suffix(".txt").write_text("a, b")
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to show": what phones write
    Image.new("RGB", (64, 48), (200, 120, 40)).save(tmp_path / "phone.jpg", exif=exif)
    (tmp_path / "phone.txt").write_text("a, b")
    report = doctor_dataset(tmp_path, resolution=(64, 64), min_bucket_reso=32)
    assert [f.path.name for f in report.of_kind("rotated")] == ["phone.jpg"]
    assert "EXIF orientation (6)" in report.of_kind("rotated")[0].message and report.ok  # a warning, not an error


def test_with_masks_on_images_without_a_mask_or_with_a_mask_of_another_size_are_named(tmp_path):
    folder = tmp_path / "train" / "10_mychar"
    for name in ("a", "b", "c"):
        write_image(folder / f"{name}.png", (128, 128), seed=ord(name))
        (folder / f"{name}.txt").write_text("mychar")
    cond = tmp_path / "cond"
    cond.mkdir()
    Image.new("L", (128, 128), 255).save(cond / "a.png")
    Image.new("L", (64, 64), 255).save(cond / "b.png")
    report = doctor_dataset(tmp_path / "train", resolution="64,64", min_bucket_reso=32, max_bucket_reso=128,
                            bucket_reso_steps=32, conditioning_data_dir=cond)
    assert paths_of(report, "missing_mask") == ["c.png"] and paths_of(report, "mask_size") == ["b.png"]
    alpha = doctor_dataset(tmp_path / "train", resolution="64,64", min_bucket_reso=32, max_bucket_reso=128,
                           bucket_reso_steps=32, alpha_mask=True)
    assert paths_of(alpha, "missing_mask") == ["a.png", "b.png", "c.png"]  # RGB pictures: no alpha channel
