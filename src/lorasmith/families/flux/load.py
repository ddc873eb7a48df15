"""Load Flux.1 offline: a BFL single file (bf16 or float8_e4m3fn, any prefix) with its AE, CLIP-L and T5-XXL
files (sd-scripts' `ae`, `clip_l`, `t5xxl`), or a diffusers folder.

Memory: every module is built on the meta device and assigned the tensors as they are read, each cast
to `dtype` on the way (`SafetensorsFile`), so peak memory stays about one copy of the model in `dtype`.
The fused BFL tensors (q, k, v and the single blocks' MLP) are split into copies one at a time, so no
two parameters share storage (a later `save_pretrained` refuses shared tensors). Architectures are the
shipped configs with every size read from the tensors' shapes (`detect.py`); nothing is fetched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorasmith.errors import ModelError
from lorasmith.families.flux import detect
from lorasmith.families.flux.keys import iter_bfl_to_diffusers
from lorasmith.models.base import BaseModel
from lorasmith.models.configs import shipped_config
from lorasmith.models.detect import CONFIGS_METADATA_KEY
from lorasmith.models.families import FLUX, Family
from lorasmith.models.hashes import legacy_hash
from lorasmith.models.quiet import no_library_progress_bars
from lorasmith.models.tensor_files import SafetensorsFile
from lorasmith.models.tokenizer import clip_tokenizer, t5_tokenizer

VaeReady = Callable[[Any, Family], None]
MODEL_KEY = "pretrained_model_name_or_path"
PARTS = ("ae", "clip_l", "t5xxl")
_TITLES = {"ae": "the Flux AE", "clip_l": "CLIP-L", "t5xxl": "T5-XXL"}
_FILES = {"ae": "the Flux AE file", "clip_l": "a CLIP-L file", "t5xxl": "a T5-XXL encoder file"}
_EXAMPLES = {"ae": "ae.safetensors", "clip_l": "clip_l.safetensors", "t5xxl": "t5xxl_fp16.safetensors"}
_FOLDERS = {"ae": "vae", "clip_l": "text_encoder", "t5xxl": "text_encoder_2"}  # diffusers subfolder per part


@dataclass
class _Part:
    """One model's tensors in an open file: `prefix` comes before its own names; `key` named the file."""

    file: SafetensorsFile
    prefix: str
    key: str

    @property
    def name(self) -> str:
        return self.file.path.name

    def names(self) -> dict[str, str]:
        return {k[len(self.prefix):]: k for k in self.file if k.startswith(self.prefix)}

    def shapes(self) -> dict[str, tuple]:
        shapes = self.file.shapes()
        return {bare: shapes[full] for bare, full in self.names().items()}

    def tensors(self) -> _Renamed:
        return _Renamed(self.file, self.names())

    def metadata_config(self, part: str) -> dict:
        """What lorasmith wrote in the file's `lorasmith.configs` about `part` (sizes no shape tells)."""
        text = self.file.metadata().get(CONFIGS_METADATA_KEY)
        try:
            return dict(json.loads(text).get(part) or {}) if text else {}
        except (json.JSONDecodeError, AttributeError):
            raise ModelError(f"{self.name}: the '{CONFIGS_METADATA_KEY}' metadata is not valid; "
                             f"set {self.key} = a file saved again") from None


