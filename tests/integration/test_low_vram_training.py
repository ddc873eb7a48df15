"""The low-VRAM options end to end through api.train on tiny models: each trains, and writes the LoRA file
a run without it writes (same keys, shapes and dtypes; the same losses where the arithmetic is the same)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lorasmith import api
from lorasmith.config.schema import with_values
from lorasmith.errors import ConfigError
from lorasmith.models.tiny import tiny_base_model
from lorasmith.network.files import load_lora_file

pytestmark = pytest.mark.slow


def _layout(path: str) -> dict:
    tensors, _ = load_lora_file(path)
    return {key: (tuple(t.shape), t.dtype) for key, t in tensors.items()}


def test_fp8_base_trains_sd_to_a_lower_loss_and_writes_the_same_file(tiny_train_config, tmp_path):
    plain = api.train(tiny_train_config(output_dir=str(tmp_path / "plain")), base=tiny_base_model("sd1"))
    base = tiny_base_model("sd1")
    fp8 = api.train(tiny_train_config(fp8_base=True, max_train_epochs=4, output_dir=str(tmp_path / "fp8")),
                    base=base)
    assert base.unet.down_blocks[0].resnets[0].conv1.weight.dtype == torch.float8_e4m3fn
    assert base.text_encoders[0].encoder.layers[0].mlp.fc1.base_layer.weight.dtype == torch.float8_e4m3fn
    assert sum(fp8.losses[-4:]) < sum(fp8.losses[:4])
    assert _layout(fp8.final_file) == _layout(plain.final_file)
    _, metadata = load_lora_file(fp8.final_file)
    assert (metadata["ss_fp8_base"], metadata["ss_fp8_base_unet"]) == ("True", "False")


def test_cpu_offload_checkpointing_and_full_bf16(tiny_train_config, tmp_path):
    checkpointed = api.train(tiny_train_config(gradient_checkpointing=True, output_dir=str(tmp_path / "a")),
                             base=tiny_base_model("sd1"))
    offloaded = api.train(tiny_train_config(gradient_checkpointing=True, cpu_offload_checkpointing=True,
                                            output_dir=str(tmp_path / "b")), base=tiny_base_model("sd1"))
    assert offloaded.losses == pytest.approx(checkpointed.losses, rel=1e-5)
    with pytest.raises(ConfigError, match="^cpu_offload_checkpointing offloads"):
        api.train(tiny_train_config(cpu_offload_checkpointing=True, output_dir=str(tmp_path / "c")),
                  base=tiny_base_model("sd1"))
    base = tiny_base_model("sd1")
    bf16 = api.train(tiny_train_config(full_bf16=True, mixed_precision="bf16", save_precision="float",
                                       output_dir=str(tmp_path / "d")), base=base)
    lora = [m for m in base.unet.modules() if hasattr(m, "lora_A") and "lorasmith" in m.lora_A]
    assert lora and lora[0].lora_A["lorasmith"].weight.dtype == torch.bfloat16
    assert {dtype for _, dtype in _layout(bf16.final_file).values()} == {torch.float32}  # save_precision
    with pytest.raises(ConfigError, match="^full_bf16 needs mixed_precision bf16"):
        api.train(tiny_train_config(full_bf16=True, output_dir=str(tmp_path / "e")), base=tiny_base_model("sd1"))


def _flux(layers: int = 4, singles: int = 6):
    from diffusers import FluxTransformer2DModel

    from lorasmith.families.flux.tiny import tiny_flux_base_model, tiny_flux_transformer_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = FluxTransformer2DModel(**{**tiny_flux_transformer_config(), "num_layers": layers,
                                                "num_single_layers": singles})
    return replace(tiny_flux_base_model(), unet=transformer.eval())


def test_flux_block_swap_fp8_and_the_text_cache_on_disk(tiny_train_config, tmp_path):
    flux = dict(network_module="networks.lora_flux", network_train_unet_only=True, t5xxl_max_token_length=16,
                guidance_scale=1.0, save_every_n_epochs=0)
    plain = api.train(tiny_train_config(**flux, output_dir=str(tmp_path / "plain")), base=_flux())
    swapped = api.train(tiny_train_config(**flux, blocks_to_swap=3, gradient_checkpointing=True,
                                          output_dir=str(tmp_path / "swap")), base=_flux())
    assert swapped.losses == pytest.approx(plain.losses, rel=1e-5)  # the same arithmetic
    assert _layout(swapped.final_file) == _layout(plain.final_file)

    base, messages = _flux(), []
    config = tiny_train_config(**flux, fp8_base=True, blocks_to_swap=4, cache_text_encoder_outputs_to_disk=True,
                               max_train_epochs=4, output_dir=str(tmp_path / "fp8"),
                               sample_prompts="mychar --w 64 --h 64 --s 2 --d 1", sample_every_n_epochs=4)
    fp8 = api.train(config, base=base, events=lambda e: messages.append(getattr(e, "text", "")))
    assert base.unet.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert base.text_encoders[1].encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    assert base.text_encoders[0].encoder.layers[0].mlp.fc1.weight.dtype == torch.float32  # CLIP-L stays
    # Flux's losses swing with the drawn timesteps: fp8 is held to the fp32 run's losses, step by step
    longer = api.train(with_values(config, {"fp8_base": False, "blocks_to_swap": 0, "output_dir": str(tmp_path / "l"),
                                            "cache_text_encoder_outputs_to_disk": False, "sample_prompts": ""}),
                       base=_flux())
    assert fp8.losses == pytest.approx(longer.losses, rel=0.02)
    assert _layout(fp8.final_file) == _layout(plain.final_file)
    _, metadata = load_lora_file(fp8.final_file)
    assert metadata["ss_fp8_base"] == "True"
    assert len(list((tmp_path / "fp8" / "sample").glob("*.png"))) == 1  # the text encoders came back for it
    files = sorted(p.name for p in (tmp_path / "train").rglob("*_flux_te.npz"))
    assert len(files) == 4 and any("cached text-encoder outputs of" in m and "(0 images" in m for m in messages)
    messages.clear()
    api.train(with_values(config, {"output_dir": str(tmp_path / "again"), "max_train_epochs": 1, "sample_prompts": ""}),
              base=base,
              events=lambda e: messages.append(getattr(e, "text", "")))
    assert any("(4 images read from their files)" in m for m in messages)
