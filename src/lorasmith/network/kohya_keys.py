"""Module path <-> kohya LoRA key, per model family.

sd-scripts names each LoRA module `<prefix>_<path with '.' replaced by '_'>`:

- UNet: `lora_unet_` + the diffusers path for SD1.x/SD2.x (sd-scripts trains those on a
  diffusers-named UNet), but the original ("LDM"/sgm) path for SDXL, whose UNet sd-scripts
  rebuilt in the original layout (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`).
- Text encoders: `lora_te_` (SD1.x/SD2.x) or `lora_te1_` / `lora_te2_` (SDXL) + the path
  inside the transformers CLIP model (`lora_te_text_model_encoder_layers_0_self_attn_q_proj`),
  always under `text_model.` as in the transformers 4 layout sd-scripts was written against.

Underscores make the key -> path direction ambiguous (`to_q` vs `to.q`), so the reverse is a
table built by enumerating the model's own modules, never string surgery on the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from lorasmith.models.families import Family

UNET = "unet"
UNET_PREFIX = "lora_unet"


@dataclass(frozen=True)
class ModuleRef:
    """One Linear/Conv2d of a base model that a LoRA module can sit on."""

    key: str  # kohya module name, e.g. "lora_unet_down_blocks_0_attentions_0_proj_in"
    component: str  # "unet", "text_encoder" or "text_encoder_2" (diffusers' component names)
    path: str  # module path inside that component, e.g. "down_blocks.0.attentions.0.proj_in"


def text_encoder_component(index: int) -> str:
    """diffusers' name of the index-th text encoder: text_encoder, text_encoder_2."""
    return "text_encoder" if index == 0 else f"text_encoder_{index + 1}"


def component_names(family: Family) -> list[str]:
    return [UNET] + [text_encoder_component(i) for i in range(len(family.text_encoder_prefixes))]


def component_module(base: Any, component: str) -> Any:
    """The torch module of `component` in a BaseModel."""
    if component == UNET:
        return base.unet
    index = 0 if component == "text_encoder" else int(component.rsplit("_", 1)[1]) - 1
    return base.text_encoders[index]


def kohya_key(family: Family, component: str, path: str, unet_config: dict | None = None) -> str:
    """The kohya module name of the module at `path` inside `component`."""
    if component == UNET:
        if family.unet_keys_in_ldm_layout:
            from lorasmith.models.ldm_layout import unet_module_name_to_ldm

            if unet_config is None:
                raise ValueError("SDXL UNet keys need the UNet's config")
            path = unet_module_name_to_ldm(path, unet_config)
        return f"{UNET_PREFIX}_{path.replace('.', '_')}"
    index = 0 if component == "text_encoder" else int(component.rsplit("_", 1)[1]) - 1
    return f"{family.text_encoder_prefixes[index]}_{text_model_path(path).replace('.', '_')}"


def text_model_path(path: str) -> str:
    """The path as sd-scripts saw it, under `text_model.`.

    transformers 5 dropped the `text_model` level from CLIPTextModel (not from
    CLIPTextModelWithProjection); the kohya keys keep it whatever the installed version.
    """
    return path if path.startswith("text_model.") else f"text_model.{path}"


def lora_host_modules(module: Any, norms: bool = False) -> Iterator[tuple[str, Any]]:
    """(path, module) for every plain Linear/Conv2d, as sd-scripts finds them (and norm layers with `norms`,
    which LyCORIS' train_norm trains).

    If peft LoRA layers are injected, their own lora_A/lora_B are skipped and a wrapped
    layer is reported at its original path (the `.base_layer` suffix removed).
    """
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv2d) + ((torch.nn.LayerNorm, torch.nn.GroupNorm) if norms else ())
    for path, child in module.named_modules():
        if type(child) not in kinds:
            continue
        parts = path.split(".")
        if any(p in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B") for p in parts):
            continue
        if parts[-1] == "base_layer":
            path = ".".join(parts[:-1])
        yield path, child


def key_table(base: Any, norms: bool = False) -> dict[str, ModuleRef]:
    """Every kohya key a LoRA for `base` may hold -> the module it names (norm layers too with `norms`)."""
    table: dict[str, ModuleRef] = {}
    unet_config = dict(base.unet.config)
    for component in component_names(base.family):
        for path, _ in lora_host_modules(component_module(base, component), norms):
            try:
                key = kohya_key(base.family, component, path, unet_config)
            except ValueError:
                continue  # not nameable in the original layout: no kohya file can address it
            table[key] = ModuleRef(key, component, path)
    return table


def resolve_module(base: Any, ref: ModuleRef) -> Any:
    """The plain Linear/Conv2d that `ref` names (under a peft wrapper, its base layer)."""
    module = component_module(base, ref.component).get_submodule(ref.path)
    return getattr(module, "base_layer", module)
