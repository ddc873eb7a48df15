"""Prompts files in sd-scripts' syntax: options, defaults, comments, and errors naming the line."""

import pytest

from lorasmith.errors import ToolError
from lorasmith.sampling.prompts import SamplePrompt, parse_prompt_line, parse_prompts, read_prompts_file


def test_every_option_is_read():
    p = parse_prompt_line("mychar, 1girl, smiling --n lowres, bad hands --w 640 --h 768 --s 28 --l 6.5 --d 42 --ss ddim")
    assert p == SamplePrompt("mychar, 1girl, smiling", "lowres, bad hands", 640, 768, 28, 6.5, 42, "ddim")


def test_defaults_when_no_options():
    p = parse_prompt_line("  mychar  ")
    assert (p.prompt, p.negative_prompt, p.width, p.height, p.steps, p.cfg_scale, p.seed, p.sampler) == \
        ("mychar", "", 512, 512, 20, 7.0, None, None)


def test_comments_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\n\nfirst --d 1\n   # indented comment\nsecond --w 64 --h 64\n", encoding="utf-8")
    prompts = read_prompts_file(path)
    assert [p.prompt for p in prompts] == ["first", "second"]
    assert prompts[0].seed == 1 and (prompts[1].width, prompts[1].height) == (64, 64)


@pytest.mark.parametrize("line, words", [
    ("ok --w wide", ["line 3", "--w", "'wide'"]),
    ("ok --s", ["line 3", "--s"]),
    ("ok --l seven", ["line 3", "--l"]),
    ("ok --x 5", ["line 3", "unknown option '--x'"]),
    ("ok --w 500", ["line 3", "multiple of 8"]),
    ("ok --s 0", ["line 3", "1 or more"]),
    ("ok --ss heun", ["line 3", "unknown sampler 'heun'"]),
    ("--w 512", ["line 3", "no prompt"]),
])
def test_malformed_lines_name_their_number(line, words):
    with pytest.raises(ToolError) as error:
        parse_prompts(f"first\n# comment\n{line}\n")
    assert all(word in str(error.value) for word in words), str(error.value)
    assert "\n" not in str(error.value)


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(ToolError, match="does not exist"):
        read_prompts_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ToolError, match="no prompt"):
        read_prompts_file(tmp_path / "empty.txt")
