"""`lora convert`: kohya LoRA files <-> diffusers/peft ones (SD1.x, SD2.x, SDXL), exactly and both ways.

kohya names a module `lora_unet_…` / `lora_te[1|2]_…` and stores `.lora_down.weight`, `.lora_up.weight`
and `.alpha`; diffusers reads peft names: `unet.<diffusers path>.lora_A.weight` / `.lora_B.weight`,
`text_encoder[_2].text_model.…` (SDXL's UNet in the diffusers layout, where kohya uses the original one).
The tensors move unchanged (down is lora_A, up is lora_B, in every shape), so the round trip is bit-exact.

Alphas: diffusers 0.42 takes a peft file's alphas only from its `lora_adapter_metadata` metadata, one
peft LoraConfig per component (`lora_base._fetch_state_dict` -> `_load_sft_state_dict_metadata`, then
`peft_utils._create_lora_config(metadata=...)`: `LoraConfig(**metadata)`); `.alpha` tensors would fail
its "every key holds 'lora'" check in `load_lora_weights`. So each module's rank and alpha go in the
config's `rank_pattern` / `alpha_pattern` (a float's JSON text is exact), and what kohya needs back that
a LoraConfig cannot say (the alphas' dtype, modules saved without one) goes in `lorasmith_kohya`.

The two names of a layer come from the table of the family's model (`consumers.architecture`), never
from string surgery on the key.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lorasmith.errors import ToolError
from lorasmith.models.families import Family
from lorasmith.tools.lora.consumers import (
    COMPONENTS,
    DIFFUSERS,
    KOHYA,
    PEFT_SUFFIXES,
    Architecture,
    Slot,
    key_format,
    match_architecture,
)

TARGETS = (DIFFUSERS, KOHYA)
ADAPTER_METADATA = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
KOHYA_RECORD = "lorasmith_kohya"  # what a diffusers file we wrote needs to become its kohya file again
NETWORK_NAMES = {"LohaModule": "LoHa", "LokrModule": "LoKr", "IA3Module": "iA3", "GLoRAModule": "GLoRA",
                 "FullModule": "full diff", "NormModule": "norm", "DiagOFTModule": "OFT",
                 "ButterflyOFTModule": "BOFT", "DyLoraModule": "DyLoRA", "TLoraModule": "T-LoRA"}


def network_name(algo: str, tensors: dict[str, Any]) -> str:
    """Display name of a module's network type, from deltas.ModuleDelta's algo and its tensors' suffixes."""
    if "dora_scale" in tensors:
        return "DoRA"
    if algo == "LoConModule" and "lora_mid.weight" in tensors:
        return "LoCon (Tucker)"
    if algo in ("lora", "LoConModule"):
        down = tensors.get("lora_down.weight")
        conv = down is not None and len(down.shape) == 4 and tuple(down.shape[2:]) != (1, 1)
        return "LoCon" if conv else "LoRA"
    return NETWORK_NAMES.get(algo, algo)


# --- kohya -> diffusers -------------------------------------------------------------------------


def kohya_to_diffusers(tensors: dict[str, Any], metadata: dict[str, str]) -> tuple[dict, dict, Architecture]:
    """(peft tensors, metadata with the alphas as diffusers reads them, the architecture) of a kohya LoRA."""
    from lorasmith.network.deltas import module_deltas

    modules = module_deltas(tensors)
    for name, delta in modules.items():
        if delta.algo != "lora":
            kind = network_name(delta.algo, delta.tensors)
            why = ("diffusers' SD loaders drop DoRA scales" if kind == "DoRA"
                   else "which has no diffusers/peft form")
            raise ToolError(f"'{name}' is a {kind} module, {why}; only LoRA/LoCon files convert")
    shapes = {n: (tuple(d.tensors["lora_down.weight"].shape), tuple(d.tensors["lora_up.weight"].shape))
              for n, d in modules.items()}
    arch = _fitting(shapes, KOHYA, metadata)
    out: dict[str, Any] = {}
    per_component: dict[str, dict[str, tuple[int, float]]] = {}
    for name, delta in modules.items():
        slot, plain = arch.by_kohya[name], delta.plain
        out[f"{slot.peft}.lora_A.weight"] = delta.tensors["lora_down.weight"]
        out[f"{slot.peft}.lora_B.weight"] = delta.tensors["lora_up.weight"]
        per_component.setdefault(slot.component, {})[_pattern_path(slot)] = (plain.rank, plain.alpha)
    adapter = {f"{c}.{k}": v for c, modules_of in per_component.items() for k, v in _lora_config(modules_of).items()}
    new_metadata = {**metadata, ADAPTER_METADATA: json.dumps(adapter, sort_keys=True),
                    KOHYA_RECORD: json.dumps(_alpha_record(modules), sort_keys=True)}
    return out, new_metadata, arch


