"""`lora resize`: a LoRA at a lower rank, each module's delta replaced by its best low-rank approximation.

As sd-scripts' resize_lora.py: per module the delta (alpha/rank) * up @ down is factored by SVD
and truncated to the new rank, or to the rank a dynamic rule picks (at most the new rank). The
alpha/rank ratio is kept (new alpha = scale * new rank) so the file reads alike in every loader,
and the factors carry the rest: the new delta is exactly the truncated SVD. Unlike sd-scripts,
the SVD is that of the rank-r product (`svd.product_svd`: same result, seconds instead of
minutes), and a new rank above the source rank is refused instead of padded with zeros.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorasmith.errors import ToolError
from lorasmith.network.apply import delta_shape
from lorasmith.network.files import load_lora_file, save_dtype, save_lora_file
from lorasmith.network.kohya_tensors import ALPHA, DOWN, UP, LoraModuleTensors, group_lora_tensors
from lorasmith.tools.lora.outputs import checked_output
from lorasmith.tools.lora.svd import DYNAMIC_METHODS, dynamic_rank, low_rank, product_svd


@dataclass
class ModuleResize:
    """What resizing did to one module."""

    name: str
    old_rank: int
    new_rank: int
    new_alpha: float
    conv: bool  # a 3x3 convolution (LoCon), which takes new_conv_rank
    energy_kept: float  # share of the delta's squared Frobenius norm that is kept (1.0 = lossless)
    discarded_norm: float  # Frobenius norm of what is dropped: the new delta's error


@dataclass
class ResizeResult:
    tensors: dict[str, Any]  # kohya tensors of the resized LoRA
    modules: list[ModuleResize]


@dataclass
class ResizeReport:
    """What `resize_lora_file` wrote; `summary_lines()` is what the command line prints."""

    save_to: Path
    file_bytes: int
    modules: list[ModuleResize]
    dynamic: str | None  # e.g. "sv_fro 0.9", None for a fixed rank

    def summary_lines(self, verbose: bool = False) -> list[str]:
        old = rank_span(m.old_rank for m in self.modules)
        new = rank_span(m.new_rank for m in self.modules)
        how = f" by {self.dynamic}" if self.dynamic else ""
        worst = min(self.modules, key=lambda m: m.energy_kept)
        mean = sum(m.energy_kept for m in self.modules) / len(self.modules)
        lines = [f"resized {len(self.modules)} modules from rank {old} to {new}{how}",
                 f"energy kept: {mean:.2%} on average, {worst.energy_kept:.2%} at least ({worst.name})"]
        if verbose:
            width = max(len(m.name) for m in self.modules)
            lines += [f"  {m.name:{width}}  rank {m.old_rank:>3} -> {m.new_rank:<3}  alpha {m.new_alpha:g}  "
                      f"kept {m.energy_kept:7.2%}  error {m.discarded_norm:.3g}" for m in self.modules]
        lines.append(f"saved {self.save_to} ({self.file_bytes / 2**20:.1f} MiB)")
        return lines


def check_resize_options(new_rank: int, new_conv_rank: int | None, dynamic_method: str | None,
                         dynamic_param: float | None) -> None:
    """The checks that need no file, so that a wrong flag is said before anything loads."""
    for flag, rank in (("--new_rank", new_rank), ("--new_conv_rank", new_conv_rank)):
        if rank is not None and int(rank) < 1:
            raise ToolError(f"{flag} must be 1 or more, got {rank}")
    if dynamic_method is None and dynamic_param is not None:
        raise ToolError(f"--dynamic_param needs --dynamic_method ({', '.join(DYNAMIC_METHODS)})")
    if dynamic_method is not None:
        if dynamic_method not in DYNAMIC_METHODS:
            raise ToolError(f"unknown --dynamic_method '{dynamic_method}'; use one of: {', '.join(DYNAMIC_METHODS)}")
        if dynamic_param is None:
            raise ToolError(f"--dynamic_method {dynamic_method} needs --dynamic_param (the target it keeps)")
        import torch

        dynamic_rank(torch.ones(1), dynamic_method, float(dynamic_param), 1)  # its range check names the flag


def resize_lora(tensors: dict[str, Any], new_rank: int, new_conv_rank: int | None = None,
                dynamic_method: str | None = None, dynamic_param: float | None = None,
                dtype: Any = None) -> ResizeResult:
    """The LoRA `tensors` at `new_rank` (3x3 convolutions at `new_conv_rank`).

    new_conv_rank None: each 3x3 module keeps min(new_rank, its rank). With a dynamic method,
    new_rank is the cap and may exceed the source rank. `dtype` is the output's (None: the input's).
    """
    check_resize_options(new_rank, new_conv_rank, dynamic_method, dynamic_param)
    modules = group_lora_tensors(tensors)
    caps = {name: _cap(name, m, new_rank, new_conv_rank, dynamic_method) for name, m in modules.items()}
    out: dict[str, Any] = {}
    report = []
    for name, module in modules.items():  # every rank is checked before the first SVD
        alpha_dtype = dtype or tensors.get(f"{name}.{ALPHA}", module.down).dtype
        resized, (down, up, alpha) = _resize_module(name, module, caps[name], dynamic_method, dynamic_param,
                                                    alpha_dtype)
        out[f"{name}.{DOWN}"] = down.to(dtype or module.down.dtype).contiguous()
        out[f"{name}.{UP}"] = up.to(dtype or module.up.dtype).contiguous()
        out[f"{name}.{ALPHA}"] = alpha
        report.append(resized)
    return ResizeResult(out, report)


def _cap(name: str, module: LoraModuleTensors, new_rank: int, new_conv_rank: int | None,
         dynamic_method: str | None) -> int:
    """The highest rank this module may get; a fixed rank above its own is refused."""
    is_conv = _is_3x3(module)
    wanted = new_conv_rank if is_conv else new_rank
    if wanted is None:
        return module.rank
    if dynamic_method is None and wanted > module.rank:
        flag = "--new_conv_rank" if is_conv else "--new_rank"
        raise ToolError(f"'{name}' has rank {module.rank}; {flag} {wanted} would not add anything, "
                        f"pick {module.rank} or less")
    return min(int(wanted), module.rank)


def _resize_module(name: str, module: LoraModuleTensors, cap: int, method: str | None, param: float | None,
                   alpha_dtype: Any) -> tuple[ModuleResize, tuple[Any, Any, Any]]:
    import torch

    factors = product_svd(module.up.float() * module.scale, module.down.float())  # S in delta units
    rank = cap if method is None else dynamic_rank(factors[1], method, float(param), cap)
    best = low_rank(None, rank, factors=factors, shape=delta_shape(module))
    # alpha is stored in the file's dtype: the scale it really gives is folded into up, so that
    # the loader's (alpha / rank) * up @ down is the truncated delta whatever the rounding.
    alpha = torch.tensor(module.scale * best.rank, dtype=alpha_dtype)
    scale = float(alpha) / best.rank
    up = best.up / scale if scale else best.up
    resized = ModuleResize(name, module.rank, best.rank, float(alpha), _is_3x3(module),
                           best.energy_kept, best.discarded_norm)
    return resized, (best.down, up, alpha)


def _is_3x3(module: LoraModuleTensors) -> bool:
    return module.down.dim() == 4 and tuple(module.down.shape[2:]) != (1, 1)


def resize_lora_file(model: str | os.PathLike, save_to: str | os.PathLike, new_rank: int, *,
                     new_conv_rank: int | None = None, dynamic_method: str | None = None,
                     dynamic_param: float | None = None, save_precision: str | None = None,
                     overwrite: bool = False) -> ResizeReport:
    """Resize the LoRA file `model` and save it to `save_to` (sd-scripts' resize_lora.py arguments)."""
    check_resize_options(new_rank, new_conv_rank, dynamic_method, dynamic_param)
    dtype = save_dtype(save_precision) if save_precision else None
    path = checked_output(save_to, [model], overwrite)
    tensors, metadata = load_plain_lora(model, "resize")
    result = resize_lora(tensors, new_rank, new_conv_rank, dynamic_method, dynamic_param, dtype)
    dynamic = f"{dynamic_method} {dynamic_param:g}" if dynamic_method else None
    save_lora_file(path, result.tensors, resized_metadata(metadata, result.modules, new_rank, dynamic))
    return ResizeReport(path, path.stat().st_size, result.modules, dynamic)


def resized_metadata(metadata: dict[str, str], modules: list[ModuleResize], new_rank: int,
                     dynamic: str | None) -> dict[str, str]:
    """The input's metadata with the keys sd-scripts' resize updates: dim, alpha, a note in the comment."""
    updated = {k: v for k, v in metadata.items() if not k.startswith("sshs_")}  # save_lora_file hashes again
    comment = metadata.get("ss_training_comment", "")
    old = max(m.old_rank for m in modules)
    if dynamic:
        updated["ss_training_comment"] = f"Dynamic resize with {dynamic.replace(' ', ': ')} from {old}; {comment}"
        updated["ss_network_dim"] = updated["ss_network_alpha"] = "Dynamic"
        return updated
    conv = [m for m in modules if m.conv]
    linear = [m for m in modules if not m.conv]
    conv_ranks = {m.new_rank for m in conv}
    conv_note = f" (conv: {rank_span(conv_ranks)})" if conv_ranks and conv_ranks != {new_rank} else ""
    updated["ss_training_comment"] = f"dimension is resized from {old} to {new_rank}{conv_note}; {comment}"
    updated["ss_network_dim"] = str(new_rank)
    updated["ss_network_alpha"] = one_or_dynamic(m.new_alpha for m in linear or modules)
    if conv and "ss_network_args" in metadata:
        updated["ss_network_args"] = _conv_args(metadata["ss_network_args"], conv)
    return updated


def _conv_args(network_args: str, conv: list[ModuleResize]) -> str:
    """ss_network_args with conv_dim/conv_alpha of the resized 3x3 modules (sd-scripts leaves them stale)."""
    try:
        args = json.loads(network_args)
    except ValueError:
        return network_args
    if not isinstance(args, dict) or "conv_dim" not in args:
        return network_args
    args["conv_dim"] = one_or_dynamic(m.new_rank for m in conv)
    # As sd-scripts' command line gives it ("conv_alpha=4"): whole numbers without ".0".
    args["conv_alpha"] = one_or_dynamic(int(m.new_alpha) if m.new_alpha.is_integer() else m.new_alpha for m in conv)
    return json.dumps(args)


def one_or_dynamic(values) -> str:
    """The one value as text, or "Dynamic" where they differ (sd-scripts' word in ss_network_dim/alpha)."""
    found = set(values)
    return str(found.pop()) if len(found) == 1 else "Dynamic"


def rank_span(values) -> str:
    """"8" or "4-8": the ranks of a set of modules, for a summary line."""
    found = sorted(set(values))
    return str(found[0]) if len(found) == 1 else f"{found[0]}-{found[-1]}"


# LyCORIS module classes -> the words for them.
_LYCORIS_KINDS = {
    "LohaModule": "a LyCORIS LoHa",
    "LokrModule": "a LyCORIS LoKr",
    "LoConModule": "a LyCORIS LoCon with Tucker or DoRA weights",
    "IA3Module": "a LyCORIS iA3",
    "GLoRAModule": "a LyCORIS GLoRA",
    "FullModule": "a LyCORIS full-weight difference",
    "NormModule": "a LyCORIS norm-layer network",
    "DiagOFTModule": "an OFT network",
    "ButterflyOFTModule": "a BOFT network",
}


def load_plain_lora(path: str | os.PathLike, tool: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a kohya LoRA/LoCon file; a LyCORIS file is refused with its kind named."""
    from lorasmith.network.deltas import module_deltas

    tensors, metadata = load_lora_file(path)
    algo = next((m.algo for m in module_deltas(tensors).values() if m.algo != "lora"), None)
    if algo is not None:
        kind = _LYCORIS_KINDS.get(algo, f"a LyCORIS {algo.removesuffix('Module')}")
        raise ToolError(f"'{path}' is {kind}; {tool} works on LoRA/LoCon files (networks.lora)")
    return tensors, metadata
