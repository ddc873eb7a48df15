"""The dataset commands: flags reach the tools, output and exit codes; --help stays free of heavy imports."""

from __future__ import annotations

import subprocess
import sys

from lorasmith.cli import main
from tests.conftest import write_image
from tests.unit.tools.builders import file_hashes, solid


def test_help_imports_no_heavy_library():
    code = ("import sys; from lorasmith.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('onnxruntime', 'transformers', 'torch', 'imagehash') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_prepare_with_target_steps_says_how_it_counted(tmp_path, capsys):
    for index in range(4):
        write_image(tmp_path / "raw" / f"{index}.png", seed=index + 1)
    before = file_hashes(tmp_path / "raw")
    code = main(["prepare", str(tmp_path / "raw"), "--train_data_dir", str(tmp_path / "img"), "--name", "mychar",
                 "--class", "girl", "--target_steps", "200", "--epochs", "5", "--batch_size", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "4 images x 20 repeats x 5 epochs / batch size 2 = 200 steps (target 200)" in out
    assert file_hashes(tmp_path / "img" / "20_mychar girl") == before == file_hashes(tmp_path / "raw")
    assert main(["prepare", str(tmp_path / "raw"), "--train_data_dir", str(tmp_path / "img"), "--name", "mychar",
                 "--class", "girl", "--repeats", "20"]) == 2
    assert "add --overwrite" in capsys.readouterr().err


def test_caption_commands_write_captions(tmp_path, tagger_dir, capsys):
    solid(tmp_path / "a.png", (16, 16), (0, 0, 255))
    assert main(["caption", "wd14", str(tmp_path), "--model", str(tagger_dir), "--trigger", "mychar",
                 "--exclude_tags", "solo,^_^"]) == 0
    assert (tmp_path / "a.txt").read_text() == "mychar, blue background, long hair"
    assert main(["caption", "basic", str(tmp_path), "--postfix", ", masterpiece"]) == 0
    assert (tmp_path / "a.txt").read_text() == "mychar, blue background, long hair, masterpiece"
    assert "wrote 1 caption(s)" in capsys.readouterr().out


def test_tags_table_dry_run_and_edit(tmp_path, capsys):
    for index, text in enumerate(["mychar, solo", "solo, hat"]):
        solid(tmp_path / f"{index}.png", (8, 8), (index, 0, 0)).with_suffix(".txt").write_text(text)
    assert main(["tags", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["2", "solo"]
    assert main(["tags", str(tmp_path), "--remove", "hat", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "'solo, hat' -> 'solo'" in out and "would change 1 caption(s)" in out
    assert (tmp_path / "1.txt").read_text() == "solo, hat"
    assert main(["tags", str(tmp_path), "--move_to_front", "mychar", "--add", "mychar"]) == 0
    assert (tmp_path / "1.txt").read_text() == "mychar, solo, hat"
    assert len(list((tmp_path / ".lorasmith_backups").glob("captions-*.zip"))) == 1


def test_doctor_exits_non_zero_on_errors(tmp_path, capsys):
    folder = tmp_path / "train" / "5_mychar"
    write_image(folder / "a.png", (64, 64), seed=1).with_suffix(".txt").write_text("mychar")
    assert main(["doctor", str(tmp_path / "train"), "--resolution", "64", "--min_bucket_reso", "64"]) == 0
    (folder / "b.png").write_bytes(b"broken")
    assert main(["doctor", str(tmp_path / "train"), "--resolution", "64"]) == 1
    out = capsys.readouterr().out
    assert "error: " in out and "b.png cannot be read" in out and out.strip().endswith("1 error(s), 1 warning(s)")
