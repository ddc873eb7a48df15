"""Utilities > LoRA tools handlers on real small files: what the page shows, and the files they write."""

from __future__ import annotations

import pytest

from lorasmith.gui import lora_tools_tab
from lorasmith.network.files import load_lora_file
from tests.unit.tools.lora.lora_builders import save_random_lora

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")


@pytest.fixture(scope="module")
def tiny_sd1():
    from lorasmith.models.tiny import tiny_base_model

    return tiny_base_model("sd1")


def test_resize_and_merge_write_their_files_and_never_replace_one(tiny_sd1, tmp_path):
    a = save_random_lora(tiny_sd1, tmp_path / "a.safetensors", rank=4, seed=1)
    b = save_random_lora(tiny_sd1, tmp_path / "b.safetensors", rank=4, seed=2)
    out = tmp_path / "small.safetensors"
    report = lora_tools_tab.resize(str(a), 2, 0, "none", 0.9, "fp16", str(out), False)
    assert "from rank 4 to 2" in report and out.is_file()
    assert {t.shape[0] for k, t in load_lora_file(out)[0].items() if k.endswith("lora_down.weight")} == {2}
    again = lora_tools_tab.resize(str(a), 2, 0, "none", 0.9, "fp16", str(out), False)
    assert again.startswith("⚠️") and "already exists" in again and "--overwrite" in again

    merged = tmp_path / "merged.safetensors"
    report = lora_tools_tab.merge(f"{a}:0.7\n{b}:0.3\n", "", 0, 0, "as the input", str(merged), False)
    assert "merged 2 LoRAs (0.7 x a.safetensors, 0.3 x b.safetensors)" in report and merged.is_file()
    assert lora_tools_tab.merge(f"{a}", "", 0, 0, "as the input", "", False).startswith("⚠️ give the file to save to")


def test_models_field_reads_one_lora_per_line_with_its_ratio():
    assert lora_tools_tab.parse_models("x.safetensors:0.5\n\n C:\\loras\\y.safetensors \n") == (
        ["x.safetensors", "C:\\loras\\y.safetensors"], [0.5, 1.0])


def test_inspect_convert_and_extract_show_their_reports(tiny_sd1, tmp_path):
    from lorasmith.models.single_file import save_single_file
    from lorasmith.network.apply import apply_loras

    lora = save_random_lora(tiny_sd1, tmp_path / "mychar.safetensors", rank=4, seed=3,
                            metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
                                      "ss_tag_frequency": '{"10_mychar": {"mychar": 8, "1girl": 6}}'})
    report = lora_tools_tab.inspect(str(lora))
    assert "mychar" in report and "AUTOMATIC1111" in report and "ComfyUI" in report

    peft = tmp_path / "mychar-diffusers.safetensors"
    assert "diffusers" in lora_tools_tab.convert(str(lora), "diffusers", str(peft), False) and peft.is_file()
    back = tmp_path / "back.safetensors"
    lora_tools_tab.convert(str(peft), "kohya", str(back), False)
    a, b = load_lora_file(lora)[0], load_lora_file(back)[0]
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)

    base, tuned = tmp_path / "base.safetensors", tmp_path / "tuned.safetensors"
    save_single_file(tiny_sd1, base)
    applied = apply_loras(tiny_sd1, [(str(lora), 1.0)])
    save_single_file(tiny_sd1, tuned)
    applied.restore()
    out = tmp_path / "extracted.safetensors"
    report = lora_tools_tab.extract(str(base), str(tuned), 4, 0, 0.99, 0.0, "float", str(out), False)
    assert out.is_file() and "⚠️" not in report
