"""The names in an SD LoRA file: the layers they name per family, the file's format, and who maps them.

The layers: `ARCHITECTURES` lists per family the real model and lorasmith's tiny one (`architecture`
builds each on the meta device and reads off every layer under its kohya and its peft name; the
tensors' shapes tell the models apart). A new family (Flux) adds its entry there, and to `architecture`
the way to list its transformer's layers (the SD families share one: UNet + CLIP text encoders).

Who maps them, each judged the way the program does it:
- AUTOMATIC1111 (extensions-builtin/Lora/networks.py `load_network`): splits a key at its first dot,
  maps a diffusers-layout `lora_unet_` name to the original layout with fixed rules
  (`convert_diffusers_name_to_compvis`; block stride layers_per_block + 1, which it takes as 3),
  else takes the name as original-layout (SDXL's kohya names); text encoders by `lora_te_`/`lora_te1_`/
  `lora_te2_` and the family. LoRA, LoCon, DoRA and the LyCORIS kinds load; peft names not at all.
- ComfyUI (comfy/lora.py `model_lora_keys_unet`/`_clip`, `load_lora`): kohya names in either layout,
  `lycoris_` names, old diffusers attn-procs names (`unet.….processor.to_q`: peft's `unet.….attn1.to_q`
  attention keys are not mapped) and `text_encoder[_2].text_model.…`; LoRA, LoCon, DoRA, LoHa, LoKr,
  GLoRA, OFT and full diffs, not iA3. It reads alphas only from `.alpha` tensors.
- diffusers (`load_lora_weights`): its own converters, run on the names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any

from lorasmith.models.families import Family, get_family

KOHYA, DIFFUSERS = "kohya", "diffusers"
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
PEFT_SUFFIXES = {".lora_A.weight": "down", ".lora_B.weight": "up", ".alpha": "alpha",
                 ".lora_magnitude_vector": "dora", ".lora_B.bias": "bias"}
# Key endings of every diffusers LoRA form: peft's, and the older ones diffusers' own converters read.
DIFFUSERS_FORMS = (*PEFT_SUFFIXES, "_lora.down.weight", "_lora.up.weight", ".lora.down.weight", ".lora.up.weight",
                   ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight")
ARCHITECTURES = {"sd1": ("sd1", "sd1-tiny"), "sd2": ("sd2", "sd2-tiny"), "sdxl": ("sdxl", "sdxl-tiny")}


@dataclass(frozen=True)
class Slot:
    """One layer a LoRA module can sit on, under both names."""

    kohya: str  # "lora_unet_input_blocks_4_1_proj_in"
    component: str  # "unet", "text_encoder", "text_encoder_2"
    path: str  # diffusers path; text encoders as transformers 4 names them ("text_model.encoder.…")
    shape: tuple[int, ...]  # the layer's weight
    ldm: str  # UNet: the original-layout path ("input_blocks.4.1.proj_in"); "" otherwise

    @property
    def peft(self) -> str:
        return f"{self.component}.{self.path}"

    def fits(self, down: tuple[int, ...], up: tuple[int, ...]) -> bool:
        return tuple(up[:1]) == self.shape[:1] and tuple(down[1:]) == self.shape[1:]


@dataclass(frozen=True)
class Architecture:
    name: str  # "sdxl", "sdxl-tiny"
    family: Family
    unet_config: dict
    slots: tuple[Slot, ...]

    @cached_property
    def by_kohya(self) -> dict[str, Slot]:
        # SDXL's UNet also under diffusers-layout kohya names, as some converters write them.
        aliases = {f"lora_unet_{s.path.replace('.', '_')}": s for s in self.slots if s.component == "unet"}
        return {**aliases, **{s.kohya: s for s in self.slots}}

    @cached_property
    def by_peft(self) -> dict[str, Slot]:
        return {s.peft: s for s in self.slots}


@cache
def architecture(name: str) -> Architecture:
    """The layers of an architecture of `ARCHITECTURES`, read off its model built on the meta device."""
    from lorasmith.models.ldm_layout import unet_module_name_to_ldm
    from lorasmith.network.kohya_keys import kohya_key, lora_host_modules, text_encoder_component
    from lorasmith.network.size import meta_components

    family_name, _, variant = name.partition("-")
    unet, encoders = meta_components(family_name, _tiny_configs(family_name) if variant else None)
    family, config = get_family(family_name), dict(unet.config)
    slots = []
    for path, layer in lora_host_modules(unet):
        try:
            ldm = unet_module_name_to_ldm(path, config)
        except ValueError:
            continue  # no name in the original layout: no kohya file can address it
        slots.append(Slot(kohya_key(family, "unet", path, config), "unet", path, _shape(layer), ldm))
    for index, encoder in enumerate(encoders):
        component = text_encoder_component(index)
        for path, layer in lora_host_modules(encoder):
            path = path if hasattr(encoder, "text_model") else f"text_model.{path}"  # transformers 5 dropped it
            if path.startswith("text_model."):  # text_projection lies outside what kohya names
                slots.append(Slot(kohya_key(family, component, path), component, path, _shape(layer), ""))
    return Architecture(name, family, config, tuple(slots))


def _tiny_configs(family_name: str) -> dict:
    from lorasmith.models.tiny import tiny_text_config, tiny_unet_config

    parts = ("text_encoder", "text_encoder_2") if family_name == "sdxl" else ("text_encoder",)
    return {"unet": tiny_unet_config(family_name), **{p: tiny_text_config(family_name, i) for i, p in enumerate(parts)}}


def _shape(layer: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in layer.weight.shape)


def family_hint(metadata: dict[str, str]) -> str | None:
    """The family the metadata names (ss_base_model_version, ss_v2, modelspec.architecture), if any."""
    text = f"{metadata.get('ss_base_model_version', '')} {metadata.get('modelspec.architecture', '')}".lower()
    if "xl" in text:
        return "sdxl"
    if "v2" in text or metadata.get("ss_v2") == "True":
        return "sd2"
    return "sd1" if "v1" in text else None


def match_architecture(modules: dict[str, tuple | None], naming: str, metadata: dict[str, str],
                       ) -> tuple[Architecture, list[str]]:
    """The architecture with a layer for every module (name, and shapes (down, up) where given).

    Without one: the closest, and the modules it lacks. `naming` is KOHYA or DIFFUSERS (peft names).
    """
    hint, sdxl = family_hint(metadata), any(n.startswith(("lora_te1_", "lora_te2_", "text_encoder_2."))
                                             or "_input_blocks_" in n or "_output_blocks_" in n for n in modules)
    order = sorted(ARCHITECTURES, key=lambda f: (f != ("sdxl" if sdxl else hint), f != hint))
    tiny_first = metadata.get("ss_sd_model_name", "").startswith("tiny-")
    best: tuple[Architecture, list[str]] | None = None
    for family_name in order:
        for name in sorted(ARCHITECTURES[family_name], key=lambda n: n.endswith("-tiny") != tiny_first):
            arch = architecture(name)
            table = arch.by_kohya if naming == KOHYA else arch.by_peft
            missing = [m for m, shapes in modules.items() if m not in table or (shapes and not table[m].fits(*shapes))]
            if not missing:
                return arch, []
            if best is None or len(missing) < len(best[1]):
                best = (arch, missing)
    return best


def key_format(keys) -> str:
    """KOHYA (lora_unet_/lora_te names), DIFFUSERS (peft or older diffusers names) or "unknown", by most keys."""
    keys = list(keys)
    kohya = sum(k.startswith(KOHYA_PREFIXES) for k in keys)
    peft = sum(not k.startswith(KOHYA_PREFIXES) and k.endswith(DIFFUSERS_FORMS) for k in keys)
    if not kohya and not peft:
        return "unknown"
    return KOHYA if kohya >= peft else DIFFUSERS


EXAMPLES = 3
_CLIP_PARTS = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")
# The tensors of a module (after its name) that both read: LoRA/LoCon/DoRA, LoHa, LoKr, GLoRA, full diffs, OFT.
_BOTH = ("lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "dora_scale", "hada_w1_a", "hada_w1_b",
         "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a",
         "lokr_w2_b", "lokr_t2", "a1.weight", "a2.weight", "b1.weight", "b2.weight", "w_norm", "b_norm", "diff",
         "diff_b", "oft_blocks", "rescale")
_A1111_SUFFIXES = (*_BOTH, "scale", "weight", "on_input", "oft_diag")  # + iA3
_COMFY_SUFFIXES = (*(f".{s}" for s in _BOTH), "_lora.up.weight", "_lora.down.weight", ".lora_B.weight",
                   ".lora_A.weight", ".lora.up.weight", ".lora.down.weight", ".lora_linear_layer.up.weight",
                   ".lora_linear_layer.down.weight", ".reshape_weight", ".set_weight")


@dataclass
class Verdict:
    """Whether one program loads the file: "yes", "partly" (some keys skipped) or "no"."""

    consumer: str
    loads: str
    total: int
    skipped: list[str] = field(default_factory=list)
    note: str = ""

    def line(self) -> str:
        extra = f" ({self.note})" if self.note else ""
        if self.loads == "yes":
            return f"yes{extra}"
        if self.loads == "no":
            return f"no: {self.note}" if self.note else "no: none of its keys maps to a layer"
        shown = ", ".join(self.skipped[:EXAMPLES]) + (", ..." if len(self.skipped) > EXAMPLES else "")
        return f"partly: {len(self.skipped)} of {self.total} keys skipped ({shown}){extra}"


def _verdict(consumer: str, keys: list[str], skipped: list[str], note: str = "") -> Verdict:
    loads = "yes" if not skipped else "no" if len(skipped) == len(keys) else "partly"
    return Verdict(consumer, loads, len(keys), sorted(skipped), note)


def judge(shapes: dict[str, tuple[int, ...]], arch: Architecture | None,
          metadata_alphas: dict[str, tuple[int, float]] | None = None) -> list[Verdict]:
    """AUTOMATIC1111's, ComfyUI's and diffusers' verdicts on a file's keys (key -> tensor shape).

    `metadata_alphas`: module -> (rank, alpha) of the modules whose alpha is only in the metadata (peft files).
    """
    keys = sorted(shapes)
    if arch is None:
        return [Verdict(c, "no", len(keys), keys, "no key names a layer of an SD1.x/SD2.x/SDXL model")
                for c in ("AUTOMATIC1111", "ComfyUI", "diffusers")]
    return [a1111(keys, arch), comfyui(keys, arch, metadata_alphas or {}), diffusers(shapes, arch)]


# --- AUTOMATIC1111 ---------------------------------------------------------------------------------


def a1111(keys: list[str], arch: Architecture) -> Verdict:
    ldm = {s.ldm.replace(".", "_") for s in arch.slots if s.ldm}
    stride = _layers_per_block(arch.unet_config) + 1
    skipped = []
    for key in keys:
        name, _, part = key.partition(".")
        found = _a1111_text(name, arch) if name.startswith("lora_te") else (
            name.startswith("lora_unet_") and (_a1111_unet(name[10:], stride) in ldm or name[10:] in ldm))
        if not found or part not in _A1111_SUFFIXES:
            skipped.append(key)
    return _verdict("AUTOMATIC1111", keys, skipped)


def _layers_per_block(config: dict) -> int:
    layers = config.get("layers_per_block", 2)
    return int(layers[0] if isinstance(layers, (list, tuple)) else layers)


_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
           "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def _a1111_unet(name: str, stride: int) -> str | None:
    """A1111's original-layout name for a diffusers-layout UNet name (after `lora_unet_`)."""
    if m := re.match(r"conv_in(.*)", name):
        return f"input_blocks_0_0{m[1]}"
    if m := re.match(r"conv_out(.*)", name):
        return f"out_2{m[1]}"
    if m := re.match(r"time_embedding_linear_(\d+)(.*)", name):
        return f"time_embed_{int(m[1]) * 2 - 2}{m[2]}"
    if m := re.match(r"down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        inner = m[4] if m[2] == "attentions" else _RESNET.get(m[4], m[4])
        return f"input_blocks_{1 + int(m[1]) * stride + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{inner}"
    if m := re.match(r"mid_block_(attentions|resnets)_(\d+)_(.+)", name):
        inner = m[3] if m[1] == "attentions" else _RESNET.get(m[3], m[3])
        return f"middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{inner}"
    if m := re.match(r"up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        inner = m[4] if m[2] == "attentions" else _RESNET.get(m[4], m[4])
        return f"output_blocks_{int(m[1]) * stride + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{inner}"
    if m := re.match(r"down_blocks_(\d+)_downsamplers_0_conv", name):
        return f"input_blocks_{(int(m[1]) + 1) * stride}_0_op"
    if m := re.match(r"up_blocks_(\d+)_upsamplers_0_conv", name):  # A1111 takes up block 0 to have no attention
        return f"output_blocks_{int(m[1]) * stride + stride - 1}_{2 if int(m[1]) > 0 else 1}_conv"
    return None


def _a1111_text(name: str, arch: Architecture) -> bool:
    m = re.match(r"lora_te(1|2)?_text_model_encoder_layers_(\d+)_(.+)", name)
    if not m:
        return False
    which, layer, part = m.groups()
    family = arch.family.name
    # The encoder A1111 looks in, named by the family's own kohya prefix.
    prefix = {("sd1", None): "lora_te", ("sd1", "1"): "lora_te", ("sd2", None): "lora_te",
              ("sdxl", "1"): "lora_te1", ("sdxl", "2"): "lora_te2"}.get((family, which))
    open_clip = family == "sd2" or which == "2"  # renamed to OpenCLIP's names, which only these have
    if prefix is None or (open_clip and part not in _CLIP_PARTS):
        return False
    return f"{prefix}_text_model_encoder_layers_{layer}_{part}" in arch.by_kohya


# --- ComfyUI ----------------------------------------------------------------------------------------


def comfyui(keys: list[str], arch: Architecture, metadata_alphas: dict[str, tuple[int, float]]) -> Verdict:
    names = _comfy_names(arch)
    skipped = [k for k in keys if not any(k.endswith(s) and k[:-len(s)] in names for s in _COMFY_SUFFIXES)]
    # It reads no lora_adapter_metadata: there, alpha is the rank.
    off = sum(alpha != rank for rank, alpha in metadata_alphas.values())
    note = f"alpha taken as rank: {off} modules at another strength than trained" if off else ""
    return _verdict("ComfyUI", keys, skipped, note)


def _comfy_names(arch: Architecture) -> set[str]:
    names = set()
    for slot in arch.slots:
        if slot.component == "unet":
            old = slot.path.replace(".to_", ".processor.to_")  # the attn-procs names of old diffusers files
            old = old[:-2] if old.endswith(".to_out.0") else old
            names |= {f"lora_unet_{slot.ldm.replace('.', '_')}", f"diffusion_model.{slot.ldm}",
                      f"lora_unet_{slot.path.replace('.', '_')}", f"lycoris_{slot.path.replace('.', '_')}",
                      old, f"unet.{old}"}
            continue
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", slot.path)
        if not m or m[2].replace(".", "_") not in _CLIP_PARTS:
            continue
        kohya = f"text_model_encoder_layers_{m[1]}_{m[2].replace('.', '_')}"
        prefixes = ("lora_te2",) if slot.component == "text_encoder_2" else ("lora_te", "lora_te1")
        names |= {f"{p}_{kohya}" for p in prefixes} | {slot.peft}
    return names


# --- diffusers --------------------------------------------------------------------------------------


def diffusers(shapes: dict[str, tuple[int, ...]], arch: Architecture) -> Verdict:
    """Run diffusers' own renaming (load_lora_weights -> lora_state_dict -> load_lora_into_*) on the names."""
    import torch

    keys = sorted(shapes)
    state = {k: torch.zeros(()) if k.endswith(".alpha") else torch.empty(shapes[k], device="meta") for k in keys}
    ids = {k: id(t) for k, t in state.items()}  # diffusers moves tensors, never copies: they say where a key went
    dropped = [k for k in keys if "dora_scale" in k]  # the SD loaders drop DoRA scales, with a warning
    state = {k: t for k, t in state.items() if "dora_scale" not in k}
    note = "drops DoRA scales: not the trained result" if dropped else ""
    try:
        state = _diffusers_names(state, arch)
    except (ValueError, KeyError, IndexError) as error:
        text = " ".join(str(error).split())  # diffusers' message, on one line
        return Verdict("diffusers", "no", len(keys), keys, text if len(text) < 160 else f"{text[:157]}...")
    loaded = {id(t) for name, t in state.items() if _diffusers_target(name, t, arch)}
    # An alpha becomes a number, not a tensor: it goes where its module's down weight goes.
    where = {k: ids.get(k[:-len("alpha")] + "lora_down.weight") if k.endswith(".alpha") else ids[k] for k in keys}
    skipped = [k for k in keys if k not in dropped and where[k] not in loaded]
    return _verdict("diffusers", keys, dropped + skipped, note)


def _diffusers_names(state: dict[str, Any], arch: Architecture) -> dict[str, Any]:
    from types import SimpleNamespace

    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if state and all(k.startswith(KOHYA_PREFIXES) for k in state):
        if arch.family.name == "sdxl":
            state = _maybe_map_sgm_blocks_to_diffusers(state, SimpleNamespace(**arch.unet_config))
        state, _ = _convert_non_diffusers_lora_to_diffusers(state)
    odd = next((k for k in state if "lora" not in k), None)
    if odd is not None:
        raise ValueError(f"Invalid LoRA checkpoint: '{odd}' holds no 'lora'")
    out = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        part = {k[len(component) + 1:]: t for k, t in state.items() if k.startswith(f"{component}.")}
        if not part:
            continue
        if component == "unet":
            part = part if "lora_A" in next(iter(part)) else convert_unet_state_dict_to_peft(part)
        else:
            part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        out.update({f"{component}.{k}": t for k, t in part.items()})
    return out


def _diffusers_target(name: str, tensor: Any, arch: Architecture) -> bool:
    m = re.fullmatch(r"(unet|text_encoder|text_encoder_2)\.(.+)\.lora_[AB]\.weight", name)
    if not m:
        return False
    component, path = m.groups()
    if component != "unet" and not path.startswith("text_model."):
        path = f"text_model.{path}"
    slot = arch.by_peft.get(f"{component}.{path}")
    if slot is None:
        return False
    shape = tuple(tensor.shape)
    return shape[1:] == slot.shape[1:] if ".lora_A." in name else shape[:1] == slot.shape[:1]
