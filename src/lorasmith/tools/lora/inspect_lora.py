"""`lora inspect`: what a LoRA file is and who will load it, read from its header.

Shapes come from the safetensors header (`get_slice(k).get_shape()`), so no weight is read but the
alphas (one number each): a 1 GB file inspects as fast as a small one. The report gives the family
and base model, the key format, the network type of each module (LoRA, LoCon, DoRA, LoHa, LoKr, ...),
rank and alpha per UNet block, the trained parts, the training metadata (sd-scripts' ss_* keys) and
the verdict of AUTOMATIC1111, ComfyUI and diffusers on its keys (`consumers.py`).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorasmith.errors import ModelError, ToolError
from lorasmith.tools.lora.consumers import (
    DIFFUSERS,
    KOHYA,
    Architecture,
    Verdict,
    judge,
    key_format,
    match_architecture,
)
from lorasmith.tools.lora.convert import adapter_configs, config_alpha, network_name, peft_parts

TOP_TAGS = 10
_BASE_KEYS = {"ss_base_model_version": "version", "ss_sd_model_name": "name", "ss_sd_model_hash": "hash",
              "ss_new_sd_model_hash": "sha256", "modelspec.architecture": "modelspec", "modelspec.title": "title",
              "modelspec.date": "date"}
_TRAINING_KEYS = {"ss_resolution": "resolution", "ss_learning_rate": "learning rate", "ss_unet_lr": "unet lr",
                  "ss_text_encoder_lr": "text encoder lr", "ss_optimizer": "optimizer", "ss_lr_scheduler": "scheduler",
                  "ss_network_module": "network module", "ss_network_dim": "network dim",
                  "ss_network_alpha": "network alpha", "ss_network_args": "network args",
                  "ss_num_train_images": "images", "ss_training_comment": "comment"}
_BLOCK = re.compile(r"(down_blocks|input_blocks|mid_block|middle_block|up_blocks|output_blocks)(?:_(\d+))?")
_BLOCK_ORDER = {"down_blocks": 1, "input_blocks": 1, "mid_block": 2, "middle_block": 2, "up_blocks": 3,
                "output_blocks": 3}


@dataclass
class Header:
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str]
    scalars: dict[str, float]  # the alphas' values


@dataclass
class Module:
    name: str  # kohya module name, or peft module name ("unet.down_blocks.0.….to_q")
    network: str  # "LoRA", "LoCon", "DoRA", "LoHa", ...
    rank: int | None
    alpha: float | None
    kind: str  # of the layer: "linear", "conv 1x1", "conv 3x3", or "?" when nothing tells
    shapes: tuple | None  # (down, up) of a LoRA-like module, to match it to a layer

    @property
    def conv(self) -> bool:  # a convolution larger than 1x1 (LoCon's conv_dim)
        return self.kind.startswith("conv") and self.kind != "conv 1x1"


@dataclass
class BlockRow:
    block: str  # "text encoder 1", "down 0", "input 4", "mid", ...
    modules: int
    rank: str  # "4", or "2/4" when they differ
    alpha: str


@dataclass
class LoraReport:
    file: str
    size_bytes: int
    tensors: int
    dtypes: list[str]
    file_hash: str | None  # sshs_model_hash: sha256 of the tensors, as A1111 and model sites show it
    key_format: str  # "kohya", "LyCORIS", "diffusers-peft", "unknown"
    family: str | None
    architecture: str | None  # the model it was matched to: "sdxl", "sdxl-tiny"
    base_model: dict[str, str]
    network_types: dict[str, dict[str, int]]  # network type -> layer kind -> modules
    parts: list[str]  # "UNet", "text encoder 1", ..., "conv layers"
    blocks: list[BlockRow]
    trigger_words: list[tuple[str, int]]  # the most frequent tags of ss_tag_frequency
    training: dict[str, str]
    consumers: list[Verdict]
    unrecognised: list[str] = field(default_factory=list)  # modules or keys that name no layer

    def to_dict(self) -> dict:
        found = asdict(self)
        found["consumers"] = [{**asdict(v), "skipped": v.skipped[:20], "skipped_count": len(v.skipped),
                               "line": v.line()} for v in self.consumers]
        return found

    def lines(self) -> list[str]:
        dtypes = ", ".join(self.dtypes)
        lines = [f"file: {self.file} ({self.size_bytes / 2**20:.1f} MiB, {self.tensors} tensors, {dtypes})"
                 + (f", hash {self.file_hash[:12]}" if self.file_hash else ""),
                 f"family: {self.family or 'unknown'}" + (f" (architecture {self.architecture})"
                                                           if self.architecture else ""),
                 f"key format: {self.key_format}"]
        if self.base_model:
            lines.append("base model: " + ", ".join(f"{k} {v}" for k, v in self.base_model.items()))
        lines.append(f"network: {_types_text(self.network_types)}")
        lines.append("trained: " + (", ".join(self.parts) or "nothing recognised"))
        if self.blocks:
            width = max(len(r.block) for r in self.blocks + [BlockRow("block", 0, "", "")])
            lines.append(f"  {'block':{width}}  modules  rank  alpha")
            lines += [f"  {r.block:{width}}  {r.modules:>7}  {r.rank:>4}  {r.alpha:>5}" for r in self.blocks]
        if self.trigger_words:
            lines.append("trigger words: " + ", ".join(f"{t} ({n})" for t, n in self.trigger_words))
        lines += [f"{k}: {v}" for k, v in self.training.items()]
        if self.unrecognised:
            lines.append(f"unrecognised: {len(self.unrecognised)} ({', '.join(self.unrecognised[:3])}"
                         f"{', ...' if len(self.unrecognised) > 3 else ''})")
        lines.append("loads in:")
        lines += [f"  {v.consumer:13}  {v.line()}" for v in self.consumers]
        return lines


def _types_text(types: dict[str, dict[str, int]]) -> str:
    """"LoRA x79 (linear 66, conv 1x1 13), LoCon x18 (conv 3x3 18)"."""
    each = []
    for network, kinds in types.items():
        each.append(f"{network} x{sum(kinds.values())} ({', '.join(f'{k} {n}' for k, n in kinds.items())})")
    return ", ".join(each) or "none"


def read_header(path: str | os.PathLike) -> Header:
    """Tensor shapes, dtypes and metadata from the header, and the alpha values (a few bytes each)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ToolError(f"LoRA file '{path}' does not exist; check the path")
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise ToolError(f"'{path}' is a pickle file; inspect reads .safetensors LoRAs only (it never unpickles)")
    try:
        with safe_open(str(path), framework="pt") as file:
            slices = {k: file.get_slice(k) for k in file.keys()}
            shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
            scalars = {k: float(file.get_tensor(k).float().reshape(-1)[0]) for k in shapes
                       if k.endswith(".alpha") and len(shapes[k]) <= 1}
            return Header(shapes, {k: s.get_dtype() for k, s in slices.items()}, dict(file.metadata() or {}), scalars)
    except Exception as error:  # safetensors raises several kinds for files that are not its own
        raise ToolError(f"'{path}' is not a safetensors file ({type(error).__name__}); "
                        "pick a .safetensors LoRA") from None