class _Renamed(Mapping):
    """A lazy view of a file under other names (read on access)."""

    def __init__(self, tensors: Mapping, names: dict[str, str]):
        self._tensors, self._names = tensors, names

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._tensors[self._names[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def load_flux_model(
    path: str | Path, *, ae: str | Path | None = None, clip_l: str | Path | None = None,
    t5xxl: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    vae_ready: VaeReady | None = None,
) -> BaseModel:
    """Load the Flux.1 model at `path` (a single file or a diffusers folder) with its AE and text encoders.

    `ae`, `clip_l`, `t5xxl`: separate files; a single file needs them unless it holds them itself, and
    a folder's own parts give way to them. The AE loads first: `vae_ready(vae, FLUX)` gets it on
    `device` before the transformer and the text encoders load.
    """
    source = Path(path)
    if not source.exists():
        raise ModelError(f"Flux model not found: {source}; check the path ({MODEL_KEY})")
    given = {part: Path(value) for part, value in (("ae", ae), ("clip_l", clip_l), ("t5xxl", t5xxl)) if value}

    def on_vae(vae: Any) -> None:
        if vae_ready is not None:
            vae_ready(vae.to(device), FLUX)

    with ExitStack() as files, no_library_progress_bars():
        parts = {part: _part_file(files, file, part, dtype) for part, file in given.items()}
        if source.is_dir():
            base = _load_folder(source, parts, dtype, on_vae)
        else:
            base = _load_single_file(files, source, parts, dtype, on_vae)
    if torch.device(device).type != "cpu":
        for module in (base.unet, base.vae, *base.text_encoders):
            module.to(device)
    return base


# --- single files ----------------------------------------------------------------------------------


def _open(files: ExitStack, path: Path, key: str, dtype: torch.dtype) -> SafetensorsFile:
    if not path.is_file():
        raise ModelError(f"{key} file not found: {path}; check the path ({key})")
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"{path.name} is not a .safetensors file; set {key} = a .safetensors file "
                         "(convert pickles first: they can run code when read)")
    return files.enter_context(SafetensorsFile(path, dtype))


def _dtypes(file: SafetensorsFile, key: str) -> dict[str, torch.dtype]:
    try:
        return {name: dtype for name, _, dtype in file.layout()}
    except KeyError as error:
        raise ModelError(f"{file.path.name} stores tensors as {error}, which lorasmith does not read; "
                         f"set {key} = its bf16/fp16 file") from None


def _part_file(files: ExitStack, path: Path, part: str, dtype: torch.dtype) -> _Part:
    """`part` ("ae", "clip_l", "t5xxl") in the file the user named for it, checked to be that part."""
    file = _open(files, path, part, dtype)
    prefix = detect.part_prefix(file.keys(), part)
    if prefix is None or (part == "ae" and file.shapes()[prefix + "decoder.conv_in.weight"][1] != FLUX.latent_channels):
        raise ModelError(f"{path.name} is {detect.describe(file.shapes())}, not {_TITLES[part]}; "
                         f"set {part} = {_FILES[part]} (e.g. {_EXAMPLES[part]})")
    dtypes = _dtypes(file, part)
    detect.refuse_float8_kinds({k: v for k, v in dtypes.items() if k.startswith(prefix)}, path.name, part)
    detect.refuse_scaled_float8(file.keys(), path.name, part)
    return _Part(file, prefix, part)


def _load_single_file(files: ExitStack, source: Path, parts: dict[str, _Part], dtype: torch.dtype,
                      on_vae: Callable[[Any], None]) -> BaseModel:
    model = _open(files, source, MODEL_KEY, dtype)
    shapes = model.shapes()
    layout = detect.flux_layout(shapes, _dtypes(model, MODEL_KEY), source.name)
    if layout is None:
        what = detect.describe(shapes)
        hint = f" and {k} = {source.name}" if (k := _part_named(what)) else ""
        raise ModelError(f"{source.name} is {what}, not a Flux.1 model; set {MODEL_KEY} = a Flux.1 checkpoint "
                         f"(e.g. flux1-dev.safetensors){hint}")
    detect.refuse_scaled_float8(shapes, source.name, MODEL_KEY)
    for part, prefix in layout.parts.items():  # an all-in-one file's own AE / text encoders
        parts.setdefault(part, _Part(model, prefix, MODEL_KEY))
    missing = [part for part in PARTS if part not in parts]
    if missing:
        titles = [{"ae": "AE"}.get(part, _TITLES[part]) for part in missing]
        what = titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]
        wanted = ", ".join(f"{part} = path/to/{_EXAMPLES[part]}" for part in missing)
        raise ModelError(f"Flux needs the {what} file{'s' if len(missing) > 1 else ''} beside {source.name}: "
                         f"set {wanted}")
    transformer = _Part(model, layout.prefix, MODEL_KEY)
    config = {**detect.transformer_config(transformer.shapes()), **transformer.metadata_config("transformer")}
    _check_fit(config, parts, source.name)
    vae = _load_ae(parts["ae"])
    on_vae(vae)
    unet = _assign(lambda: _diffusers_model("FluxTransformer2DModel", config), _transformer_state(transformer),
                   "transformer", transformer)
    encoders = [_load_clip(parts["clip_l"]), _load_t5(parts["t5xxl"])]
    files_used = {"model": str(source), **{p: str(parts[p].file.path) for p in PARTS}}
    info = {"layout": "single_file", "flux_variant": layout.variant, "sd_model_hash": legacy_hash(source),
            "float8": layout.float8, "files": files_used}
    return _assemble(source, unet, vae, encoders, [clip_tokenizer(FLUX.pad_tokens[0]), t5_tokenizer()], info)


