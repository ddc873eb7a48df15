"""Make images with a base model and LoRAs: diffusers pipelines built from a BaseModel.

LoRA files are merged into the base weights for the duration of a request (`apply_loras`) and
restored afterwards, bit for bit; `<lora:name:0.8>` tags in a prompt add more. Prompts are
encoded by `models.text.encode_prompts`, the same code training uses (clip_skip included), and
handed to the pipeline as embeddings. Every PNG carries A1111's `parameters` text.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from lorasmith.errors import ToolError
from lorasmith.events import EventSink, Message, Progress, ignore_events
from lorasmith.models.base import BaseModel
from lorasmith.sampling.lora_tags import extract_lora_tags, resolve_lora
from lorasmith.sampling.pnginfo import GenerationParameters, save_png
from lorasmith.sampling.prompts import DEFAULT_CFG, DEFAULT_SIZE, DEFAULT_STEPS, SamplePrompt
from lorasmith.sampling.samplers import make_scheduler, sampler_label

LoraSource = tuple[Any, float]  # (path or kohya tensors, weight)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt's images. A seed of None (or below 0) draws one; image i of a batch uses seed + i."""

    prompt: str
    negative_prompt: str = ""
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    steps: int = DEFAULT_STEPS
    cfg_scale: float = DEFAULT_CFG
    seed: int | None = None
    sampler: str = "euler_a"
    batch_size: int = 1
    clip_skip: int = 1
    guidance: float | None = None  # Flux.1 dev's distilled guidance; None: 3.5 (cfg_scale is true CFG)

    def __post_init__(self) -> None:
        # Checked here, before any model is loaded: diffusers would fail deep inside with a traceback.
        from lorasmith.sampling.samplers import SAMPLER_TABLE

        for name, value in (("width", self.width), ("height", self.height)):
            if value < 8 or value % 8:
                raise ToolError(f"{name} must be a multiple of 8 (e.g. 512), got {value}")
        for name, value in (("steps", self.steps), ("batch_size", self.batch_size)):
            if value < 1:
                raise ToolError(f"{name} must be 1 or more, got {value}")
        if self.sampler not in SAMPLER_TABLE:
            raise ToolError(f"unknown sampler '{self.sampler}'; use one of {', '.join(SAMPLER_TABLE)}")


@dataclass
class GeneratedImage:
    image: Any  # PIL.Image
    parameters: GenerationParameters
    path: Path | None = None


@dataclass
class GenerationResult:
    """What `api.generate` returns: the pictures (for a GUI gallery), the saved files, the parameters."""

    images: list  # PIL images
    paths: list[Path]  # empty when nothing was saved
    parameters: list[GenerationParameters]

    @classmethod
    def of(cls, made: list[GeneratedImage]) -> "GenerationResult":
        return cls([m.image for m in made], [m.path for m in made if m.path is not None], [m.parameters for m in made])