def inspect_lora(path: str | os.PathLike) -> LoraReport:
    """The report on a LoRA file (kohya, LyCORIS or diffusers/peft keys), from its header."""
    header = read_header(path)
    form = key_format(header.shapes)
    modules, odd = (_kohya_modules(header) if form == KOHYA else _peft_modules(header) if form == DIFFUSERS
                    else ({}, sorted(header.shapes)))
    arch, missing = _architecture(modules, form, header)
    if arch is not None:  # the layer says what a LyCORIS module's tensors cannot: its kind
        table = arch.by_kohya if form == KOHYA else arch.by_peft
        for name in set(modules) - set(missing):
            modules[name].kind = layer_kind(table[name].shape)
    types = _network_types(modules.values())
    layered = [m for n, m in modules.items() if n not in missing]
    in_metadata = form == DIFFUSERS and not any(k.endswith(".alpha") for k in header.shapes)  # peft: no .alpha
    metadata_alphas = {n: (m.rank, m.alpha) for n, m in modules.items() if in_metadata and m.rank}
    return LoraReport(
        file=str(path), size_bytes=Path(path).stat().st_size, tensors=len(header.shapes),
        dtypes=sorted(set(header.dtypes.values())), file_hash=header.metadata.get("sshs_model_hash"),
        key_format=_format_name(form, types), family=arch.family.name if arch else None,
        architecture=arch.name if arch else None, base_model=_pick(header.metadata, _BASE_KEYS),
        network_types=types, parts=_parts(layered, arch), blocks=_blocks(layered, arch),
        trigger_words=trigger_words(header.metadata), training=_training(header.metadata),
        consumers=judge(header.shapes, arch, metadata_alphas), unrecognised=sorted(missing) + odd)