def _pattern_path(slot: Slot) -> str:
    # transformers 5 has no `text_model.` level in CLIPTextModel; without it the name matches either way.
    return slot.path.removeprefix("text_model.")


def _lora_config(modules: dict[str, tuple[int, float]]) -> dict:
    """A peft LoraConfig, as diffusers stores it, that gives every module its own rank and alpha."""
    from peft import LoraConfig

    r = Counter(rank for rank, _ in modules.values()).most_common(1)[0][0]
    alpha = Counter(a for _, a in modules.values()).most_common(1)[0][0]
    config = {"r": r, "lora_alpha": alpha, "target_modules": sorted(modules),
              "rank_pattern": {p: rank for p, (rank, _) in modules.items() if rank != r},
              "alpha_pattern": {p: a for p, (_, a) in modules.items() if a != alpha}}
    LoraConfig(**config)  # peft's own checks, before the file is written
    return config


def _alpha_record(modules: dict) -> dict:
    """The alpha tensors' dtypes (and shapes, if not 0-d), and the modules without one: no LoraConfig says them."""
    alphas = {n: d.tensors["alpha"] for n, d in modules.items() if "alpha" in d.tensors}
    dtypes = {n: str(a.dtype).removeprefix("torch.") for n, a in alphas.items()}
    common = Counter(dtypes.values()).most_common(1)[0][0] if dtypes else "float32"
    return {"alpha_dtype": common, "alpha_dtypes": {n: t for n, t in dtypes.items() if t != common},
            "alpha_shapes": {n: list(a.shape) for n, a in alphas.items() if a.dim()},
            "no_alpha": sorted(n for n in modules if n not in alphas)}


# --- diffusers -> kohya -------------------------------------------------------------------------


@dataclass
class PeftModule:
    down: Any
    up: Any
    alpha: Any = None  # an `.alpha` tensor some writers add


