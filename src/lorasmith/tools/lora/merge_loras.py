"""`lora merge --models A B --ratios 0.7 0.3`: several LoRAs into one, the ratio-weighted sum of their deltas.

Without new_rank the factors are laid side by side (rank r1 + r2 + ...), which is exact: each
input's ratio * alpha/rank is folded into its own factors (the square root of its size on both,
its sign on down) and the merged module's alpha is its new rank, so scale 1. (sd-scripts'
merge_lora.py --concat keeps the first input's alpha and is off the sum by up to 0.79.)
With new_rank, as svd_merge_lora.py, the sum is truncated by SVD to its best rank-new_rank
approximation, without the 0.99 quantile clamp sd-scripts always applies. Modules present in
only some inputs are merged from those.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lorasmith.errors import ToolError
from lorasmith.network.apply import delta_shape
from lorasmith.network.files import save_dtype, save_lora_file
from lorasmith.network.kohya_tensors import ALPHA, DOWN, UP, LoraModuleTensors, group_lora_tensors
from lorasmith.tools.lora.outputs import checked_output
from lorasmith.tools.lora.resize import load_plain_lora, one_or_dynamic, rank_span
from lorasmith.tools.lora.svd import low_rank, product_svd

# Key prefixes that tell the two UNet layouts apart (SDXL's follows the original LDM names).
_LAYOUTS = {
    "SDXL": ("lora_te1_", "lora_te2_", "lora_unet_input_blocks_", "lora_unet_middle_block_",
             "lora_unet_output_blocks_"),
    "SD1/SD2": ("lora_te_", "lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_"),
}
# modelspec keys a merge keeps where all inputs agree; title, date and merged_from are its own.
_MODELSPEC_KEPT = ("sai_model_spec", "architecture", "implementation", "resolution", "prediction_type",
                   "encoder_layer")


@dataclass
class ModuleMerge:
    """One module of the merged LoRA."""

    name: str
    sources: int  # how many inputs have it
    rank: int
    conv: bool  # a 3x3 convolution (LoCon)
    energy_kept: float  # share of the summed delta's squared Frobenius norm kept (1.0 when joined)
    discarded_norm: float


@dataclass
class MergeResult:
    tensors: dict[str, Any]
    modules: list[ModuleMerge]


@dataclass
class MergeReport:
    """What `merge_lora_files` wrote; `summary_lines()` is what the command line prints."""

    save_to: Path
    file_bytes: int
    models: list[str]
    ratios: list[float]
    modules: list[ModuleMerge]
    by_svd: bool

    def summary_lines(self, verbose: bool = False) -> list[str]:
        inputs = ", ".join(f"{r:g} x {Path(m).name}" for m, r in zip(self.models, self.ratios))
        ranks = rank_span(m.rank for m in self.modules)
        lines = [f"merged {len(self.models)} LoRAs ({inputs}) into {len(self.modules)} modules of rank {ranks}"]
        partial = sum(m.sources < len(self.models) for m in self.modules)
        if partial:
            lines.append(f"{partial} modules are in only some of the LoRAs; they are merged from those")
        if self.by_svd:
            worst = min(self.modules, key=lambda m: m.energy_kept)
            mean = sum(m.energy_kept for m in self.modules) / len(self.modules)
            lines.append(f"energy kept by the SVD: {mean:.2%} on average, {worst.energy_kept:.2%} at least "
                         f"({worst.name})")
        else:
            lines.append("ranks joined: the merged deltas are the exact ratio-weighted sums")
        if verbose:
            width = max(len(m.name) for m in self.modules)
            lines += [f"  {m.name:{width}}  from {m.sources}  rank {m.rank:<4} kept {m.energy_kept:7.2%}"
                      for m in self.modules]
        lines.append(f"saved {self.save_to} ({self.file_bytes / 2**20:.1f} MiB)")
        return lines


def merge_loras(loras: list[dict[str, Any]], ratios: list[float], new_rank: int | None = None,
                new_conv_rank: int | None = None, dtype: Any = None, names: list[str] | None = None) -> MergeResult:
    """The LoRA whose every delta is sum(ratio_i * delta_i), joined exactly or (new_rank) by SVD.

    new_conv_rank (3x3 convolutions) defaults to new_rank; a module's rank never exceeds the sum
    of its inputs' ranks. `names` name the inputs in errors; `dtype` is the output's (None: float32).
    """
    names = names or [f"LoRA {i + 1}" for i in range(len(loras))]
    check_merge_counts(len(loras), ratios)
    if new_rank is None and new_conv_rank is not None:
        raise ToolError("--new_conv_rank needs --new_rank (without it the ranks are joined exactly)")
    grouped = [group_lora_tensors(tensors) for tensors in loras]
    _check_layouts(grouped, names)
    parts = _parts_by_module(grouped, ratios, names)
    if new_rank is not None:
        _check_ranks(parts, new_rank, new_conv_rank)
    out: dict[str, Any] = {}
    modules = []
    for name, sources in parts.items():
        tensors, merged = _merge_module(name, sources, new_rank, new_conv_rank, dtype)
        out.update(tensors)
        modules.append(merged)
    return MergeResult(out, modules)


def _merge_module(name: str, sources: list[tuple[float, LoraModuleTensors, str]], new_rank: int | None,
                  new_conv_rank: int | None, dtype: Any) -> tuple[dict[str, Any], ModuleMerge]:
    import torch

    up, down = _joined_factors(sources)
    shape = delta_shape(sources[0][1])
    conv = _is_3x3(sources[0][1])
    wanted = (new_conv_rank or new_rank) if conv else new_rank
    energy, discarded = 1.0, 0.0
    if wanted is not None:
        best = low_rank(None, min(wanted, down.shape[0]), factors=product_svd(up, down), shape=shape)
        up, down, energy, discarded = best.up, best.down, best.energy_kept, best.discarded_norm
    rank, dtype = int(down.shape[0]), dtype or torch.float32
    tensors = {f"{name}.{DOWN}": down.to(dtype).contiguous(), f"{name}.{UP}": up.to(dtype).contiguous(),
               f"{name}.{ALPHA}": torch.tensor(float(rank), dtype=dtype)}  # scale 1: the factors carry it all
    return tensors, ModuleMerge(name, len(sources), rank, conv, energy, discarded)


def check_merge_counts(models: int, ratios: list[float] | None) -> None:
    if models < 1:
        raise ToolError("give the LoRAs to merge with --models A.safetensors B.safetensors")
    if ratios is not None and len(ratios) != models:
        raise ToolError(f"{models} models but {len(ratios)} ratios; give one --ratios value per model")


def _parts_by_module(grouped: list[dict[str, LoraModuleTensors]], ratios: list[float],
                     names: list[str]) -> dict[str, list[tuple[float, LoraModuleTensors, str]]]:
    """module name -> [(ratio, its tensors, input name)], in the order of first appearance; shapes must agree."""
    parts: dict[str, list[tuple[float, LoraModuleTensors, str]]] = {}
    for modules, ratio, source in zip(grouped, ratios, names):
        for name, module in modules.items():
            found = parts.setdefault(name, [])
            if found and delta_shape(found[0][1]) != delta_shape(module):
                raise ToolError(f"'{name}' is {list(delta_shape(found[0][1]))} in {found[0][2]} but "
                                f"{list(delta_shape(module))} in {source}; merge LoRAs of one model family")
            found.append((float(ratio), module, source))
    return parts


def _check_layouts(grouped: list[dict[str, LoraModuleTensors]], names: list[str]) -> None:
    seen: dict[str, str] = {}
    for modules, source in zip(grouped, names):
        for layout, prefixes in _LAYOUTS.items():
            if any(name.startswith(prefixes) for name in modules):
                seen.setdefault(layout, source)
    if len(seen) > 1:
        (first, a), (second, b) = seen.items()
        raise ToolError(f"{a} is an {first} LoRA but {b} is an {second} LoRA; merge LoRAs of one model family")


def _check_ranks(parts: dict, new_rank: int, new_conv_rank: int | None) -> None:
    """A rank above every module's joined rank adds nothing: say so, as resize does."""
    for flag, rank, conv in (("--new_rank", new_rank, False), ("--new_conv_rank", new_conv_rank, True)):
        if rank is None:
            continue
        if int(rank) < 1:
            raise ToolError(f"{flag} must be 1 or more, got {rank}")
        joined = [sum(m.rank for _, m, _ in sources) for sources in parts.values() if _is_3x3(sources[0][1]) == conv]
        if joined and rank > max(joined):
            raise ToolError(f"{flag} {rank} would not add anything: the LoRAs' ranks add up to {max(joined)} at most; "
                            f"pick {max(joined)} or less, or leave --new_rank out to join them exactly")


