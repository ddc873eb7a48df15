"""Load a base model offline: single .safetensors files, diffusers folders and (if allowed) pickles.

Memory: modules are built on the meta device (no random initialisation), tensors are read one
at a time, cast to the target dtype and assigned into the modules (`load_state_dict(assign=True)`),
so peak memory stays about one copy of the model in the target dtype. Nothing is fetched from a
model hub: architectures come from the file's own `lorasmith.configs` metadata, the folder's
configs, or the configs that ship with lorasmith.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorasmith.errors import ModelError
from lorasmith.models import convert
from lorasmith.models.base import BaseModel
from lorasmith.models.configs import shipped_config
from lorasmith.models.detect import PICKLE_SUFFIXES, detect_family, family_from_tensors
from lorasmith.models.families import FAMILIES, Family
from lorasmith.models.hashes import legacy_hash
from lorasmith.models.quiet import no_library_progress_bars
from lorasmith.models.tensor_files import CastingDict, SafetensorsFile, load_pickle, refuse_pickle
from lorasmith.models.tiny import noise_scheduler_config
from lorasmith.models.tokenizer import clip_tokenizer

TEXT_ENCODER_PARTS = ("text_encoder", "text_encoder_2")
VaeReady = Callable[[Any, Family], None]  # called with the loaded VAE (on its device) and the model family


def load_base_model(
    path: str,
    *,
    family: str = "auto",
    v_parameterization: bool = False,
    allow_pickle: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    vae_ready: VaeReady | None = None,
    vae_path: str | None = None,
    ae: str | None = None,
    clip_l: str | None = None,
    t5xxl: str | None = None,
) -> BaseModel:
    """Load the SD1/SD2/SDXL checkpoint at `path`; `family` other than "auto" overrides detection.

    Flux.1 files and folders (detected, or `family="flux"`) go to `load_flux_model` with `ae`,
    `clip_l`, `t5xxl` (`vae_path` serves as `ae` when that is not given).

    v-prediction is on if `v_parameterization` is set or the checkpoint says so. The VAE loads
    first: `vae_ready(vae, family)` gets it on `device` before the UNet and text encoders load,
    so that a caller can start encoding images with it meanwhile. `vae_path`: a separate VAE
    file (original or diffusers names) used instead of the checkpoint's own.
    """
    source = Path(path)

    def on_vae(vae, fam: Family) -> None:
        if vae_ready is not None:
            vae_ready(vae.to(device), fam)
    if family != "auto" and family not in FAMILIES:
        raise ModelError(f"unknown model family '{family}'; use auto, {', '.join(FAMILIES)}")
    if not source.exists():
        raise ModelError(f"base model not found: {source}; check the path (pretrained_model_name_or_path)")
    if family == "flux" or (family == "auto" and _is_flux(source)):
        from lorasmith.families.flux.load import load_flux_model

        return load_flux_model(source, ae=ae or vae_path, clip_l=clip_l, t5xxl=t5xxl, dtype=dtype, device=device,
                               vae_ready=vae_ready)
    separate_vae = read_vae_file(Path(vae_path), dtype, allow_pickle) if vae_path else None
    if source.is_dir():
        base = _load_diffusers_folder(source, family, v_parameterization, allow_pickle, dtype, on_vae, separate_vae)
    elif source.suffix.lower() == ".safetensors":
        with SafetensorsFile(source, dtype) as checkpoint:
            detected, details = family_from_tensors(checkpoint.shapes(), checkpoint.metadata(), source.name)
            base = _from_checkpoint(checkpoint, source, family, detected, details, v_parameterization, on_vae,
                                    separate_vae)
    elif source.suffix.lower() in PICKLE_SUFFIXES:
        tensors = load_pickle(source, allow_pickle)
        detected, details = family_from_tensors({k: tuple(v.shape) for k, v in tensors.items()}, {}, source.name)
        base = _from_checkpoint(CastingDict(tensors, dtype), source, family, detected, details, v_parameterization,
                                on_vae, separate_vae)
        del tensors
    else:
        raise ModelError(f"{source.name}: unknown model file type; give a .safetensors or .ckpt file or a diffusers folder")
    _to_device(base, device)
    return base


def _is_flux(source: Path) -> bool:
    """A Flux.1 .safetensors file or diffusers folder (headers and configs only; pickles are never Flux here)."""
    if not (source.is_dir() or source.suffix.lower() == ".safetensors"):
        return False
    try:
        return detect_family(source)[0] == "flux"
    except ModelError:  # not a model we know: the SD path below says why
        return False


# --- single files ----------------------------------------------------------------------------


def _from_checkpoint(
    checkpoint: Mapping, source: Path, family: str, detected: str, details: dict, v_parameterization: bool,
    on_vae: VaeReady, separate_vae: SeparateVae | None = None,
) -> BaseModel:
    fam = FAMILIES[detected if family == "auto" else family]
    if details["configs"] and fam.name == detected:
        configs = details["configs"]
    else:  # a real checkpoint, or an override of the detected family
        configs = _shipped_configs(fam.name, details)
    where = f"{source.name} ({fam.title})"
    if separate_vae:
        vae = separate_vae.build(configs["vae"])
    else:
        vae = _materialize(
            lambda: diffusers_model_from_config("AutoencoderKL", configs["vae"]),
            lambda model: convert.vae_from_ldm(checkpoint, configs["vae"]), "VAE", where,
        )
    on_vae(vae, fam)
    unet = _materialize(
        lambda: diffusers_model_from_config("UNet2DConditionModel", configs["unet"]),
        lambda model: convert.unet_from_ldm(checkpoint, configs["unet"]), "UNet", where,
    )
    encoders = []
    for index, part in enumerate(TEXT_ENCODER_PARTS[: len(fam.pad_tokens)]):
        encoders.append(_materialize(
            lambda part=part, index=index: text_model_from_config(configs[part], index),
            lambda model, index=index: convert.text_encoder_model_keys(
                model, convert.text_encoder_from_ldm(checkpoint, fam.name, index, model)),
            f"text encoder {index + 1}", where,
        ))
    v_prediction = bool(v_parameterization or details.get("v_prediction"))
    return _assemble(fam, v_prediction, unet, vae, encoders, [clip_tokenizer(p) for p in fam.pad_tokens], source,
                     {"layout": "single_file", "sd_model_hash": legacy_hash(source)})


@dataclass
class SeparateVae:
    """The tensors of a VAE file given beside the checkpoint, built into the family's VAE when known."""

    name: str
    tensors: dict

    def build(self, vae_config: dict) -> Any:
        def diffusers_names(model: Any) -> dict:
            if any(key.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for key in self.tensors):
                return self.tensors  # saved from diffusers already
            return convert.vae_from_ldm(self.tensors, vae_config)  # the original layout, any prefix

        return _materialize(lambda: diffusers_model_from_config("AutoencoderKL", vae_config), diffusers_names,
                            "VAE", self.name)