def peft_parts(values: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """peft module name -> {"down"|"up"|"alpha"|"dora"|"bias": value}, and the keys that fit no module.

    Names as diffusers' loaders see them: "unet.down_blocks.0….to_q", text encoders under `text_model.`;
    older diffusers forms are renamed by diffusers' own converters first. Values travel untouched.
    """
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    groups: dict[str, dict[str, Any]] = {}
    odd = []
    for key, value in values.items():
        component = next((c for c in COMPONENTS if key.startswith(f"{c}.")), None)
        if component is None and key.split(".")[0] in ("down_blocks", "mid_block", "up_blocks"):
            component, key = "unet", f"unet.{key}"  # diffusers' first attn-procs files had no prefix
        if component is None:
            odd.append(key)
        else:
            groups.setdefault(component, {})[key[len(component) + 1:]] = value
    parts: dict[str, dict[str, Any]] = {}
    for component, keys in groups.items():
        if not all(k.endswith(tuple(PEFT_SUFFIXES)) for k in keys):
            keys = (convert_unet_state_dict_to_peft if component == "unet" else _te_to_peft)(keys)
        for key, value in keys.items():
            suffix = next((s for s in PEFT_SUFFIXES if key.endswith(s)), None)
            if suffix is None:
                odd.append(f"{component}.{key}")
                continue
            path = key[:-len(suffix)]
            if component != "unet" and not path.startswith("text_model."):
                path = f"text_model.{path}"  # written under transformers 5
            parts.setdefault(f"{component}.{path}", {})[PEFT_SUFFIXES[suffix]] = value
    return parts, odd


def _te_to_peft(keys: dict[str, Any]) -> dict[str, Any]:
    from diffusers.utils.state_dict_utils import convert_state_dict_to_peft

    try:
        return convert_state_dict_to_peft(keys)
    except ValueError:
        return keys  # a form diffusers does not know either: reported key by key


def peft_modules(tensors: dict[str, Any]) -> dict[str, PeftModule]:
    """peft module name -> its tensors; ToolError naming what kohya files cannot hold."""
    parts, odd = peft_parts(tensors)
    if odd and not odd[0].startswith(tuple(f"{c}." for c in COMPONENTS)):
        raise ToolError(f"'{odd[0]}' is not a key of an SD UNet or text encoder (unet., text_encoder., "
                        "text_encoder_2.); lorasmith converts SD1/SD2/SDXL LoRAs only")
    if odd:
        raise ToolError(f"'{odd[0]}' is not a LoRA tensor diffusers writes (….lora_A.weight / ….lora_B.weight); "
                        "is it a LoRA file?")
    modules = {}
    for name, found in parts.items():
        for kind, what in (("dora", "a DoRA magnitude"), ("bias", "a LoRA bias")):
            if kind in found:
                raise ToolError(f"'{name}' has {what}, which kohya LoRA files cannot hold; "
                                "only plain LoRA files convert")
        if "down" not in found or "up" not in found:
            missing = "lora_A" if "down" not in found else "lora_B"
            raise ToolError(f"'{name}' has no {missing} weight; the file is incomplete, save or download it again")
        modules[name] = PeftModule(found["down"], found["up"], found.get("alpha"))
    return modules


def diffusers_to_kohya(tensors: dict[str, Any], metadata: dict[str, str]) -> tuple[dict, dict, Architecture]:
    """(kohya tensors, metadata, the architecture) of a diffusers/peft LoRA."""
    import torch

    modules = peft_modules(tensors)
    arch = _fitting({n: (tuple(m.down.shape), tuple(m.up.shape)) for n, m in modules.items()}, DIFFUSERS, metadata)
    configs, record = adapter_configs(metadata), _record(metadata)
    out: dict[str, Any] = {}
    ranks, alphas = [], []
    for name, module in modules.items():
        slot = arch.by_peft[name]
        out[f"{slot.kohya}.lora_down.weight"], out[f"{slot.kohya}.lora_up.weight"] = module.down, module.up
        rank = int(module.down.shape[0])
        alpha = module.alpha if module.alpha is not None else config_alpha(configs.get(slot.component), slot.path, rank)
        ranks.append(rank)
        alphas.append(float(alpha))
        if slot.kohya not in record.get("no_alpha", []):
            given = torch.is_tensor(alpha)  # the file's own .alpha tensor
            out[f"{slot.kohya}.alpha"] = alpha if given else _alpha_tensor(alpha, slot.kohya, record, module.down.dtype)
    return out, _kohya_metadata(metadata, arch.family, ranks, alphas), arch


def _record(metadata: dict[str, str]) -> dict:
    try:
        record = json.loads(metadata.get(KOHYA_RECORD) or "{}")
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise ToolError(f"the file's {KOHYA_RECORD} metadata is damaged; remove that key to convert it as "
                        "a plain diffusers file")
    return record


def _alpha_tensor(alpha: float, name: str, record: dict, weight_dtype: Any) -> Any:
    import torch

    dtype = record.get("alpha_dtypes", {}).get(name, record.get("alpha_dtype"))
    dtype = getattr(torch, dtype) if dtype else weight_dtype  # sd-scripts saves alphas like the weights
    return torch.tensor(alpha, dtype=dtype).reshape(record.get("alpha_shapes", {}).get(name, []))


def adapter_configs(metadata: dict[str, str]) -> dict[str, Any]:
    """component -> the peft LoraConfig of its `lora_adapter_metadata` (absent: none)."""
    from peft import LoraConfig

    try:
        flat = json.loads(metadata.get(ADAPTER_METADATA) or "{}")
        known = {f.name for f in fields(LoraConfig)}
        per: dict[str, dict] = {}
        for key, value in flat.items():
            component, _, field = key.partition(".")
            if field in known:
                per.setdefault(component, {})[field] = value
        return {component: LoraConfig(**config) for component, config in per.items()}
    except (ValueError, TypeError) as error:
        raise ToolError(f"the file's lora_adapter_metadata is not a peft LoraConfig ({type(error).__name__}: "
                        f"{' '.join(str(error).split())[:120]}); fix or remove that metadata") from None


def config_alpha(config: Any, path: str, rank: int) -> float:
    """A module's alpha as peft gives it under `config` (no config: alpha = rank, diffusers' convention)."""
    if config is None:
        return float(rank)
    from peft.utils.other import get_pattern_key

    pattern = get_pattern_key(config.alpha_pattern.keys(), path)
    alpha = float(config.alpha_pattern.get(pattern, config.lora_alpha))
    return alpha * rank ** 0.5 if config.use_rslora else alpha  # rsLoRA scales by alpha/sqrt(r); kohya by alpha/r


def _kohya_metadata(metadata: dict[str, str], family: Family, ranks: list[int], alphas: list[float]) -> dict:
    kept = {k: v for k, v in metadata.items() if k not in (ADAPTER_METADATA, KOHYA_RECORD)}
    if "ss_network_module" in kept:
        return kept
    # A file that never was kohya's: the keys A1111 and model sites read to tell what it is.
    return {**kept, "ss_network_module": "networks.lora", "ss_base_model_version": family.base_model_version,
            "ss_v2": str(family.name == "sd2"), "ss_network_dim": str(Counter(ranks).most_common(1)[0][0]),
            "ss_network_alpha": str(Counter(alphas).most_common(1)[0][0]),
            "modelspec.architecture": family.modelspec_architecture}


# --- the file tool --------------------------------------------------------------------------------


def _fitting(shapes: dict[str, tuple], naming: str, metadata: dict[str, str]) -> Architecture:
    arch, missing = match_architecture(shapes, naming, metadata)
    if missing:
        raise ToolError(f"'{missing[0]}' names no layer of an SD1.x/SD2.x/SDXL model (closest: {arch.name}, which "
                        f"lacks {len(missing)} of its {len(shapes)} modules); is the LoRA for another model?")
    return arch


@dataclass
class ConvertReport:
    save_to: Path
    source_format: str
    target: str
    architecture: str
    modules: int
    file_bytes: int

    def summary_lines(self) -> list[str]:
        what = f"{self.modules} modules of a {self.architecture} LoRA"
        return [f"converted {what} from {self.source_format} to {self.target} keys",
                f"saved {self.save_to} ({self.file_bytes / 2**20:.1f} MiB)"]


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ToolError(f"LoRA file '{path}' does not exist; check the path")
    try:
        with safe_open(str(path), framework="pt") as file:
            return {k: file.get_tensor(k) for k in file.keys()}, dict(file.metadata() or {})
    except Exception as error:  # safetensors raises several kinds for files that are not its own
        raise ToolError(f"'{path}' is not a readable safetensors file ({type(error).__name__}); "
                        "pick a .safetensors LoRA") from None


def convert_lora(source: str | os.PathLike, to: str, save_to: str | os.PathLike, overwrite: bool = False
                 ) -> ConvertReport:
    """Write `source` with `to` ("diffusers" or "kohya") keys to `save_to`, metadata kept."""
    from lorasmith.network.files import save_lora_file
    from lorasmith.tools.lora.outputs import checked_output

    if to not in TARGETS:
        raise ToolError(f"--to must be one of {', '.join(TARGETS)}, got '{to}'")
    tensors, metadata = read_tensors(source)
    output = checked_output(save_to, [source], overwrite)
    found = key_format(tensors)
    if found == "unknown":
        raise ToolError(f"'{source}' holds no LoRA weights (no lora_unet_/lora_te or lora_A/lora_B keys); "
                        "pick a LoRA file, not a checkpoint or embedding")
    if found == to:
        raise ToolError(f"'{source}' is already in {to} format; nothing to convert")
    convert = kohya_to_diffusers if to == DIFFUSERS else diffusers_to_kohya
    new_tensors, new_metadata, arch = convert(tensors, metadata)
    save_lora_file(output, new_tensors, new_metadata)
    modules = len({k.rsplit(".", 2)[0] for k in new_tensors if k.endswith(("lora_A.weight", "lora_down.weight"))})
    return ConvertReport(output, found, to, arch.name, modules, output.stat().st_size)