def make_pipeline(base: BaseModel, sampler: str = "euler_a") -> Any:
    """A diffusers text-to-image pipeline sharing `base`'s modules (no copy, no safety checker)."""
    with _quiet_transformers():
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = make_scheduler(sampler, base.noise_scheduler)
    if base.family.name == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=base.vae, text_encoder=base.text_encoders[0], text_encoder_2=base.text_encoders[1],
            tokenizer=base.tokenizers[0], tokenizer_2=base.tokenizers[1], unet=base.unet, scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(
            vae=base.vae, text_encoder=base.text_encoders[0], tokenizer=base.tokenizers[0], unet=base.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)  # progress goes through our events
    return pipe


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Importing the pipelines makes transformers warn about torchvision for the safety checker's image
    processors, which we never use; those lines only puzzled users of generate and grid."""
    from transformers.utils import logging as transformers_logging

    before = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(before)


def generate_images(base: BaseModel, requests: list[GenerationRequest], loras: list[LoraSource] = (),
                    lora_dirs: list[str | os.PathLike] = (), events: EventSink = ignore_events,
                    output_dir: str | os.PathLike | None = None, file_stem: str = "image",
                    precision: str = "no") -> list[GeneratedImage]:
    """Images for each request with `loras` (and the prompt's <lora:...> tags) merged in.

    With `output_dir`, each image is saved as `<file_stem>_<nnnnn>_<seed>.png`, numbered on from
    the images already there (as A1111 does), so a second run never replaces the first's.
    `precision` ("fp16"/"bf16") turns on autocast on a GPU; a CPU always computes in float32.
    """
    total = sum(r.batch_size for r in requests)
    results: list[GeneratedImage] = []
    first = next_image_number(output_dir, file_stem) if output_dir is not None else 0
    for request in requests:
        prompt, tags = extract_lora_tags(request.prompt)
        chosen = _with_tags(list(loras), tags, lora_dirs)
        request = replace(request, prompt=prompt, seed=_seed(request.seed))
        with merged_loras(base, chosen):
            images = run_pipeline(base, request, precision)
        hashes = lora_hashes(chosen)
        for index, image in enumerate(images):
            params = parameters_for(base, request, request.seed + index, hashes)
            item = GeneratedImage(image, params)
            if output_dir is not None:
                name = f"{file_stem}_{first + len(results):05d}_{request.seed + index}.png"
                item.path = save_png(image, Path(output_dir) / name, params)
            results.append(item)
            events(Progress("generate", len(results), total))
    return results


def next_image_number(folder: str | os.PathLike, file_stem: str) -> int:
    """One more than the highest `<file_stem>_<nnnnn>_*.png` number in `folder` (0 when none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    pattern = re.compile(rf"^{re.escape(file_stem)}_(\d{{5,}})_")
    numbers = [int(match.group(1)) for path in folder.glob("*.png") if (match := pattern.match(path.name))]
    return max(numbers, default=-1) + 1


def check_prompt_loras(prompt: str, loras: list[LoraSource], lora_dirs: list[str | os.PathLike]) -> None:
    """Find the prompt's <lora:name> files now, so that a missing one fails before a model loads."""
    _with_tags(list(loras), extract_lora_tags(prompt)[1], lora_dirs)


def sample_during_training(base: BaseModel, prompts: list[SamplePrompt], output_dir: str | os.PathLike,
                           output_name: str, epoch: int, step: int, sampler: str = "euler_a",
                           clip_skip: int = 1, network_scale_fn: Callable[[float], None] | None = None,
                           events: EventSink = ignore_events) -> list[Path]:
    """The trainer's samples, with its LoRA layers active as they are (nothing is merged).

    Files: `<output_dir>/sample/<output_name>_e000002_s000100_00.png` (epoch, step, prompt index).
    A prompt without --d gets its index as seed, so every epoch's sample is comparable.
    `network_scale_fn`, when given, is called with 1.0 first: samples show the LoRA at full strength.
    """
    if network_scale_fn is not None:
        network_scale_fn(1.0)
    folder = Path(output_dir) / "sample"
    written = []
    for index, item in enumerate(prompts):
        prompt, tags = extract_lora_tags(item.prompt)
        if tags:
            events(Message(f"sample prompt {index + 1}: <lora:...> tags are ignored while training", "warning"))
        request = GenerationRequest(prompt, item.negative_prompt, item.width, item.height, item.steps,
                                    item.cfg_scale, index if item.seed is None else item.seed,
                                    item.sampler or sampler, 1, clip_skip, item.guidance)
        image = run_pipeline(base, request)[0]
        path = folder / sample_file_name(output_name, epoch, step, index)
        written.append(save_png(image, path, parameters_for(base, request, request.seed, {})))
        events(Progress("samples", index + 1, len(prompts)))
    return written


def sample_file_name(output_name: str, epoch: int, step: int, index: int) -> str:
    return f"{output_name}_e{epoch:06d}_s{step:06d}_{index:02d}.png"


def run_pipeline(base: BaseModel, request: GenerationRequest, precision: str = "no") -> list:
    """PIL images of one request, by the family's own pipeline."""
    from lorasmith.families import family_behaviour

    return family_behaviour(base.family).run_pipeline(base, request, precision)


def run_unet_pipeline(base: BaseModel, request: GenerationRequest, precision: str = "no") -> list:
    """PIL images of one SD request (seeded generators, eval mode, our prompt encoding)."""
    import torch

    pipe = make_pipeline(base, request.sampler)
    generators = [torch.Generator("cpu").manual_seed(request.seed + i) for i in range(request.batch_size)]
    with eval_mode(base), torch.no_grad(), _autocast(base, precision):
        embeddings = _embeddings(base, request)
        output = pipe(num_inference_steps=request.steps, guidance_scale=request.cfg_scale, width=request.width,
                      height=request.height, num_images_per_prompt=request.batch_size, generator=generators,
                      output_type="pil", **embeddings)
    return list(output.images)


def _embeddings(base: BaseModel, request: GenerationRequest) -> dict:
    """Prompts past 75 tokens are read in windows of 75, as AUTOMATIC1111 and ComfyUI read them in
    chunks; both prompts get as many windows as the longer needs (CFG takes them side by side)."""
    from lorasmith.models.text import encode_prompts, windows_needed

    length = 75 * windows_needed(base, [request.prompt, request.negative_prompt])
    positive, negative = (encode_prompts(base, [text], request.clip_skip, length)
                          for text in (request.prompt, request.negative_prompt))
    embeddings = {"prompt_embeds": positive.context, "negative_prompt_embeds": negative.context}
    if base.family.name == "sdxl":
        embeddings.update(pooled_prompt_embeds=positive.pooled, negative_pooled_prompt_embeds=negative.pooled)
    return embeddings


@contextlib.contextmanager
def eval_mode(base: BaseModel) -> Iterator[None]:
    """Modules in eval mode (no dropout) for sampling; the trainer gets its train mode back."""
    modules = [base.unet, base.vae, *base.text_encoders]
    before = [module.training for module in modules]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for module, was_training in zip(modules, before):
            module.train(was_training)


def _autocast(base: BaseModel, precision: str) -> Any:
    import torch

    device = next(base.unet.parameters()).device
    # float32 on the CPU unless the model is held in half precision: there it is slow and lossy
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision) if device.type == "cuda" else None
    unet_dtype = next(base.unet.parameters()).dtype
    dtype = dtype or (unet_dtype if unet_dtype != torch.float32 else None)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


@contextlib.contextmanager
def merged_loras(base: BaseModel, loras: list[LoraSource]) -> Iterator[None]:
    """`loras` merged into `base` inside the block; the original weights come back afterwards."""
    if not loras:
        yield
        return
    from lorasmith.network.apply import apply_loras

    applied = apply_loras(base, loras)
    try:
        yield
    finally:
        applied.restore()


def _with_tags(loras: list[LoraSource], tags: list[tuple[str, float]],
               lora_dirs: list[str | os.PathLike]) -> list[LoraSource]:
    """The given LoRAs plus the prompt's tags; a tag naming a given file sets that file's weight."""
    places = list(lora_dirs) + [source for source, _ in loras if not isinstance(source, dict)]
    chosen = list(loras)
    for name, weight in tags:
        path = resolve_lora(name, places)
        same = [i for i, (source, _) in enumerate(chosen) if not isinstance(source, dict)
                and Path(source).resolve() == path.resolve()]
        if same:
            chosen[same[0]] = (chosen[same[0]][0], weight)
        else:
            chosen.append((path, weight))
    return chosen


def lora_hashes(loras: list[LoraSource]) -> dict[str, str]:
    """A1111's 'Lora hashes': file stem -> first 12 hex digits of its sshs_model_hash."""
    from lorasmith.network.files import model_hashes, read_lora_metadata

    hashes = {}
    for source, _ in loras:
        if isinstance(source, dict):
            continue
        path = Path(source)
        digest = read_lora_metadata(path).get("sshs_model_hash") or model_hashes(path.read_bytes())[0]
        hashes[path.stem] = digest[:12]
    return hashes


def parameters_for(base: BaseModel, request: GenerationRequest, seed: int, hashes: dict[str, str]) -> GenerationParameters:
    extra = {"Model hash": base.info["sd_model_hash"]} if base.info.get("sd_model_hash") else {}
    return GenerationParameters(
        prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
        sampler=sampler_label(request.sampler), cfg_scale=request.cfg_scale, seed=seed, width=request.width,
        height=request.height, model=Path(base.name).stem if base.name else "",
        clip_skip=1 if base.family.name == "sdxl" else request.clip_skip,  # SDXL ignores clip_skip
        lora_hashes=hashes, extra=extra)


def _seed(seed: int | None) -> int:
    return secrets.randbelow(2**32) if seed is None or seed < 0 else int(seed)