def read_vae_file(path: Path, dtype: torch.dtype, allow_pickle: bool) -> SeparateVae:
    """A separate VAE file (.safetensors, or a pickle if allowed), its tensors in `dtype`."""
    if not path.is_file():
        raise ModelError(f"VAE file not found: {path}; check the path (vae)")
    if path.suffix.lower() == ".safetensors":
        with SafetensorsFile(path, dtype) as file:
            tensors = {key: file[key] for key in file}
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        tensors = dict(CastingDict(load_pickle(path, allow_pickle), dtype))
    else:
        raise ModelError(f"{path.name}: unknown VAE file type; give a .safetensors VAE file")
    if not any(".conv_in." in key and "encoder" in key for key in tensors):
        raise ModelError(f"{path.name} holds no VAE encoder (no encoder.conv_in tensors); give a VAE file")
    return SeparateVae(path.name, tensors)


def _shipped_configs(family: str, details: dict) -> dict:
    configs = {part: shipped_config(family, part) for part in ("unet", "vae", *TEXT_ENCODER_PARTS[:1])}
    if family == "sdxl":
        configs["text_encoder_2"] = shipped_config(family, "text_encoder_2")
    if details.get("in_channels"):  # inpainting models take 9 channels
        configs["unet"]["in_channels"] = details["in_channels"]
    return configs


