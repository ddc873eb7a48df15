"""Where the weight of each layer a LoRA can touch is stored in a checkpoint, by names alone.

The LoRA tools that work on whole checkpoints (merge into a checkpoint, extract) read and write
the checkpoint's own tensors one at a time instead of loading the model. This module builds
the map kohya module name -> (file, tensor name, part of the tensor) from the family's configs
with the modules on the meta device (no weights): the layers are enumerated as `key_table`
does (norm layers included, which LyCORIS' train_norm changes; biases too, for the kinds that
change them) and each layer's diffusers path is renamed with `ldm_layout`, the same tables that
convert whole models, so the map fits the real SD1.x/SD2.x/SDXL checkpoints and the tiny ones.

Only OpenCLIP (SD2's text encoder, SDXL's second) needs more than a rename: it stores q, k
and v fused in `attn.in_proj_weight`, so q_proj/k_proj/v_proj each own a third of its rows,
and it keeps `text_projection` transposed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorasmith.errors import ModelError
from lorasmith.models.families import FAMILIES, Family
from lorasmith.network.kohya_keys import UNET, component_names, kohya_key, lora_host_modules

SINGLE_FILE, DIFFUSERS = "single_file", "diffusers"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_FUSED_ROWS = {"q_proj": 0, "k_proj": 1, "v_proj": 2}  # OpenCLIP's in_proj order


@dataclass(frozen=True)
class Slot:
    """Where one layer's weight is stored: a tensor of a file, or a block of its rows."""

    file: str  # relative to the checkpoint folder; "" for a single file
    key: str  # the tensor's name in that file
    shape: tuple[int, ...]  # the layer's weight shape, which a LoRA delta has
    stored: tuple[int, ...]  # the stored tensor's shape
    rows: tuple[int, int] | None = None  # q/k/v inside OpenCLIP's fused in_proj_weight
    transposed: bool = False  # OpenCLIP's text_projection: stored as P where a Linear holds P.T

    def _region(self, tensor: Any) -> Any:
        region = tensor[self.rows[0]:self.rows[1]] if self.rows else tensor
        return region.T if self.transposed else region

    def weight(self, tensor: Any) -> Any:
        """The layer's weight inside the stored `tensor`, in the layer's shape."""
        return self._region(tensor).reshape(self.shape)

    def put(self, tensor: Any, weight: Any) -> None:
        """Write the layer's `weight` back into its place in the stored `tensor` (in place)."""
        region = self._region(tensor)
        region.copy_(weight.reshape(region.shape))


@dataclass
class CheckpointMap:
    """A checkpoint's layout: its family, weight files, and the slot of every LoRA-hostable layer."""

    path: Path
    family: Family
    layout: str  # SINGLE_FILE or DIFFUSERS
    v_prediction: bool | None  # None: the checkpoint does not say
    unet: Any  # the UNet on the meta device (for lora_targets)
    text_encoders: list  # the text encoders on the meta device
    files: list[str]  # every .safetensors file ("" for a single file)
    slots: dict[str, list[Slot]]  # kohya module name -> its weight's slots (diffusers variants: one per file)
    bias_slots: dict[str, list[Slot]]  # kohya module name -> its bias's slots, for layers with one

    def file_path(self, file: str) -> Path:
        return self.path / file if file else self.path

    def slot(self, name: str) -> Slot | None:
        found = self.slots.get(name)
        return found[0] if found else None


