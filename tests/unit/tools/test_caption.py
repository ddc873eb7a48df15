"""Captioning: WD14 tagger feed and tag rules, BLIP from a local folder, basic captions; images untouched."""

from __future__ import annotations

import pytest

from lorasmith.errors import ToolError
from lorasmith.events import FileWritten, Progress, collect_events
from lorasmith.tools.caption.basic import caption_basic
from lorasmith.tools.caption.blip import caption_blip
from lorasmith.tools.caption.wd14 import caption_wd14
from tests.unit.tools.builders import build_tagger, file_hashes, solid

BLUE, RED, BLACK = (0, 0, 255), (255, 0, 0), (0, 0, 0)


def read(path):
    return path.read_text(encoding="utf-8")


def test_wd14_feeds_bgr_and_applies_the_tag_rules(tmp_path, tagger_dir):
    images = tmp_path / "img"
    solid(images / "blue.png", (20, 20), BLUE)
    solid(images / "sub" / "red.jpg", (20, 20), RED)  # sub-folders are tagged too
    before = file_hashes(images)
    seen = []
    summary = caption_wd14(images, tagger_dir, trigger="mychar", batch_size=1, events=collect_events(seen))
    # BGR feed: the blue picture fires the blue tag only; rating 'general' (0.99) is left out;
    # solo (0.5) passes 0.35; the character tag (0.7) stays below 0.85; underscores become spaces,
    # the kaomoji keeps its own; the trigger comes first, then tags by confidence.
    assert read(images / "blue.txt") == "mychar, blue background, long hair, ^_^, solo"
    assert read(images / "sub" / "red.txt") == "mychar, red background, long hair, ^_^, solo"
    assert len(summary.written) == 2
    assert [e.done for e in seen if isinstance(e, Progress)] == [1, 2]
    assert sum(isinstance(e, FileWritten) for e in seen) == 2
    assert file_hashes(images) == before


def test_wd14_pads_to_a_square_with_white(tmp_path, tagger_dir):
    # A wide black strip: padded with white, three quarters of the square are white.
    solid(tmp_path / "strip.png", (32, 8), BLACK)
    caption_wd14(tmp_path, tagger_dir)
    assert "white background" in read(tmp_path / "strip.txt")
    solid(tmp_path / "sq" / "square.png", (32, 32), BLACK)
    caption_wd14(tmp_path / "sq", tagger_dir)
    assert "white background" not in read(tmp_path / "sq" / "square.txt")


def test_wd14_transparency_is_flattened_onto_white(tmp_path, tagger_dir):
    solid(tmp_path / "half.png", (16, 16), BLACK, mode="RGBA")  # top half transparent
    caption_wd14(tmp_path, tagger_dir)
    # mean 127.5 per channel puts the colour tags at 0.48 (> 0.35); dropping alpha would give black: 0.0
    assert read(tmp_path / "half.txt") == "long hair, ^_^, solo, blue background, red background, white background"


def test_wd14_thresholds_and_exclusions(tmp_path, tagger_dir):
    solid(tmp_path / "blue.png", (16, 16), BLUE)
    caption_wd14(tmp_path, tagger_dir, general_threshold=0.6, character_threshold=0.6, exclude_tags="long_hair, ^_^")
    # character tags come first; 'solo' (0.5) is now under the threshold
    assert read(tmp_path / "blue.txt") == "smithy (lorasmith), blue background"
    with pytest.raises(ToolError, match="general_threshold must be between 0 and 1"):
        caption_wd14(tmp_path, tagger_dir, general_threshold=1.5)


def test_wd14_keeps_overwrites_or_appends_existing_captions(tmp_path, tagger_dir):
    solid(tmp_path / "blue.png", (16, 16), BLUE)
    caption = tmp_path / "blue.txt"
    caption.write_text("mychar, solo, smile", encoding="utf-8")
    summary = caption_wd14(tmp_path, tagger_dir)
    assert read(caption) == "mychar, solo, smile" and summary.kept and not summary.written
    caption_wd14(tmp_path, tagger_dir, append=True)
    assert read(caption) == "mychar, solo, smile, blue background, long hair, ^_^"
    caption_wd14(tmp_path, tagger_dir, overwrite=True, caption_extension="txt")
    assert read(caption) == "blue background, long hair, ^_^, solo"
    with pytest.raises(ToolError, match="either overwrite or append"):
        caption_wd14(tmp_path, tagger_dir, overwrite=True, append=True)