def _joined_factors(sources: list[tuple[float, LoraModuleTensors, str]]) -> tuple[Any, Any]:
    """up [out, sum r(,1,1)] and down [sum r, in(, kh, kw)] with up @ down = sum(ratio * scale * up_i @ down_i)."""
    import torch

    ups, downs = [], []
    for ratio, module, _ in sources:
        size = ratio * module.scale
        root = abs(size) ** 0.5
        ups.append(module.up.float() * root)
        downs.append(module.down.float() * (root if size >= 0 else -root))
    return torch.cat(ups, dim=1), torch.cat(downs, dim=0)


def _is_3x3(module: LoraModuleTensors) -> bool:
    return module.down.dim() == 4 and tuple(module.down.shape[2:]) != (1, 1)


def merge_lora_files(models: list[str | os.PathLike], ratios: list[float] | None, save_to: str | os.PathLike, *,
                     new_rank: int | None = None, new_conv_rank: int | None = None,
                     save_precision: str | None = None, overwrite: bool = False) -> MergeReport:
    """Merge the LoRA files `models` at `ratios` (default 1 each) into one LoRA file `save_to`."""
    check_merge_counts(len(models), ratios)
    ratios = [1.0] * len(models) if ratios is None else [float(r) for r in ratios]
    path = checked_output(save_to, list(models), overwrite)
    loaded = [load_plain_lora(model, "merge") for model in models]
    names = [Path(model).name for model in models]
    metadatas = [metadata for _, metadata in loaded]
    _check_base_models(metadatas, names)
    dtype = save_dtype(save_precision) if save_precision else _common_dtype([tensors for tensors, _ in loaded])
    result = merge_loras([tensors for tensors, _ in loaded], ratios, new_rank, new_conv_rank, dtype, names)
    metadata = merged_metadata(metadatas, names, ratios, result.modules, path, by_svd=new_rank is not None)
    save_lora_file(path, result.tensors, metadata)
    return MergeReport(path, path.stat().st_size, [str(m) for m in models], ratios, result.modules,
                       by_svd=new_rank is not None)


