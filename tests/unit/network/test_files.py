"""LoRA files: atomic save, exact round trip, sd-scripts' hashes, one-line errors."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import save, save_file

from lorasmith.errors import ModelError
from lorasmith.network.files import load_lora_file, read_lora_metadata, save_lora_file


def lora_tensors(rank: int = 4, dtype=torch.float32) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(rank, 32, generator=generator).to(dtype),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(32, rank, generator=generator).to(dtype),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(2.0, dtype=dtype),
    }


def test_round_trip_is_exact_and_metadata_gets_sd_scripts_hashes(tmp_path):
    tensors = lora_tensors()
    metadata = {"ss_network_dim": "4", "modelspec.title": "mine"}
    path = save_lora_file(tmp_path / "mine.safetensors", tensors, metadata)
    loaded, meta = load_lora_file(path)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert meta["ss_network_dim"] == "4" and meta["modelspec.title"] == "mine"
    # sshs_model_hash: sha256 of the bytes after the header of the file saved with ss_* metadata only.
    reference = save(tensors, {"ss_network_dim": "4"})
    header = int.from_bytes(reference[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(reference[8 + header:]).hexdigest()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(reference[0x100000:0x110000]).hexdigest()[:8]
    assert read_lora_metadata(path) == meta
    assert os.listdir(tmp_path) == ["mine.safetensors"]  # no temporary file left behind


def test_legacy_hash_reads_64k_at_1mib_of_a_big_file(tmp_path):
    tensors = {"x.lora_down.weight": torch.arange(400_000, dtype=torch.float32).reshape(4, -1),
               "x.lora_up.weight": torch.ones(3, 4)}
    meta = load_lora_file(save_lora_file(tmp_path / "big.safetensors", tensors, {"ss_a": "1"}))[1]
    reference = save(tensors, {"ss_a": "1"})
    assert len(reference) > 0x110000
    assert meta["sshs_legacy_hash"] == hashlib.sha256(reference[0x100000:0x110000]).hexdigest()[:8]


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("float", torch.float32)])
def test_save_precision(tmp_path, precision, dtype):
    path = save_lora_file(tmp_path / "p.safetensors", lora_tensors(), {}, precision=precision)
    assert {t.dtype for t in load_lora_file(path)[0].values()} == {dtype}


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = save_lora_file(tmp_path / "keep.safetensors", lora_tensors(), {"ss_v": "old"})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_lora_file(path, lora_tensors(rank=2), {"ss_v": "new"})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["keep.safetensors"]
    assert load_lora_file(path)[1]["ss_v"] == "old"


def test_errors_are_one_line_and_say_what_to_do(tmp_path):
    cases = []
    with pytest.raises(ModelError, match="does not exist") as error:
        load_lora_file(tmp_path / "missing.safetensors")
    cases.append(error)
    truncated = tmp_path / "cut.safetensors"
    data = save(lora_tensors(), {})
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated") as error:
        load_lora_file(truncated)
    cases.append(error)
    checkpoint = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.conv_in.weight": torch.zeros(2, 2)}, str(checkpoint))
    with pytest.raises(ModelError, match="no kohya LoRA weights") as error:
        load_lora_file(checkpoint)
    cases.append(error)
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"x")
    with pytest.raises(ModelError, match="pickle") as error:
        load_lora_file(pickle)
    cases.append(error)
    with pytest.raises(ModelError, match="does not exist") as error:
        save_lora_file(tmp_path / "nope" / "x.safetensors", lora_tensors(), {})
    cases.append(error)
    assert all("\n" not in str(e.value) for e in cases)


def test_dora_and_lycoris_files_load_and_a_tensor_of_no_known_kind_is_named(tmp_path):
    from lorasmith.network.deltas import module_deltas

    dora = {**lora_tensors(), "lora_te_text_model_encoder_layers_0_self_attn_q_proj.dora_scale": torch.ones(1, 32)}
    path = tmp_path / "dora.safetensors"
    save_file(dora, str(path))
    kinds = {d.algo for d in module_deltas(load_lora_file(path)[0]).values()}
    assert "LoConModule" in kinds  # DoRA: lycoris' LoCon with weight decomposition
    loha = {"lora_unet_x.hada_w1_a": torch.ones(1, 2), "lora_unet_x.hada_w1_b": torch.ones(2, 3),
            "lora_unet_x.hada_w2_a": torch.ones(1, 2), "lora_unet_x.hada_w2_b": torch.ones(2, 3)}
    save_file(loha, str(path))
    assert {d.algo for d in module_deltas(load_lora_file(path)[0]).values()} == {"LohaModule"}
    odd = {**lora_tensors(), "lora_unet_x.something_new": torch.ones(1, 2)}
    save_file(odd, str(path))
    with pytest.raises(ModelError, match=r"lora_unet_x\.something_new' is not a tensor of a LoRA or LyCORIS"):
        load_lora_file(path)