def _network_types(modules) -> dict[str, dict[str, int]]:
    """network type -> layer kind -> modules, the most used type first."""
    types: dict[str, Counter] = {}
    for module in sorted(modules, key=lambda m: m.name):
        types.setdefault(module.network, Counter())[module.kind] += 1
    return {t: dict(kinds.most_common()) for t, kinds in sorted(types.items(), key=lambda item: -item[1].total())}


def _format_name(form: str, types: dict) -> str:
    if form == DIFFUSERS:
        return "diffusers-peft"
    if form == KOHYA:
        return "kohya" if set(types) - {"unknown"} <= {"LoRA", "LoCon"} else "LyCORIS"
    return form


def _kohya_modules(header: Header) -> tuple[dict[str, Module], list[str]]:
    import torch

    from lorasmith.network.deltas import module_deltas

    parts: dict[str, dict[str, Any]] = {}
    for key, shape in header.shapes.items():
        name, _, suffix = key.partition(".")
        parts.setdefault(name, {})[suffix] = torch.empty(shape, device="meta")
    modules = {}
    for name, tensors in parts.items():
        try:
            algo = module_deltas({f"{name}.{s}": t for s, t in tensors.items()})[name].algo
        except ModelError:
            algo = "unknown"
        rank = _rank({s: tuple(t.shape) for s, t in tensors.items()})
        alpha = header.scalars.get(f"{name}.alpha", float(rank) if algo == "lora" else None)
        down, up = tensors.get("lora_down.weight"), tensors.get("lora_up.weight")
        shapes = (tuple(down.shape), tuple(up.shape)) if down is not None and up is not None else None
        kind = layer_kind(shapes[0]) if shapes else "?"
        modules[name] = Module(name, network_name(algo, tensors), rank, alpha, kind, shapes)
    return modules, []


def layer_kind(shape: tuple[int, ...]) -> str:
    """"linear" or "conv KxK", from a weight's shape (or a lora_down's: the same trailing dimensions)."""
    return f"conv {shape[2]}x{shape[3]}" if len(shape) == 4 else "linear"


def _rank(shapes: dict[str, tuple[int, ...]]) -> int | None:
    for suffix in ("lora_down.weight", "hada_w1_b", "lokr_w2_b", "lokr_w1_b", "a1.weight"):
        if suffix in shapes:
            return int(shapes[suffix][0])
    return None


def _peft_modules(header: Header) -> tuple[dict[str, Module], list[str]]:
    parts, odd = peft_parts(header.shapes)  # the shapes travel as the values
    configs, modules = adapter_configs(header.metadata), {}
    for name, found in parts.items():
        down, up = found.get("down", ()), found.get("up", ())
        rank = int(down[0]) if down else None
        alpha = next((header.scalars[k] for k in (f"{name}.alpha", f"{name.replace('.text_model.', '.', 1)}.alpha")
                      if k in header.scalars), None)
        if alpha is None and rank:
            alpha = config_alpha(configs.get(name.split(".")[0]), name.split(".", 1)[1], rank)
        kind = layer_kind(down) if down else "?"
        network = "DoRA" if "dora" in found else "LoCon" if kind not in ("linear", "conv 1x1") else "LoRA"
        modules[name] = Module(name, network, rank, alpha, kind, (down, up) if down and up else None)
    return modules, odd


