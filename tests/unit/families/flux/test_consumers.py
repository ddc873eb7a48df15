"""Every module of our Flux file maps in ComfyUI's kohya loader, by ComfyUI's own rule
(comfy/lora.py `model_lora_keys_unet` / `model_lora_keys_clip`, shared/reference/flux-lora-format.md):
`lora_unet_` + each DiT weight's BFL path with `.` -> `_`, and `lora_te1_` + CLIP-L's HF path."""

from __future__ import annotations

import pytest

from lorasmith.families.flux.keys import diffusers_to_bfl
from lorasmith.families.flux.lora import FluxLoraSpec, create_flux_lora_network
from lorasmith.families.flux.meta import meta_flux_base
from lorasmith.families.flux.tiny import tiny_flux_base_model
from lorasmith.network.kohya_tensors import group_lora_tensors


def comfyui_kohya_names(base) -> set[str]:
    """The kohya module names ComfyUI maps for a Flux model: from the BFL state dict of the DiT and the
    CLIP-L text model's weights (ComfyUI names CLIP under text_model. whatever transformers does)."""
    names = {"lora_unet_" + key[: -len(".weight")].replace(".", "_")
             for key in diffusers_to_bfl(base.unet.state_dict()) if key.endswith(".weight")}
    for key in base.text_encoders[0].state_dict():
        if key.endswith(".weight"):
            path = key[: -len(".weight")]
            path = path if path.startswith("text_model.") else "text_model." + path
            names.add("lora_te1_" + path.replace(".", "_"))
    return names


@pytest.mark.parametrize("args", [(), ("in_dims=[4,2,2,2,4]",), ("train_blocks=single",)])
def test_every_module_of_the_real_flux_file_maps_in_comfyui(args):
    base = meta_flux_base(t5=False)
    comfyui = comfyui_kohya_names(base)
    network = create_flux_lora_network(base, FluxLoraSpec(rank=16, alpha=16, args=_args(args)))
    ours = set(group_lora_tensors(network.kohya_state_dict()))
    unmapped = ours - comfyui
    assert not unmapped, sorted(unmapped)[:5]
    assert len(ours) == network.modules_count()


def test_every_module_of_a_tiny_flux_file_maps_in_comfyui():
    base = tiny_flux_base_model()
    comfyui = comfyui_kohya_names(base)
    network = create_flux_lora_network(base, FluxLoraSpec(rank=4, alpha=4))
    assert set(group_lora_tensors(network.kohya_state_dict())) <= comfyui


def _args(items):
    from lorasmith.families.flux.lora_targets import FluxArgs

    return FluxArgs.parse(list(items))