def test_wd14_batches_on_a_fixed_batch_model_and_skips_broken_images(tmp_path):
    tagger = build_tagger(tmp_path / "fixed", fixed_batch=2)
    images = tmp_path / "img"
    for index in range(3):
        solid(images / f"{index}.png", (16, 16), BLUE if index != 1 else RED)
    (images / "broken.png").write_bytes(b"not a png")
    summary = caption_wd14(images, tagger, batch_size=4)
    assert [read(images / f"{i}.txt").split(", ")[0] for i in range(3)] == [
        "blue background", "red background", "blue background"]
    assert [path.name for path, _ in summary.failed] == ["broken.png"]
    assert not (images / "broken.txt").exists()


@pytest.mark.parametrize("bad", [".png", ""])
def test_a_caption_extension_can_never_name_an_image(tmp_path, tagger_dir, bad):
    solid(tmp_path / "a.jpg", (16, 16), BLUE)
    with pytest.raises(ToolError, match="caption extension"):
        caption_wd14(tmp_path, tagger_dir, caption_extension=bad)


def test_wd14_needs_a_tagger_folder(tmp_path):
    solid(tmp_path / "a.png", (16, 16), BLUE)
    with pytest.raises(ToolError, match="model.onnx and selected_tags.csv"):
        caption_wd14(tmp_path, tmp_path)


def test_blip_writes_a_generated_sentence_with_prefix_and_trigger(tmp_path, blip_dir):
    images = tmp_path / "img"
    solid(images / "a.png", (40, 30), BLUE)
    solid(images / "b.png", (30, 30), RED)
    before = file_hashes(images)
    summary = caption_blip(images, blip_dir, prefix="a picture of", trigger="mychar", num_beams=2,
                           min_length=3, max_length=8, batch_size=2)
    assert len(summary.written) == 2
    for name in ("a", "b"):
        text = read(images / f"{name}.txt")
        assert text.startswith("mychar, a picture of ")
        assert len(text) > len("mychar, a picture of ") and "[" not in text  # special tokens are dropped
    assert file_hashes(images) == before
    with pytest.raises(ToolError, match="BLIP model folder"):
        caption_blip(images, tmp_path)


def test_basic_captions_fill_the_missing_and_decorate_the_rest(tmp_path):
    solid(tmp_path / "a.png", (16, 16), BLUE)
    solid(tmp_path / "b.png", (16, 16), RED)
    (tmp_path / "b.txt").write_text("1girl, smile", encoding="utf-8")
    before = file_hashes(tmp_path)
    summary = caption_basic(tmp_path, "1girl", trigger="mychar", postfix=", masterpiece")
    assert read(tmp_path / "a.txt") == "mychar, 1girl, masterpiece"
    assert read(tmp_path / "b.txt") == "mychar, 1girl, smile, masterpiece"
    assert summary.backup is not None and summary.backup.is_file()  # b.txt was changed: backed up first
    again = caption_basic(tmp_path, "1girl", trigger="mychar", postfix=", masterpiece")
    assert not again.written and len(again.kept) == 2  # idempotent
    caption_basic(tmp_path, "a photo", prefix="mychar,", overwrite=True)
    assert read(tmp_path / "a.txt") == "mychar, a photo"
    assert file_hashes(tmp_path) == before


def test_basic_without_text_leaves_uncaptioned_images_and_says_so(tmp_path):
    solid(tmp_path / "a.png", (16, 16), BLUE)
    summary = caption_basic(tmp_path, prefix="mychar")
    assert summary.uncaptioned == [tmp_path / "a.png"] and not (tmp_path / "a.txt").exists()
    assert any("without a caption" in line for line in summary.lines())