def _architecture(modules: dict[str, Module], form: str, header: Header) -> tuple[Architecture | None, list[str]]:
    if not modules:
        return None, []
    arch, missing = match_architecture({n: m.shapes for n, m in modules.items()}, form, header.metadata)
    return (None, sorted(modules)) if len(missing) == len(modules) else (arch, missing)


def _label(name: str, arch: Architecture | None) -> tuple[tuple, str]:
    """(sort key, block label) of a module."""
    flat = name.replace(".", "_")
    te = re.match(r"(lora_te[12]?|text_encoder_2|text_encoder)_", flat)
    if te:
        sdxl = arch is not None and arch.family.name == "sdxl"
        label = {"lora_te": "text encoder", "lora_te1": "text encoder 1", "lora_te2": "text encoder 2",
                 "text_encoder": "text encoder 1" if sdxl else "text encoder", "text_encoder_2": "text encoder 2"}
        return (0, te[1]), label[te[1]]
    block = _BLOCK.match(flat.removeprefix("lora_unet_").removeprefix("unet_"))
    if not block:
        return (4, 0), "unet (other)"
    kind, index = block[1], block[2]
    words = {"down_blocks": "down", "input_blocks": "input", "up_blocks": "up", "output_blocks": "output"}
    if kind in ("mid_block", "middle_block"):
        return (2, 0), "mid" if kind == "mid_block" else "middle"
    return (_BLOCK_ORDER[kind], int(index or 0)), f"{words[kind]} {index}"


def _blocks(modules, arch: Architecture | None) -> list[BlockRow]:
    groups: dict[tuple, tuple[str, list[Module]]] = {}
    for module in modules:
        order, label = _label(module.name, arch)
        groups.setdefault(order, (label, []))[1].append(module)
    return [BlockRow(label, len(found), _span(m.rank for m in found), _span(m.alpha for m in found))
            for _, (label, found) in sorted(groups.items())]


def _span(values) -> str:
    found = sorted({v for v in values if v is not None})
    return "/".join(f"{v:g}" for v in found) or "-"


def _parts(modules, arch: Architecture | None) -> list[str]:
    labels = {_label(m.name, arch)[1] for m in modules}
    parts = ["UNet"] if any(not label.startswith("text encoder") for label in labels) else []
    parts += sorted(label for label in labels if label.startswith("text encoder"))
    convs = [m for m in modules if m.conv]
    return parts + ([f"conv layers ({len(convs)} modules, rank {_span(m.rank for m in convs)})"] if convs else [])


def trigger_words(metadata: dict[str, str], top: int = TOP_TAGS) -> list[tuple[str, int]]:
    """The most frequent tags over all folders of ss_tag_frequency ({folder: {tag: count}})."""
    try:
        folders = json.loads(metadata.get("ss_tag_frequency") or "{}")
        counts: Counter = Counter()
        for tags in folders.values():
            for tag, count in tags.items():
                counts[tag.strip()] += int(count)
    except (ValueError, AttributeError, TypeError):
        return []  # written by some other tool in some other shape: no trigger words to show
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]


def _pick(metadata: dict[str, str], keys: dict[str, str]) -> dict[str, str]:
    return {label: metadata[key] for key, label in keys.items() if metadata.get(key) not in (None, "", "None")}


def _training(metadata: dict[str, str]) -> dict[str, str]:
    found = {}
    for label, keys in (("epochs", ("ss_epoch", "ss_num_epochs")), ("steps", ("ss_steps", "ss_max_train_steps"))):
        values = [metadata[k] for k in keys if metadata.get(k) not in (None, "", "None")]
        if values:
            found[label] = " of ".join(values)
    return {**found, **_pick(metadata, _TRAINING_KEYS)}
