"""fp8 base weights, full_bf16, cpu_offload_checkpointing and the text-encoder cache on disk, on tiny models."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lorasmith.config.schema import TrainConfig
from lorasmith.errors import ConfigError
from lorasmith.train import low_vram
from lorasmith.train.low_vram import FP8


def _sd_with_lora(**values):
    from lorasmith.families import unet
    from lorasmith.models.tiny import tiny_base_model

    base = tiny_base_model("sd1")
    config = TrainConfig(**values)
    unet.prepare_for_training(base, config, True)
    network = unet.create_network(base, unet.network_spec(config))
    low_vram.store_marked_in_fp8([base.unet, *base.text_encoders])
    return base, network


def test_fp8_base_stores_linear_and_conv_weights_in_fp8_and_upcasts_them_in_forward():
    base, network = _sd_with_lora(fp8_base=True)
    unet, clip = base.unet, base.text_encoders[0]
    assert unet.down_blocks[0].resnets[0].conv1.weight.dtype == FP8
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.base_layer.weight.dtype == FP8
    assert clip.encoder.layers[0].mlp.fc1.weight.dtype == FP8
    # norms, embeddings, biases and the first layer (the model's dtype) keep their precision
    assert unet.down_blocks[0].resnets[0].norm1.weight.dtype == torch.float32
    assert unet.conv_in.weight.dtype == torch.float32 and unet.dtype == torch.float32
    assert clip.embeddings.token_embedding.weight.dtype == torch.float32
    assert unet.down_blocks[0].resnets[0].conv1.bias.dtype == torch.float32
    assert {p.dtype for p in network.trainable_parameters()} == {torch.float32}  # the LoRA is not fp8
    for layer, x in ((unet.down_blocks[0].resnets[0].conv1, torch.randn(1, 32, 8, 8, requires_grad=True)),
                     (clip.encoder.layers[0].mlp.fc1.base_layer, torch.randn(2, 3, 32, requires_grad=True))):
        reference = x.detach().clone().requires_grad_(True)
        saved = []

        def pack(tensor):
            saved.append(tensor.dtype)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = layer(x)
        expected = layer._conv_forward(reference, layer.weight.float(), layer.bias) \
            if isinstance(layer, torch.nn.Conv2d) else torch.nn.functional.linear(reference, layer.weight.float(),
                                                                                  layer.bias)
        torch.testing.assert_close(out, expected)
        assert saved == [FP8]  # backward keeps the fp8 weight, not an fp32 copy
        out.sum().backward()
        expected.sum().backward()
        torch.testing.assert_close(x.grad, reference.grad)


def test_fp8_base_unet_leaves_the_text_encoders_and_gradients_reach_only_the_lora():
    from lorasmith.models.text import encode_tokens, tokenize

    base, network = _sd_with_lora(fp8_base_unet=True)
    assert base.text_encoders[0].encoder.layers[0].mlp.fc1.base_layer.weight.dtype == torch.float32
    with torch.no_grad():
        for module in network.modules:
            module.up.normal_(std=0.01)
    text = encode_tokens(base, tokenize(base, ["a photo"]), 1)
    out = base.unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), text.context).sample
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in network.trainable_parameters())
    assert all(p.grad is None for p in base.unet.parameters() if not p.requires_grad)


def test_fp8_flux_keeps_clip_l_and_an_fp8_checkpoint_round_trips_exactly():
    from lorasmith.families import flux
    from lorasmith.families.flux.tiny import tiny_flux_base_model

    base = tiny_flux_base_model()
    t5_weight = base.text_encoders[1].encoder.block[0].layer[1].DenseReluDense.wi_0.weight
    as_fp8 = t5_weight.data.to(FP8)
    t5_weight.data = as_fp8.float()  # what loading an fp8 file at fp32 gives
    flux.prepare_for_training(base, TrainConfig(fp8_base=True), False)
    flux.create_network(base, flux.network_spec(TrainConfig(network_train_unet_only=True)))
    low_vram.store_marked_in_fp8([base.unet, *base.text_encoders])
    assert torch.equal(t5_weight.data.view(torch.uint8), as_fp8.view(torch.uint8))
    assert base.unet.transformer_blocks[0].attn.to_q.weight.dtype == FP8
    assert base.text_encoders[0].encoder.layers[0].mlp.fc1.weight.dtype == torch.float32
    text = flux.encode_captions(base, ["a photo"], TrainConfig(t5xxl_max_token_length=16))  # T5 runs in fp32
    assert text.context.dtype == torch.float32 and torch.isfinite(text.context).all()


def test_full_bf16_casts_the_lora_and_the_checks_of_each_option():
    base, network = _sd_with_lora()
    low_vram.cast_network(network, SimpleNamespace(full_bf16=True))
    assert {p.dtype for p in network.trainable_parameters()} == {torch.bfloat16}
    assert {t.dtype for t in network.kohya_state_dict(torch.float16).values()} == {torch.float16}
    off = dict(fp8_base=False, fp8_base_unet=False, full_bf16=False, mixed_precision="bf16",
               gradient_checkpointing=False, cpu_offload_checkpointing=False, blocks_to_swap=0)
    for changes, message in (({"full_bf16": True, "mixed_precision": "fp16"}, "^full_bf16 needs mixed_precision bf16"),
                             ({"cpu_offload_checkpointing": True}, "^cpu_offload_checkpointing offloads"),
                             ({"fp8_base": True, "mixed_precision": "no"}, "^fp8_base needs mixed precision")):
        with pytest.raises(ConfigError, match=message):
            low_vram.check_low_vram(SimpleNamespace(**{**off, **changes}), on_gpu=True)
    low_vram.check_low_vram(SimpleNamespace(**{**off, "fp8_base": True, "mixed_precision": "no"}), on_gpu=False)


@pytest.mark.parametrize("family", ["sd1", "flux"])
def test_cpu_offload_checkpointing_gives_the_same_loss_and_gradients(family, monkeypatch):
    from lorasmith.families import family_behaviour
    from lorasmith.families.flux.tiny import tiny_flux_base_model
    from lorasmith.models.tiny import tiny_base_model

    calls = []
    original = low_vram.offloaded_checkpoint
    monkeypatch.setattr(low_vram, "offloaded_checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    results = []
    for offload in (False, True):
        base = tiny_flux_base_model() if family == "flux" else tiny_base_model("sd1")
        behaviour = family_behaviour(base.family)
        config = TrainConfig(gradient_checkpointing=True, cpu_offload_checkpointing=offload,
                             network_train_unet_only=True, t5xxl_max_token_length=16)
        behaviour.prepare_for_training(base, config, False)
        torch.manual_seed(0)
        network = behaviour.create_network(base, behaviour.network_spec(config))
        with torch.no_grad():
            for p in network.trainable_parameters():
                p.normal_(std=0.05)
        text = behaviour.encode_captions(base, ["a photo"], config)
        latents = torch.randn(1, base.family.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1))
        batch = SimpleNamespace(time_ids=None, weights=None, masks=None)
        loss = behaviour.training_loss(base, latents, text, batch, torch.Generator().manual_seed(2),
                                       behaviour.training_recipe(config))
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in network.trainable_parameters()]))
    assert calls  # the offloading checkpoint ran
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for plain, offloaded in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(plain, offloaded)


def test_the_text_cache_on_disk_is_reused_while_caption_and_encoders_are_unchanged(tmp_path):
    from lorasmith.models.text import TextEmbeddings
    from lorasmith.models.tiny import tiny_base_model
    from lorasmith.train.batches import CaptionRules
    from lorasmith.train.text_cache import cache_text_outputs, te_cache_path

    base, config = tiny_base_model("sd1"), TrainConfig()
    images = [tmp_path / "a.png", tmp_path / "b.png"]
    captions = {images[0]: "one", images[1]: "two"}
    samples = [SimpleNamespace(item=SimpleNamespace(path=p, caption=captions[p])) for p in images]
    encoded: list[str] = []

    def encode(chunk):
        encoded.extend(chunk)
        return TextEmbeddings(torch.stack([torch.full((3, 2), float(len(c))) for c in chunk]), None)

    def run():
        return cache_text_outputs(samples, CaptionRules.from_config(config), encode, base, config, "cpu", True)

    first, read = run()
    assert read == 0 and sorted(encoded) == ["one", "two"]
    assert te_cache_path(images[0], "sd1").name == "a_te_outputs.npz"
    assert te_cache_path(images[0], "flux").name == "a_flux_te.npz"
    encoded.clear()
    second, read = run()
    assert read == 2 and encoded == [] and torch.equal(second["two"][0], first["two"][0])
    captions[images[1]] = "changed"
    samples[1].item.caption = "changed"
    _, read = run()
    assert read == 1 and encoded == ["changed"]
    encoded.clear()
    with torch.no_grad():
        base.text_encoders[0].encoder.layers[-1].mlp.fc2.bias.add_(1.0)  # another text encoder
    _, read = run()
    assert read == 0 and sorted(encoded) == ["changed", "one"]
    import numpy as np

    foreign = te_cache_path(images[0], "sd1")
    np.savez(foreign, hidden_state1=np.zeros(2))  # sd-scripts' own file: left alone
    run()
    assert set(np.load(foreign).files) == {"hidden_state1"}
    assert not list(Path(tmp_path).glob("*.tmp.npz"))


def test_captions_are_encoded_text_encoder_batch_size_at_a_time_by_default_the_batch_size(tmp_path):
    from dataclasses import replace

    from lorasmith.models.text import TextEmbeddings
    from lorasmith.models.tiny import tiny_base_model
    from lorasmith.train.batches import CaptionRules
    from lorasmith.train.text_cache import cache_text_outputs

    base = tiny_base_model("sd1")
    samples = [SimpleNamespace(item=SimpleNamespace(path=tmp_path / f"{i}.png", caption=f"caption {i}"))
               for i in range(5)]
    chunks: list[int] = []

    def encode(chunk):
        chunks.append(len(chunk))
        return TextEmbeddings(torch.zeros(len(chunk), 3, 2), None)

    for config, expected in ((TrainConfig(train_batch_size=2), [2, 2, 1]),  # sd-scripts: the batch size
                             (TrainConfig(train_batch_size=2, text_encoder_batch_size=4), [4, 1])):
        chunks.clear()
        cache, _ = cache_text_outputs(samples, CaptionRules.from_config(replace(config)), encode, base, config, "cpu",
                                      False)
        assert chunks == expected and len(cache) == 5