def checkpoint_map(path: str | Path) -> CheckpointMap:
    """The map of a single .safetensors checkpoint (original layout) or a diffusers folder."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"checkpoint '{path}' does not exist; check the path")
    if path.is_dir():
        return _folder_map(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(f"'{path.name}' is a pickle checkpoint, which can run code when read; "
                         "convert it to .safetensors first")
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"'{path.name}' is not a .safetensors checkpoint or a diffusers folder; give one of those")
    return _single_file_map(path)


def _single_file_map(path: Path) -> CheckpointMap:
    from lorasmith.models.configs import shipped_config
    from lorasmith.models.detect import family_from_tensors
    from lorasmith.models.tensor_files import SafetensorsFile

    with SafetensorsFile(path) as file:
        shapes, metadata = file.shapes(), file.metadata()
    name, details = family_from_tensors(shapes, metadata, path.name)
    _refuse_flux(name, path)
    family = FAMILIES[name]
    configs = details["configs"]
    if not configs:  # a real checkpoint: the family's shipped architecture
        configs = {part: shipped_config(name, part) for part in _parts(family)}
        if details.get("in_channels"):  # inpainting models take 9 channels
            configs["unet"]["in_channels"] = details["in_channels"]
    unet, encoders = meta_modules(family, configs)
    weights, biases = file_slots(family, unet, encoders, SINGLE_FILE, "", shapes)
    v_prediction = configs.get("v_prediction", details.get("v_prediction"))
    return CheckpointMap(path, family, SINGLE_FILE, v_prediction, unet, encoders, [""],
                         _lists(weights), _lists(biases))


def _refuse_flux(family: str, path: Path) -> None:
    if family == "flux":
        raise ModelError(f"{path.name} is a Flux.1 model: merging LoRAs into a Flux checkpoint is not built yet "
                         "(SD1/SD2/SDXL only); apply the LoRA at load time instead (ComfyUI, lorasmith generate)")


def _folder_map(path: Path) -> CheckpointMap:
    from lorasmith.models.detect import detect_diffusers_folder
    from lorasmith.models.tensor_files import SafetensorsFile

    name, details = detect_diffusers_folder(path)
    _refuse_flux(name, path)
    family = FAMILIES[name]
    unet, encoders = meta_modules(family, details["configs"])
    weights: dict[str, list[Slot]] = {}
    biases: dict[str, list[Slot]] = {}
    for component, part in zip(component_names(family), ("unet", *_parts(family)[2:])):
        for file in _weight_files(path, part):
            with SafetensorsFile(path / file) as handle:
                shapes = handle.shapes()
            found = file_slots(family, unet, encoders, DIFFUSERS, file, shapes, component)
            for table, slots in zip((weights, biases), found):
                for kohya, slot in slots.items():
                    table.setdefault(kohya, []).append(slot)
    files = [f.relative_to(path).as_posix() for f in sorted(path.rglob("*.safetensors"))]
    return CheckpointMap(path, family, DIFFUSERS, details.get("v_prediction"), unet, encoders, files, weights, biases)


def _lists(slots: dict[str, Slot]) -> dict[str, list[Slot]]:
    return {name: [slot] for name, slot in slots.items()}


def _parts(family: Family) -> tuple[str, ...]:
    return ("unet", "vae", *("text_encoder", "text_encoder_2")[: len(family.text_encoder_prefixes)])


def _weight_files(folder: Path, part: str) -> list[str]:
    """The .safetensors files of one part of a diffusers folder (several for shards or variants)."""
    found = sorted((folder / part).glob("*.safetensors"))
    if not found:
        if any((folder / part).glob("*.bin")):
            raise ModelError(f"{folder / part} holds its weights as pickles (.bin), which can run code when read; "
                             "convert the model to .safetensors first")
        raise ModelError(f"{folder / part} holds no .safetensors weights; give a complete diffusers model folder")
    return [f"{part}/{f.name}" for f in found]


def meta_modules(family: Family, configs: dict) -> tuple[Any, list]:
    """The UNet and text encoders of `configs`, built on the meta device (no memory, no init)."""
    from lorasmith.models.empty import empty_weights
    from lorasmith.models.load import diffusers_model_from_config, text_model_from_config

    with empty_weights():
        unet = diffusers_model_from_config("UNet2DConditionModel", configs["unet"])
        encoders = [text_model_from_config(configs[part], index)
                    for index, part in enumerate(_parts(family)[2:])]
    return unet, encoders


# --- names -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    """A layer and the names its weight may be stored under (the first one present wins)."""

    name: str  # kohya module name
    keys: tuple[str, ...]
    shape: tuple[int, ...]
    has_bias: bool
    rows_of: int | None = None  # 0, 1, 2: q, k, v in OpenCLIP's fused in_proj
    transposed: bool = False


def file_slots(family: Family, unet: Any, text_encoders: list, layout: str, file: str, shapes: dict,
               component: str | None = None) -> tuple[dict[str, Slot], dict[str, Slot]]:
    """(weights, biases): kohya module name -> slot, in one file with these tensor `shapes`.

    A diffusers file holds one `component`; a single file holds them all (component None).
    """
    weights, biases = {}, {}
    for place in _places(family, unet, text_encoders, layout, component):
        key = next((k for k in place.keys if k in shapes), None)
        if key is None:
            continue
        rows = (place.rows_of * place.shape[0], (place.rows_of + 1) * place.shape[0]) \
            if place.rows_of is not None else None
        slot = Slot(file, key, place.shape, tuple(shapes[key]), rows, place.transposed)
        if not _fits(slot):
            continue
        weights[place.name] = slot
        bias = key.removesuffix("weight") + "bias"
        if place.has_bias and not place.transposed and bias in shapes:
            bias_slot = Slot(file, bias, (place.shape[0],), tuple(shapes[bias]), rows)
            if _fits(bias_slot):
                biases[place.name] = bias_slot
    return weights, biases


def _places(family: Family, unet: Any, text_encoders: list, layout: str, component: str | None) -> list[_Place]:
    unet_config = dict(unet.config)
    modules = dict(zip(component_names(family), [unet, *text_encoders]))
    places = []
    for part, module in modules.items():
        if component is not None and part != component:
            continue
        for path, layer in lora_host_modules(module, norms=True):
            try:
                name = kohya_key(family, part, path, unet_config)
                keys, rows_of, transposed = _stored_names(family, part, module, path, layout, unet_config)
            except (ValueError, KeyError):
                continue  # not nameable in this layout: no file stores it so
            places.append(_Place(name, keys, tuple(layer.weight.shape), getattr(layer, "bias", None) is not None,
                                 rows_of, transposed))
    return places


def _stored_names(family: Family, component: str, module: Any, path: str, layout: str,
                  unet_config: dict) -> tuple[tuple[str, ...], int | None, bool]:
    """(candidate names of the layer's weight, which third of a fused in_proj, transposed)."""
    from lorasmith.models.ldm_layout import (
        TEXT_ENCODER_LAYOUT,
        UNET_PREFIX,
        open_clip_param_name_to_ldm,
        unet_module_name_to_ldm,
    )

    if component == UNET:
        if layout == DIFFUSERS:
            return (f"{path}.weight",), None, False
        return (f"{UNET_PREFIX}{unet_module_name_to_ldm(path, unet_config)}.weight",), None, False
    # Files keep transformers' `text_model.` level; old ones and transformers 5's own saves do not.
    param = f"{path}.weight" if hasattr(module, "text_model") else f"text_model.{path}.weight"
    names = (param, param.removeprefix("text_model."))
    if layout == DIFFUSERS:
        return names, None, False
    kind, prefix = TEXT_ENCODER_LAYOUT[family.name][component_names(family).index(component) - 1]
    if kind == "clip":
        return tuple(prefix + n for n in names), None, False
    key = open_clip_param_name_to_ldm(param)
    rows_of = _FUSED_ROWS.get(param.rsplit(".", 2)[-2]) if ".attn.in_proj_" in key else None
    return (prefix + key,), rows_of, key == "text_projection"


def _fits(slot: Slot) -> bool:
    """The stored tensor (or its block of rows) holds exactly the layer's weight."""
    import math

    if slot.rows is None:
        return math.prod(slot.stored) == math.prod(slot.shape)
    height = slot.rows[1] - slot.rows[0]
    return bool(slot.stored) and slot.stored[0] >= slot.rows[1] and \
        height * math.prod(slot.stored[1:]) == math.prod(slot.shape)


class CheckpointReader:
    """Reads layers' weights from a checkpoint, one stored tensor at a time.

    The last stored tensor is kept, since q, k and v of OpenCLIP come from the same one.
    """

    def __init__(self, checkpoint: CheckpointMap):
        self.checkpoint = checkpoint
        self._files: dict[str, Any] = {}
        self._last: tuple[tuple[str, str], Any] | None = None

    def weight(self, name: str) -> Any:
        """The weight of the layer kohya calls `name`, in the layer's shape and the stored dtype."""
        from lorasmith.models.tensor_files import SafetensorsFile

        slot = self.checkpoint.slot(name)
        if slot is None:
            raise ModelError(f"{self.checkpoint.path.name} has no weight for the layer '{name}'; "
                             f"give a complete {self.checkpoint.family.title} checkpoint")
        where = (slot.file, slot.key)
        if self._last is None or self._last[0] != where:
            if slot.file not in self._files:
                self._files[slot.file] = SafetensorsFile(self.checkpoint.file_path(slot.file))
            self._last = (where, self._files[slot.file][slot.key])
        return slot.weight(self._last[1])

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()
        self._last = None

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
