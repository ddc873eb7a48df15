"""The path chooser's reading of a FileExplorer selection."""

from lorasmith.gui.paths import chosen_path


def test_a_ticked_folder_dot_means_the_folder():
    assert chosen_path("/data/lora/img/.") == "/data/lora/img"
    assert chosen_path(["/data/model.safetensors"]) == "/data/model.safetensors"


def test_nothing_or_several_picked_is_no_path():
    assert chosen_path(None) is None and chosen_path([]) is None and chosen_path(["/a", "/b"]) is None
