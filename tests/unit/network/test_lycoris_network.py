"""LyCORIS networks (lycoris-lora) on the tiny models: kohya names, the file layout, reload and merge parity."""

from __future__ import annotations

import pytest
import torch

from lorasmith.errors import ModelError
from lorasmith.models.tiny import tiny_base_model
from lorasmith.network.apply import apply_loras
from lorasmith.network.kohya_keys import key_table
from lorasmith.network.lycoris_network import LycorisSpec, create_lycoris_network

# (algo, network_args, a tensor suffix only that kind writes)
KINDS = [
    ("loha", (), "hada_w1_a"),
    ("lokr", (("factor", "4"),), "lokr_w1"),
    ("ia3", (), "on_input"),
    ("glora", (), "a1.weight"),
    ("locon", (), "lora_down.weight"),
    ("lora", (("dora_wd", "True"),), "dora_scale"),
    ("loha", (("use_tucker", "True"), ("train_norm", "True")), "w_norm"),
]
IDS = ["loha", "lokr", "ia3", "glora", "locon", "dora", "loha-tucker-norm"]


def _outputs(base) -> tuple[torch.Tensor, ...]:
    """The text encoders' context and the UNet's prediction for fixed inputs."""
    from lorasmith.models.text import encode_prompts, sdxl_time_ids
    from lorasmith.train.step import predict_noise

    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text = encode_prompts(base, ["mychar, 1girl, smiling"])
        time_ids = sdxl_time_ids((64, 64), (0, 0), (64, 64)) if base.family.name == "sdxl" else None
        sample = predict_noise(base, latents, torch.tensor([500]), text.context, text.pooled, time_ids)
    return (text.context, sample)


def _trained(network, seed: int = 1) -> None:
    """Move every LyCORIS weight off its initial value, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.trainable_parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)


# Every kind on SD1; on SDXL (the same math, other names: the original layout, two text encoders) a few.
CASES = [pytest.param("sd1", *kind, id=f"sd1-{name}") for kind, name in zip(KINDS, IDS)] + [
    pytest.param("sdxl", *kind, id=f"sdxl-{name}") for kind, name in zip(KINDS, IDS)
    if name in ("lokr", "dora", "loha-tucker-norm")]


@pytest.mark.parametrize("family,algo,args,suffix", CASES)
def test_each_kind_saves_lycoris_tensors_under_kohya_names_reloads_and_merges_as_it_runs(family, algo, args, suffix):
    base = tiny_base_model(family, seed=0)
    original = _outputs(base)
    network = create_lycoris_network(base, LycorisSpec(algo=algo, rank=4, alpha=2, args=args, conv_rank=2,
                                                       conv_alpha=1))
    _trained(network)
    live = _outputs(base)
    tensors = network.kohya_state_dict(torch.float32)
    assert any(key.endswith(f".{suffix}") for key in tensors)
    for key in (k for k in tensors if k.endswith(".dora_scale")):  # (1, in): the layout A1111 and ComfyUI read
        assert tensors[key].shape[0] == 1 and tensors[key].shape[1] == tensors[key.replace("dora_scale",
                                                                                        "lora_down.weight")].shape[1]
    names = {key.split(".")[0] for key in tensors}
    assert names <= set(key_table(base, norms=True))  # every module is named as sd-scripts names it
    assert any(n.startswith("lora_te") for n in names) and any(n.startswith("lora_unet_") for n in names)
    if family == "sdxl":
        assert any(n.startswith("lora_unet_input_blocks_") for n in names)  # the original layout
        assert {n[:8] for n in names if n.startswith("lora_te")} == {"lora_te1", "lora_te2"}

    network.remove()
    for before, after in zip(original, _outputs(base)):
        assert torch.equal(before, after)  # the layers are back as they were

    again = create_lycoris_network(base, LycorisSpec(algo=algo, rank=4, alpha=2, args=args, conv_rank=2,
                                                     conv_alpha=1))
    again.load_kohya_state_dict(tensors)
    reloaded = again.kohya_state_dict(torch.float32)
    assert reloaded.keys() == tensors.keys() and all(torch.equal(reloaded[k], tensors[k]) for k in tensors)
    again.remove()

    applied = apply_loras(base, [(tensors, 1.0)])
    for ours, theirs in zip(_outputs(base), live):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    applied.restore()
    for before, after in zip(original, _outputs(base)):
        assert torch.equal(before, after)


@pytest.mark.parametrize("algo,args,suffix", KINDS, ids=IDS)
def test_each_file_loads_through_lycoris_own_loader_with_no_missing_keys(algo, args, suffix):
    """lycoris.kohya.create_network_from_weights, given SD1 models named as sd-scripts names them."""
    from lycoris.kohya import create_network_from_weights

    base = tiny_base_model("sd1", seed=0)
    network = create_lycoris_network(base, LycorisSpec(algo=algo, rank=4, alpha=2, args=args, conv_rank=2,
                                                       conv_alpha=1))
    _trained(network)
    tensors = network.kohya_state_dict(torch.float32)
    network.remove()
    if algo == "ia3" or "dora_wd" in dict(args):
        # lycoris-lora 4.1.3's loader detects these but cannot rebuild them: iA3's make_module_from_state_dict
        # takes `weight` only, and DoRA only in its (out, 1) layout, not the (1, in) one A1111 and ComfyUI read
        # (and we write). Check that it detects every module and extracts every tensor of the file.
        from lycoris.modules import get_module
        for name in {k.split(".")[0] for k in tensors}:
            kind, params = get_module(tensors, name)
            mine = {k.split(".", 1)[1] for k in tensors if k.split(".")[0] == name}
            assert kind is not None and mine <= set(kind.weight_list)
        return
    text_encoder = torch.nn.Module()
    text_encoder.text_model = base.text_encoders[0]  # transformers 4's layout, which sd-scripts uses
    loaded, _ = create_network_from_weights(1.0, None, None, text_encoder, base.unet, weights_sd=tensors)
    assert len(loaded.unet_loras) + len(loaded.text_encoder_loras) == len({k.split(".")[0] for k in tensors})
    for module in loaded.unet_loras + loaded.text_encoder_loras:
        loaded.add_module(module.lora_name, module)
    missing, unexpected = loaded.load_state_dict(tensors, strict=False)
    assert not missing and not unexpected


def test_a_file_of_another_kind_or_shape_is_refused_naming_the_key():
    base = tiny_base_model("sd1", seed=0)
    loha = create_lycoris_network(base, LycorisSpec(algo="loha", rank=4, alpha=2))
    tensors = loha.kohya_state_dict(torch.float32)
    loha.remove()
    lokr = create_lycoris_network(base, LycorisSpec(algo="lokr", rank=4, alpha=2))
    with pytest.raises(ModelError, match=r"hada_w1_a'.*lokr network does not have"):
        lokr.load_kohya_state_dict(tensors)
    lokr.remove()
    wider = create_lycoris_network(base, LycorisSpec(algo="loha", rank=8, alpha=2))
    with pytest.raises(ModelError, match=r"has shape \[.*network_dim"):
        wider.load_kohya_state_dict(tensors)