def _check_base_models(metadatas: list[dict[str, str]], names: list[str]) -> None:
    found = [(m["ss_base_model_version"], n) for m, n in zip(metadatas, names) if m.get("ss_base_model_version")]
    for version, name in found[1:]:
        if version != found[0][0]:
            raise ToolError(f"{found[0][1]} is for {found[0][0]} but {name} for {version}; "
                            "merge LoRAs of one model family")


def _common_dtype(tensor_sets: list[dict[str, Any]]) -> Any:
    """The inputs' float dtype when they share one (two fp16 LoRAs merge to fp16), else float32."""
    import torch

    dtypes = {t.dtype for tensors in tensor_sets for k, t in tensors.items() if not k.endswith(ALPHA)}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def merged_metadata(metadatas: list[dict[str, str]], names: list[str], ratios: list[float],
                    modules: list[ModuleMerge], save_to: Path, by_svd: bool) -> dict[str, str]:
    """A fresh minimal ss_* set, as sd-scripts' merges write, plus what the inputs agree on and where it came from."""
    linear = [m for m in modules if not m.conv] or modules
    conv = [m for m in modules if m.conv]
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": one_or_dynamic(m.rank for m in linear),
        "ss_network_alpha": one_or_dynamic(float(m.rank) for m in linear),
    }
    for key in ("ss_v2", "ss_base_model_version"):
        value = _agreed(metadatas, key)
        if value is not None:
            metadata[key] = value
    if conv:
        metadata["ss_network_args"] = json.dumps({"conv_dim": one_or_dynamic(m.rank for m in conv),
                                                  "conv_alpha": one_or_dynamic(m.rank for m in conv)})
    how = "by SVD" if by_svd else "with joined ranks"
    metadata["ss_training_comment"] = f"merged {how} from " + ", ".join(f"{n} x {r:g}" for n, r in zip(names, ratios))
    for key in _MODELSPEC_KEPT:
        value = _agreed(metadatas, f"modelspec.{key}")
        if value is not None:
            metadata[f"modelspec.{key}"] = value
    if "modelspec.sai_model_spec" in metadata:  # a model-spec set: complete it as sd-scripts does
        titles = [m.get("modelspec.title") or Path(n).stem for m, n in zip(metadatas, names)]
        metadata["modelspec.title"] = save_to.stem
        metadata["modelspec.date"] = datetime.fromtimestamp(int(time.time())).isoformat()
        metadata["modelspec.merged_from"] = ", ".join(titles)
    return metadata


def _agreed(metadatas: list[dict[str, str]], key: str) -> str | None:
    values = {m[key] for m in metadatas if key in m}
    return values.pop() if len(values) == 1 else None
