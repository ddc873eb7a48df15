"""A1111's PNG `parameters` text written and read back; <lora:name:w> tags taken out and resolved."""

import pytest
from PIL import Image

from lorasmith.errors import ToolError
from lorasmith.sampling.lora_tags import extract_lora_tags, resolve_lora
from lorasmith.sampling.pnginfo import GenerationParameters, parse_parameters, read_parameters, save_png

A1111_TEXT = (
    "masterpiece, mychar, 1girl\nNegative prompt: lowres, bad hands\n"
    'Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1234, Size: 512x768, Model hash: 7f96a1a9ca, '
    'Model: anyLora, Clip skip: 2, Lora hashes: "mychar: a1b2c3d4e5f6, style: 001122334455", Version: v1.6.0'
)


def test_parses_an_a1111_text():
    p = parse_parameters(A1111_TEXT)
    assert p.prompt == "masterpiece, mychar, 1girl" and p.negative_prompt == "lowres, bad hands"
    assert (p.steps, p.sampler, p.cfg_scale, p.seed, p.width, p.height) == (20, "DPM++ 2M Karras", 7.5, 1234, 512, 768)
    assert (p.model, p.clip_skip) == ("anyLora", 2)
    assert p.lora_hashes == {"mychar": "a1b2c3d4e5f6", "style": "001122334455"}
    assert p.extra == {"Model hash": "7f96a1a9ca", "Version": "v1.6.0"}


def test_format_matches_a1111_and_round_trips():
    p = GenerationParameters("a cat,\nsecond line", "ugly", 20, "Euler a", 7.0, 1, 512, 512, "tiny",
                             lora_hashes={"mychar": "0123456789ab"})
    text = p.to_text()
    assert text.splitlines()[-1] == ('Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: tiny, '
                                     'Lora hashes: "mychar: 0123456789ab"')
    assert text.splitlines()[2] == "Negative prompt: ugly"
    assert parse_parameters(text) == p


def test_png_carries_the_parameters(tmp_path):
    p = GenerationParameters("a cat", seed=5, width=8, height=8)
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "sub" / "a.png", p)
    assert Image.open(path).info["parameters"] == p.to_text()
    assert read_parameters(path) == p
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert read_parameters(tmp_path / "plain.png") is None


def test_lora_tags_are_taken_out_of_the_prompt():
    prompt, tags = extract_lora_tags("mychar, <lora:mychar-000002:0.8>, smiling <lora:style> <lora:x:0.5:0.2>")
    assert prompt == "mychar, smiling"
    assert tags == [("mychar-000002", 0.8), ("style", 1.0), ("x", 0.5)]
    with pytest.raises(ToolError, match="<lora:bad:high>"):
        extract_lora_tags("a <lora:bad:high>")


def test_lora_names_resolve_in_folders_and_given_paths(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "mychar.safetensors").write_bytes(b"x")
    other = tmp_path / "elsewhere" / "style.safetensors"
    other.parent.mkdir()
    other.write_bytes(b"x")
    assert resolve_lora("mychar", [folder]) == folder / "mychar.safetensors"
    assert resolve_lora("style", [folder, other]) == other
    with pytest.raises(ToolError, match="no LoRA file named 'nobody'"):
        resolve_lora("nobody", [folder, other])
