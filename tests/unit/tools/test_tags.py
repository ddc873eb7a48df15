"""Tag editor: frequency table, edits in order, dry run changes nothing, backup written before changes."""

from __future__ import annotations

import zipfile

import pytest

from lorasmith.errors import ToolError
from lorasmith.tools.tags import edit_tags, tag_frequencies
from tests.unit.tools.builders import file_hashes, solid

CAPTIONS = {
    "10_mychar/a": "1girl, long_hair, smile, solo",
    "10_mychar/b": "1girl, long hair, solo, solo",
    "10_mychar/c": "solo, hat",
}


@pytest.fixture
def captioned(tmp_path):
    root = tmp_path / "train"
    for index, (stem, text) in enumerate(CAPTIONS.items()):
        solid(root / f"{stem}.png", (8, 8), (index * 50, 0, 0))
        (root / f"{stem}.txt").write_text(text, encoding="utf-8")
    (root / "10_mychar" / "notes.txt").write_text("not a caption", encoding="utf-8")  # no image: not ours
    return root


def texts(root):
    return {stem: (root / f"{stem}.txt").read_text(encoding="utf-8") for stem in CAPTIONS}


def test_frequencies_count_captions_holding_each_tag(captioned):
    table = tag_frequencies(captioned)
    assert list(table.items())[:2] == [("solo", 3), ("1girl", 2)]
    assert table["long_hair"] == 2  # 'long hair' and 'long_hair' are one tag, counted once per caption
    assert "not a caption" not in table


def test_dry_run_lists_changes_and_touches_nothing(captioned):
    before = texts(captioned)
    result = edit_tags(captioned, remove=["solo"], dry_run=True)
    assert len(result.changes) == 3 and result.backup is None
    assert result.changes[0].after == "1girl, long_hair, smile"
    assert "would change 3 caption(s)" in result.lines()[-1]
    assert texts(captioned) == before
    assert not (captioned / ".lorasmith_backups").exists()


def test_edits_apply_in_order_after_a_backup_of_every_caption(captioned):
    before, images = texts(captioned), file_hashes(captioned)
    result = edit_tags(captioned, replace=["long_hair=long hair"], remove="hat", dedupe=True,
                       add="mychar", move_to_front=["solo"])
    assert texts(captioned) == {
        "10_mychar/a": "solo, mychar, 1girl, long hair, smile",
        "10_mychar/b": "solo, mychar, 1girl, long hair",
        "10_mychar/c": "solo, mychar",
    }
    with zipfile.ZipFile(result.backup) as archive:
        saved = {name: archive.read(name).decode() for name in archive.namelist()}
    assert saved == {f"{stem}.txt": text for stem, text in before.items()}
    assert result.backup.name.startswith("captions-") and result.backup.parent.name == ".lorasmith_backups"
    assert file_hashes(captioned) == images
    # the frequency table does not count backups or the hidden folder
    assert tag_frequencies(captioned)["solo"] == 3


def test_replace_does_not_duplicate_and_nothing_to_do_is_an_error(captioned):
    edit_tags(captioned, replace={"long_hair": "long hair"})
    assert texts(captioned)["10_mychar/b"] == "1girl, long hair, solo, solo"  # other duplicates stay
    with pytest.raises(ToolError, match="no tag edit given"):
        edit_tags(captioned)
    with pytest.raises(ToolError, match="OLD=NEW"):
        edit_tags(captioned, replace=["solo"])