def _part_named(what: str) -> str | None:
    return next((part for part, title in detect.PART_TITLES.items() if title == what), None)


def _check_fit(transformer_config: dict, parts: dict[str, _Part], model_name: str) -> None:
    """The text encoders' widths must be what the transformer takes: a wrong file fails here, before loading."""
    widths = {"clip_l": ("pooled_projection_dim", "embeddings.token_embedding.weight"),
              "t5xxl": ("joint_attention_dim", "shared.weight")}
    for part, (config_key, tensor) in widths.items():
        if part not in parts:
            continue
        shapes = parts[part].shapes()
        width = (shapes.get(tensor) or shapes.get("encoder.embed_tokens.weight"))[1]
        if width != transformer_config[config_key]:
            raise ModelError(f"{parts[part].name} is {width} wide but {model_name} takes {_TITLES[part]}'s "
                             f"{transformer_config[config_key]}; set {part} = {_FILES[part]} (e.g. {_EXAMPLES[part]})")


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor with storage of its own: a row slice of a fused tensor becomes a copy."""
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


def _transformer_state(part: _Part) -> Callable[[], dict]:
    def state() -> dict:
        return {name: _own(tensor) for name, tensor in iter_bfl_to_diffusers(part.tensors())}
    return state


def _load_ae(part: _Part) -> Any:
    from lorasmith.models.convert import vae_from_ldm

    shapes = part.shapes()
    config = {**detect.ae_config(shapes), **part.metadata_config("vae")}
    ldm = "encoder.down.0.block.0.conv1.weight" in shapes

    def state() -> dict:  # diffusers' converter turns the mid-block's 1x1 conv q/k/v/proj_out into linears
        tensors = part.tensors()
        return vae_from_ldm(tensors, config) if ldm else dict(tensors)

    return _assign(lambda: _diffusers_model("AutoencoderKL", config), state, "AE", part)


def _load_clip(part: _Part) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorasmith.models.convert import text_encoder_model_keys

    config = {**detect.clip_config(part.shapes()), **part.metadata_config("text_encoder")}
    holder: list = []

    def build() -> Any:
        holder.append(CLIPTextModel(CLIPTextConfig(**_plain(config))))
        return holder[0]

    def state() -> dict:  # "text_model.*" names as this transformers version spells CLIPTextModel's
        return text_encoder_model_keys(holder[0], {"text_model." + k: v for k, v in part.tensors().items()})

    return _assign(build, state, "CLIP-L", part)


def _load_t5(part: _Part) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = {**detect.t5_config(part.shapes()), **part.metadata_config("text_encoder_2")}
    embedding = ("shared.weight", "encoder.embed_tokens.weight")

    def state() -> dict:
        tensors = part.tensors()
        out = {name: tensors[name] for name in tensors if name not in embedding}
        shared = tensors[next(name for name in embedding if name in tensors)]  # one tensor, read once, for both
        return {**out, **dict.fromkeys(embedding, shared)}

    model = _assign(lambda: T5EncoderModel(T5Config(**_plain(config))), state, "T5-XXL", part)
    model.tie_weights()
    return model


def _plain(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("architectures", "model_type") and not k.startswith("_")}


def _diffusers_model(class_name: str, config: dict) -> Any:
    import diffusers

    return getattr(diffusers, class_name).from_config(config)


def _assign(build: Callable[[], Any], state: Callable[[], dict], what: str, part: _Part) -> Any:
    """Build on the meta device, then assign the tensors (no random initialisation, no second copy)."""
    from lorasmith.models.empty import empty_weights

    hint = f"set {part.key} = {_FILES.get(part.key, 'a complete Flux.1 checkpoint')}"
    try:
        with empty_weights():
            model = build()
        expected = model.state_dict()
        tensors = state()
    except (KeyError, IndexError, RuntimeError, ValueError, TypeError) as error:
        raise ModelError(f"the {what} tensors of {part.name} do not fit its architecture ({_first_line(error)}); "
                         f"{hint}") from None
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise ModelError(f"{part.name} lacks {len(missing)} {what} tensors (e.g. {missing[0]}); {hint}")
    wrong = [k for k, v in expected.items() if tuple(tensors[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise ModelError(f"the {what} of {part.name} has other shapes than expected ({k}: {tuple(tensors[k].shape)} "
                         f"vs {tuple(expected[k].shape)}); {hint}")
    model.load_state_dict({k: tensors[k] for k in expected}, strict=True, assign=True)
    return model.eval()


def _assemble(source: Path, unet, vae, encoders: list, tokenizers: list, info: dict) -> BaseModel:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return BaseModel(
        family=FLUX, v_prediction=False, unet=unet, vae=vae, text_encoders=encoders, tokenizers=tokenizers,
        noise_scheduler=FlowMatchEulerDiscreteScheduler.from_config(shipped_config("flux", "scheduler")),
        name=source.stem if source.is_file() else source.name, source=str(source), info=info,
    )


# --- diffusers folders -----------------------------------------------------------------------------


def _load_folder(source: Path, parts: dict[str, _Part], dtype: torch.dtype, on_vae: Callable[[Any], None]) -> BaseModel:
    details = detect.flux_folder(source)
    if details is None:
        raise ModelError(f"{source} is a folder but not a diffusers Flux.1 model (no model_index.json of a Flux "
                         f"pipeline, no transformer/config.json); set {MODEL_KEY} = a Flux.1 file or folder")
    for part, folder in {"transformer": "transformer", **_FOLDERS}.items():
        if part not in parts and not (source / folder).is_dir():
            set_file = f"set {part} = path/to/{_EXAMPLES[part]} or " if part in _EXAMPLES else ""
            raise ModelError(f"{source} has no {folder}/ folder; {set_file}give a complete Flux.1 folder")
    if "transformer" in details["configs"]:
        _check_fit(details["configs"]["transformer"], parts, source.name)
    vae = _load_ae(parts["ae"]) if "ae" in parts else _pretrained("AutoencoderKL", source / "vae", dtype)
    on_vae(vae)
    unet = _pretrained("FluxTransformer2DModel", source / "transformer", dtype)
    clip = _load_clip(parts["clip_l"]) if "clip_l" in parts else _pretrained("CLIPTextModel", source / "text_encoder",
                                                                             dtype)
    t5 = _load_t5(parts["t5xxl"]) if "t5xxl" in parts else _pretrained("T5EncoderModel", source / "text_encoder_2",
                                                                        dtype)
    files_used = {"model": str(source), **{p: str(parts[p].file.path if p in parts else source / _FOLDERS[p])
                                            for p in PARTS}}
    info = {"layout": "diffusers", "flux_variant": "dev" if unet.config.guidance_embeds else "schnell",
            "sd_model_hash": None, "float8": False, "files": files_used}
    return _assemble(source, unet, vae, [clip, t5], _folder_tokenizers(source), info)


def _pretrained(class_name: str, folder: Path, dtype: torch.dtype) -> Any:
    import diffusers
    import transformers

    try:
        if class_name in ("CLIPTextModel", "T5EncoderModel"):
            return getattr(transformers, class_name).from_pretrained(folder, dtype=dtype, local_files_only=True).eval()
        return getattr(diffusers, class_name).from_pretrained(folder, torch_dtype=dtype, local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelError(f"cannot load {folder} ({_first_line(error)}); check that the folder is complete") from None


def _first_line(error: Exception) -> str:
    """An exception's message as one line (a KeyError without its quotes)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _folder_tokenizers(source: Path) -> list:
    """CLIP's shipped tokenizer; T5's from the folder's tokenizer_2/ where it loads offline, else the shipped
    one (the same vocabulary)."""
    t5 = None
    if (source / "tokenizer_2").is_dir():
        from transformers import T5TokenizerFast

        try:
            t5 = T5TokenizerFast.from_pretrained(source / "tokenizer_2", local_files_only=True)
        except (OSError, ValueError, ImportError, TypeError):  # e.g. it needs sentencepiece to rebuild
            t5 = None
    return [clip_tokenizer(FLUX.pad_tokens[0]), t5 if t5 is not None else t5_tokenizer()]