def _materialize(build: Callable[[], Any], convert_state: Callable[[Any], dict], part: str, where: str) -> Any:
    """Build a module on the meta device, then assign it the converted tensors (no second copy)."""
    from lorasmith.models.empty import empty_weights

    with empty_weights():
        model = build()
    expected = model.state_dict()
    try:
        state = convert_state(model)
    except (KeyError, IndexError, RuntimeError, ValueError) as error:
        raise ModelError(f"the {part} tensors of {where} do not fit its architecture ({error}); check --family") from None
    state = {k: v for k, v in state.items() if k in expected}  # drop extras such as position_ids
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelError(
            f"{where} lacks {len(missing)} {part} tensors (e.g. {missing[0]}); give a complete checkpoint or check --family"
        )
    wrong = [k for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise ModelError(
            f"the {part} of {where} has other shapes than expected ({wrong[0]}: {tuple(state[wrong[0]].shape)} "
            f"vs {tuple(expected[wrong[0]].shape)}); check --family"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def diffusers_model_from_config(class_name: str, config: dict) -> Any:
    import diffusers

    return getattr(diffusers, class_name).from_config(config)


def text_model_from_config(config: dict, index: int) -> Any:
    """CLIP text encoder `index` (1: SDXL's second, with projection) built from a config dict."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_config = CLIPTextConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    return (CLIPTextModelWithProjection if index == 1 else CLIPTextModel)(text_config)


def _assemble(fam: Family, v_prediction: bool, unet, vae, encoders, tokenizers, source: Path, info: dict) -> BaseModel:
    from diffusers import DDPMScheduler

    return BaseModel(
        family=fam, v_prediction=v_prediction, unet=unet, vae=vae, text_encoders=encoders, tokenizers=tokenizers,
        noise_scheduler=DDPMScheduler(**noise_scheduler_config(v_prediction)),
        name=source.stem if source.is_file() else source.name, source=str(source), info=info,
    )


def _to_device(base: BaseModel, device: str | torch.device) -> None:
    if torch.device(device).type == "cpu":
        return
    for module in (base.unet, base.vae, *base.text_encoders):
        module.to(device)


# --- diffusers folders -----------------------------------------------------------------------


def _load_diffusers_folder(source: Path, family: str, v_parameterization: bool, allow_pickle: bool, dtype,
                           on_vae: VaeReady, separate_vae: SeparateVae | None = None) -> BaseModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    detected, details = detect_family(source)
    fam = FAMILIES[detected if family == "auto" else family]
    parts = ("unet", "vae", *TEXT_ENCODER_PARTS[: len(fam.pad_tokens)])
    for part in parts:
        if not (source / part).is_dir():
            raise ModelError(f"{source} has no {part}/ folder, which a {fam.title} model needs; give a complete model")
    options = {part: _weight_options(source / part, allow_pickle) for part in parts}
    with no_library_progress_bars():
        try:
            if separate_vae:
                vae = separate_vae.build(details["configs"]["vae"])
            else:
                vae = AutoencoderKL.from_pretrained(source / "vae", torch_dtype=dtype, local_files_only=True,
                                                    **options["vae"])
            on_vae(vae.eval(), fam)
            unet = UNet2DConditionModel.from_pretrained(source / "unet", torch_dtype=dtype, local_files_only=True,
                                                        **options["unet"])
            encoders = [_pretrained_text_model(source / part, index, dtype, options[part])
                        for index, part in enumerate(parts[2:])]
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelError(f"cannot load the diffusers model in {source} ({error}); check that the folder is "
                             "complete")
    tokenizers = [_folder_tokenizer(source, index, pad) for index, pad in enumerate(fam.pad_tokens)]
    v_prediction = bool(v_parameterization or details.get("v_prediction"))
    modules = [m.eval() for m in (unet, vae, *encoders)]
    return _assemble(fam, v_prediction, modules[0], modules[1], modules[2:], tokenizers, source,
                     {"layout": "diffusers", "sd_model_hash": None})


def _weight_options(folder: Path, allow_pickle: bool) -> dict:
    """from_pretrained options for the weights present: safetensors, an fp16 variant, or (if allowed) pickles."""
    names = [p.name for p in folder.iterdir()]
    safetensors = [n for n in names if n.endswith(".safetensors")]
    if safetensors:
        plain = [n for n in safetensors if n.count(".") == 1]
        return {"use_safetensors": True} if plain else {"use_safetensors": True, "variant": safetensors[0].split(".")[-2]}
    if any(n.endswith(".bin") for n in names):
        refuse_pickle(folder, allow_pickle)
        return {"use_safetensors": False}
    raise ModelError(f"{folder} holds no weights (.safetensors); download the model again")


def _pretrained_text_model(folder: Path, index: int, dtype, options: dict) -> Any:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if index == 1 else CLIPTextModel
    variant = {"variant": options["variant"]} if "variant" in options else {}
    return cls.from_pretrained(folder, dtype=dtype, local_files_only=True,
                               use_safetensors=options["use_safetensors"], **variant)


def _folder_tokenizer(source: Path, index: int, pad: str) -> Any:
    folder = source / ("tokenizer" if index == 0 else "tokenizer_2")
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    return clip_tokenizer(pad)
