"""The one library API that the command line and the GUI both call.

Each function takes typed arguments (a `TrainConfig`, paths, numbers), reports progress
through an `events.EventSink`, returns plain results and raises `LorasmithError` for user
mistakes. Heavy imports (torch, diffusers, onnxruntime) happen inside the functions so that
importing this module stays fast.
"""

from __future__ import annotations

from pathlib import Path

from lorasmith.config.checks import check_config
from lorasmith.config.schema import TrainConfig
from lorasmith.events import EventSink, Message, ignore_events

# --- configuration, datasets and the step plan ---


def load_datasets(config: TrainConfig, verify_images: bool = True):
    """Scan the training (and regularisation) folders; unreadable images fail all at once."""
    from lorasmith.dataset.scan import check_images_readable, scan_dataset

    train = scan_dataset(config.train_data_dir, config.caption_extension)
    reg = scan_dataset(config.reg_data_dir, config.caption_extension, is_reg=True) if config.reg_data_dir else None
    if verify_images:
        for dataset in (train, reg):
            if dataset is not None:
                check_images_readable(dataset)
    return train, reg


def base_architecture(config: TrainConfig) -> tuple[str, dict | None]:
    """(family, the checkpoint's own architecture configs or None) read without loading weights.

    'sd1' when nothing tells; a model it cannot read is no error here: training will say why.
    """
    family, configs = config.model_family, None
    path = config.pretrained_model_name_or_path
    if path and Path(path).expanduser().exists():
        try:
            from lorasmith.models.detect import detect_family

            detected, details = detect_family(str(Path(path).expanduser()))
        except Exception:  # the plan must work even for a model it cannot read
            detected, details = None, {}
        if family == "auto" and detected:
            family = detected
        if detected == family:
            configs = details.get("configs")
    return ("sd1" if family == "auto" else family), configs


def setting_lines(config: TrainConfig, given=None) -> tuple[list[str], list[str]]:
    """(lines for settings that lose to another, lines for settings lorasmith cannot honour).

    `given`: the keys the user set; None takes every key that differs from the default (a GUI form).
    """
    from lorasmith.config.losing import losing_settings, unhonoured_settings
    from lorasmith.config.sources import non_default_keys

    given = non_default_keys(config) if given is None else given
    known = config.model_family != "auto" or Path(config.pretrained_model_name_or_path or "/nonexistent").exists()
    family = base_architecture(config)[0] if known else None
    return losing_settings(config, given, family), unhonoured_settings(config)


def plan(config: TrainConfig, verify_images: bool = True, events: EventSink = ignore_events, given=None,
         memory: bool = False):
    """The step plan for a configuration: needs the folders and parameters, no model file.

    `memory`: add the VRAM planner's estimate at the data's largest bucket (seconds the first time)."""
    from lorasmith.dataset.plan import plan_steps
    from lorasmith.families import family_behaviour
    from lorasmith.models.families import get_family

    for warning in check_config(config, for_training=False):
        events(Message(warning, "warning"))
    losing, unhonoured = setting_lines(config, given)
    for line in losing:
        events(Message(line, "warning"))
    for line in unhonoured:
        events(Message(f"train will refuse: {line}", "warning"))
    train, reg = load_datasets(config, verify_images)
    step_plan = plan_steps(config, train, reg)
    family, configs = base_architecture(config)
    from lorasmith.config.checks import check_family_shapes

    check_family_shapes(config, get_family(family))
    from lorasmith.network.lycoris_network import uses_lycoris

    if memory:
        largest = max(step_plan.bucket_counts, key=lambda wh: wh[0] * wh[1], default=None)
        try:
            step_plan.memory = memory_estimate(config, bucket=largest)
        except Exception as error:  # the step plan stands without it (e.g. parts of mismatched architectures)
            events(Message(f"no GPU memory estimate: {error}", "warning"))
    if uses_lycoris(config):  # its size depends on the algorithm's factors: not estimated (yet)
        return step_plan
    step_plan.lora_file_bytes = family_behaviour(get_family(family)).lora_file_bytes(family, config, configs)
    return step_plan


def memory_estimate(config: TrainConfig, bucket: tuple[int, int] | None = None):
    """The VRAM planner's `MemoryEstimate` for `config`: the model file's architecture is read, never its weights.
    `bucket`: the largest (width, height) to plan for, else the largest the settings allow."""
    from lorasmith.memory import estimate_training_memory

    family, configs = base_architecture(config)
    return estimate_training_memory(config, family, configs, bucket=bucket)


def fit_changes(config: TrainConfig, gib: float):
    """The cheapest changes that make `config` fit `gib` GB (memory.advice.Change, each with its estimate)."""
    from lorasmith.memory.advice import fit_advice

    family, configs = base_architecture(config)
    return fit_advice(config, family, gib, configs)


def gpu_free_bytes() -> int | None:
    """The free memory of the CUDA GPU this process would train on, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.mem_get_info()[0]


def _warn_when_too_big(config: TrainConfig, data_plan, events: EventSink) -> None:
    """A warning before loading when the planner's estimate exceeds the GPU's free memory (CUDA only)."""
    free = gpu_free_bytes()
    if free is None:
        return
    largest = max(data_plan.bucket_counts, key=lambda wh: wh[0] * wh[1], default=None)
    try:
        estimate = memory_estimate(config, bucket=largest)
    except Exception as error:  # the planner must never stop a run it could not plan
        events(Message(f"the GPU memory estimate failed ({error}); training goes on", "warning"))
        return
    if estimate.total > free:
        events(Message(f"this run needs about {estimate.total / 2**30:.1f} GB of GPU memory (estimate) but "
                       f"{free / 2**30:.1f} GB is free; `lorasmith plan --vram {free / 2**30:.0f}` lists the "
                       "cheapest changes that fit", "warning"))


# --- training and the demo ---


def train(config: TrainConfig, events: EventSink = ignore_events, stop=None, base=None, pause=None, given=None):
    """Train a LoRA. `stop` (a threading.Event) ends the run at the next step, saving the LoRA (and the state
    with save_state); `pause` does the same and always saves the state, for `resume = "auto"` to go on.

    `base` lets a caller pass an already loaded BaseModel (tests, notebooks); normally the
    model is loaded from `config.pretrained_model_name_or_path`.
    """
    config = resolve_resume(config, events)
    base_hashes = _hash_checkpoint_early(config.pretrained_model_name_or_path, config.vae)
    import torch

    from lorasmith.train.optim import check_optimizer_available
    from lorasmith.train.run import guard_outputs
    from lorasmith.train.setup import LatentsWhileLoading, cpu_only, setup_data, weight_dtype
    from lorasmith.train.trainer import Trainer

    for warning in check_config(config, for_training=base is None):
        events(Message(warning, "warning"))
    losing, unhonoured = setting_lines(config, given)
    if unhonoured:  # never train something other than what was asked for
        from lorasmith.errors import ConfigError

        raise ConfigError(unhonoured[0])
    for line in losing:
        events(Message(line, "warning"))
    # Mistakes found in a second, not after minutes of loading the model and caching latents.
    check_optimizer_available(config.optimizer_type)
    from lorasmith.network.lycoris_network import uses_lycoris

    # a LyCORIS or Flux network (per-type dims) checks its file when it loads
    if config.network_weights and not uses_lycoris(config) and config.network_module.strip() != "networks.lora_flux":
        from lorasmith.network.files import check_start_weights

        check_start_weights(Path(config.network_weights).expanduser(), config.network_dim, config.conv_dim,
                            not config.network_train_text_encoder_only, not config.network_train_unet_only)
    if not config.resume:  # a resumed run may replace only the files after its epoch: the trainer checks that
        guard_outputs(Path(config.output_dir).expanduser(), config.output_name, config.overwrite)
    torch.set_num_threads(config.num_cpu_threads_per_process)
    train_set, reg_set = load_datasets(config)
    data = setup_data(config, train_set, reg_set)
    for line in data.plan.lines():
        events(Message(line))
    owns_base = base is None
    _warn_when_too_big(config, data.plan, events)
    latents = LatentsWhileLoading(config, data, events) if owns_base and config.cache_latents else None
    if owns_base:
        from accelerate import PartialState

        from lorasmith.models.load import load_base_model

        device = PartialState(cpu=cpu_only()).device
        events(Message(f"loading {config.pretrained_model_name_or_path}"))
        base = load_base_model(
            config.pretrained_model_name_or_path, family=config.model_family,
            v_parameterization=config.v_parameterization, allow_pickle=config.allow_pickle,
            dtype=weight_dtype(config.mixed_precision, device), device=device, vae_ready=latents,
            vae_path=config.vae or None, ae=config.ae or None, clip_l=config.clip_l or None,
            t5xxl=config.t5xxl or None,
        )
    from lorasmith.config.checks import check_family_shapes

    check_family_shapes(config, base.family)
    trainer = Trainer(config, data, base, events, stop, owns_base=owns_base, base_hashes=base_hashes,
                      latents=latents.future if latents else None, pause=pause)
    trainer.setup()
    return trainer.train()


def resolve_resume(config: TrainConfig, events: EventSink = ignore_events) -> TrainConfig:
    """`resume = "auto"`: the newest complete state of this output_dir/output_name, or a fresh start."""
    from dataclasses import replace

    from lorasmith.train.state import find_resume_state

    if config.resume.strip().lower() != "auto":
        return config
    output_dir = Path(config.output_dir).expanduser()
    folder, skipped = find_resume_state(output_dir, config.output_name)
    for line in skipped:
        events(Message(line, "warning"))
    if folder is None:
        events(Message(f"resume auto: no saved training state of '{config.output_name}' in {output_dir}; "
                       "starting fresh"))
        return replace(config, resume="")
    events(Message(f"resume auto: continuing from {folder.name}"))
    return replace(config, resume=str(folder))


def resumable_run(config: TrainConfig) -> dict | None:
    """A run of this output_dir/output_name that did not finish (paused, stopped, crashed, the machine went
    down) and the state `resume = "auto"` would continue it from: {"state", "step", "status"}, or None."""
    import json

    from lorasmith.train.run import read_record, record_path
    from lorasmith.train.state import STATE_FILE, find_resume_state

    if not config.output_dir:
        return None
    output_dir = Path(config.output_dir).expanduser()
    try:
        status = read_record(record_path(output_dir, config.output_name)).status
    except Exception:  # no run record, or not one of ours: nothing to offer
        return None
    if status == "finished":
        return None
    folder, _ = find_resume_state(output_dir, config.output_name)
    if folder is None:
        return None
    step = json.loads((folder / STATE_FILE).read_text())["step"]
    return {"state": str(folder), "step": step, "status": "crashed" if status == "running" else status}


def _hash_checkpoint_early(path: str, vae_path: str = ""):
    """Start reading the checkpoint's sha256 (and a separate VAE's) for the metadata before the heavy
    imports; None when there is no file to hash.

    Only the main process of an `accelerate launch` writes files, so only it hashes (torchrun's RANK).
    """
    import os

    from lorasmith.models.hashes import hash_in_background

    files = [Path(p).expanduser() if p else None for p in (path, vae_path)]
    files = [f if f is not None and f.is_file() else None for f in files]
    if not any(files) or os.environ.get("RANK", "0") != "0":
        return None
    return hash_in_background(*files)


DEMO_MODEL_NAME = "tiny-sd1.safetensors"
DEMO_FAMILIES = ("sd1", "flux")


def demo_config(output_dir: str = "lorasmith-demo", family: str = "sd1") -> TrainConfig:
    """The embedded default: a tiny SD1 model and the bundled 'smithy' dataset, copied into `output_dir`.

    Writes the tiny model (random weights, fixed seed) as a single-file checkpoint and copies
    the dataset, so that the demo goes through the same loading code as a real run. `family` "flux":
    a tiny Flux.1-dev in the files users have (BFL single file, ae, clip_l, t5xxl) and sd-scripts'
    recommended Flux recipe.
    """
    if family not in DEMO_FAMILIES:
        from lorasmith.errors import ConfigError

        raise ConfigError(f"the demo trains {' or '.join(DEMO_FAMILIES)}, not '{family}'; use --family sd1 or flux")
    if family == "flux":
        return _flux_demo_config(output_dir)
    import shutil
    from importlib import resources

    from lorasmith.config.schema import with_values

    out = Path(output_dir).expanduser().resolve()
    dataset = out / "dataset"
    if not dataset.is_dir():
        source = resources.files("lorasmith").joinpath("demo_data")
        shutil.copytree(str(source), dataset, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    model = out / "base" / DEMO_MODEL_NAME
    if not model.is_file():
        from lorasmith.models.single_file import save_single_file
        from lorasmith.models.tiny import tiny_base_model

        model.parent.mkdir(parents=True, exist_ok=True)
        save_single_file(tiny_base_model("sd1", seed=0), str(model))
    prompts = out / "sample_prompts.txt"
    if not prompts.is_file():
        prompts.write_text("smithy, 1girl, orange hair, blue eyes, green shirt --w 128 --h 128 --s 8 --l 5 --d 1\n")
    return with_values(TrainConfig(), {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(dataset), "output_dir": str(out / "output"),
        "output_name": "smithy", "resolution": "128,128", "min_bucket_reso": 64, "max_bucket_reso": 256,
        "bucket_reso_steps": 32,
        "train_batch_size": 2, "max_train_epochs": 4, "save_every_n_epochs": 1, "learning_rate": 1e-3,
        "text_encoder_lr": 5e-4, "network_dim": 8, "network_alpha": 4, "lr_scheduler": "constant",
        "sample_prompts": str(prompts), "sample_every_n_epochs": 2, "sample_sampler": "euler_a",
        "training_comment": "lorasmith demo: tiny random model, bundled 'smithy' dataset",
        # A tiny model is faster on one thread: a second one mostly waits (and spins when cores are busy).
        "num_cpu_threads_per_process": 1,
    })


def _flux_demo_config(output_dir: str) -> TrainConfig:
    from lorasmith.config.schema import with_values

    sd1 = demo_config(output_dir)  # the dataset, prompts and schedule of the plain demo
    out = Path(output_dir).expanduser().resolve()
    folder = out / "base-flux"
    files = {"model": folder / "flux1-tiny.safetensors", "ae": folder / "ae.safetensors",
             "clip_l": folder / "clip_l.safetensors", "t5xxl": folder / "t5xxl.safetensors"}
    if not all(path.is_file() for path in files.values()):
        from lorasmith.families.flux.tiny import tiny_flux_base_model
        from lorasmith.families.flux.tiny_files import write_tiny_flux

        files = write_tiny_flux(tiny_flux_base_model("dev", seed=0), folder, "bfl")
    prompts = out / "sample_prompts_flux.txt"
    if not prompts.is_file():
        prompts.write_text("smithy, 1girl, orange hair, blue eyes, green shirt --w 128 --h 128 --s 4 --g 3.5 --d 1\n")
    return with_values(sd1, {
        "pretrained_model_name_or_path": str(files["model"]), "ae": str(files["ae"]), "clip_l": str(files["clip_l"]),
        "t5xxl": str(files["t5xxl"]), "network_module": "networks.lora_flux", "output_dir": str(out / "output-flux"),
        "sample_prompts": str(prompts), "guidance_scale": 1.0, "timestep_sampling": "shift",
        "discrete_flow_shift": 3.1582, "model_prediction_type": "raw", "t5xxl_max_token_length": 64,
        "training_comment": "lorasmith demo: tiny random Flux.1-dev, bundled 'smithy' dataset",
    })


def is_previous_demo(config: TrainConfig) -> bool:
    """True when the output folder holds an earlier demo run, which the demo may replace."""
    from lorasmith.train.run import read_record

    try:
        record = read_record(config.output_dir)
    except Exception:  # no or unreadable record: not ours to replace
        return False
    return record.base_model.endswith((DEMO_MODEL_NAME, "flux1-tiny.safetensors"))


def demo(output_dir: str = "lorasmith-demo", events: EventSink = ignore_events, stop=None, family: str = "sd1",
         **overrides):
    """Train the embedded default end to end: the README's main job (`family` "flux": a tiny Flux.1)."""
    from lorasmith.config.schema import with_values

    config = with_values(demo_config(output_dir, family), overrides)
    if is_previous_demo(config):
        config = with_values(config, {"overwrite": True})
    title = "Flux.1-dev" if family == "flux" else "SD1"
    events(Message(f"demo: tiny {title} model and the bundled 'smithy' dataset in {Path(output_dir).resolve()}"))
    return train(config, events, stop)


# --- testing tools ---


def generate(base_model: str | None, prompt: str, loras: list = (), negative_prompt: str = "", steps: int = 20,
             cfg_scale: float = 7.0, seed: int = -1, width: int = 512, height: int = 512, sampler: str = "euler_a",
             batch_size: int = 1, clip_skip: int = 1, output_dir: str | None = None, lora_dirs: list = (),
             model_family: str = "auto", v_parameterization: bool = False, allow_pickle: bool = False,
             precision: str = "no", events: EventSink = ignore_events, base=None, ae: str = "", clip_l: str = "",
             t5xxl: str = "", guidance: float | None = None):
    """Images of `prompt` with `loras` [(path, weight)] and any <lora:name:w> tags; saved when output_dir is given.

    Returns a GenerationResult (.images as PIL images, .paths, .parameters). A seed below 0 draws one.
    Flux.1: `ae`, `clip_l`, `t5xxl` name its other files (a diffusers folder has them); `guidance` is dev's.
    """
    from lorasmith.events import FileWritten
    from lorasmith.sampling.generate import GenerationRequest, GenerationResult, check_prompt_loras, generate_images
    from lorasmith.sampling.run_settings import RunSettings, load_for_testing

    # Settings and LoRA names are checked first: loading a real base model takes a while.
    request = GenerationRequest(prompt, negative_prompt, width, height, steps, cfg_scale, seed, sampler, batch_size,
                                clip_skip, guidance)
    check_prompt_loras(prompt, list(loras), list(lora_dirs))
    base = base or load_for_testing(base_model, RunSettings(model_family=model_family,
                                                            v_parameterization=v_parameterization,
                                                            flux_files=(ae, clip_l, t5xxl)),
                                    precision, allow_pickle)
    made = generate_images(base, [request], list(loras), list(lora_dirs), events, output_dir, precision=precision)
    for item in made:
        if item.path is not None:
            events(FileWritten(str(item.path), "sample"))
    return GenerationResult.of(made)


def grid(run_dir: str | None, prompt: str, weights: list = (0.4, 0.6, 0.8, 1.0), seed: int = 1234,
         base_model: str | None = None, loras: list | None = None, prompts: list | None = None, lora: str | None = None,
         negative_prompt: str = "", steps: int = 20, cfg_scale: float = 7.0, width: int | None = None,
         height: int | None = None, sampler: str = "euler_a", clip_skip: int | None = None,
         output_dir: str | None = None, allow_pickle: bool = False, precision: str = "no",
         events: EventSink = ignore_events, base=None):
    """An X/Y grid: columns are LoRA weights; rows the run's epoch files (or `loras`, or `prompts` with `lora`)."""
    from lorasmith.sampling.generate import GenerationRequest
    from lorasmith.sampling.grid import make_grid
    from lorasmith.sampling.run_settings import free_name, load_for_testing, run_settings
    from lorasmith.sampling.runs import run_loras

    settings = run_settings(run_dir)
    labels = None
    if run_dir and not loras and not prompts:
        found = run_loras(run_dir, settings.output_name)
        loras, labels = [lora.path for lora in found], [lora.label for lora in found]
    width, height = width or settings.resolution[0], height or settings.resolution[1]
    GenerationRequest(prompt, negative_prompt, width, height, steps, cfg_scale, seed, sampler)  # checks, before loading
    base = base or load_for_testing(base_model, settings, precision, allow_pickle)
    out = Path(output_dir or Path(run_dir or ".") / "grids").expanduser()
    return make_grid(
        base, prompt, seed, list(weights), y_loras=loras, y_prompts=prompts, lora=lora, y_labels=labels,
        output_dir=out, name=free_name(out, "xy_grid"), negative_prompt=negative_prompt, steps=steps,
        cfg_scale=cfg_scale, width=width, height=height,
        sampler=sampler, clip_skip=clip_skip or settings.clip_skip, precision=precision, events=events)


def best_epoch(run_dir: str) -> tuple[int, str] | None:
    """(epoch, its LoRA file) of the lowest validation loss measured during the run, when it measured one."""
    from lorasmith.train.run import read_record

    try:
        record = read_record(Path(run_dir).expanduser())
    except Exception:  # no run record: nothing was measured
        return None
    if record.best_epoch is None:
        return None
    files = [f["path"] for f in record.files if f["epoch"] == record.best_epoch and f["kind"] in ("best", "epoch",
                                                                                                  "final")]
    return (record.best_epoch, files[0]) if files else None


def evaluate(run_dir: str, base_model: str | None = None, train_data_dir: str | None = None,
             resolution: int | None = None, clip_skip: int | None = None, seed: int = 0,
             output_dir: str | None = None, allow_pickle: bool = False, events: EventSink = ignore_events, base=None):
    """A validation loss per saved epoch of a run (fixed noise and timesteps), a table, a plot, the best epoch."""
    from lorasmith.sampling.evaluate import evaluate_run, evaluation_images
    from lorasmith.sampling.run_settings import load_for_testing, run_settings

    settings = run_settings(run_dir)
    images, source = evaluation_images(run_dir, train_data_dir)
    base = base or load_for_testing(base_model, settings, "no", allow_pickle)
    report = evaluate_run(run_dir, base, images, resolution=resolution or min(settings.resolution),
                          clip_skip=clip_skip or settings.clip_skip, max_token_length=settings.max_token_length,
                          seed=seed, image_source=source,
                          output_dir=output_dir, events=events)
    return report  # report.lines() ends with the recommended epoch


# --- dataset tools ---


def prepare_dataset(source, train_data_dir, trigger: str, class_name: str = "",
                    events: EventSink = ignore_events, **options):
    """Copy raw images into `<train_data_dir>/<repeats>_<trigger> <class>/` (see tools.prepare)."""
    from lorasmith.tools.prepare import prepare_dataset as run

    return run(source, train_data_dir, trigger, class_name, events=events, **options)


def prepare_project(source, project_dir, trigger: str, class_name: str = "",
                    events: EventSink = ignore_events, **options):
    """kohya_ss's layout under one folder: img/, reg/, model/, log/; the result names them all."""
    from lorasmith.tools.prepare import prepare_project as run

    return run(source, project_dir, trigger, class_name, events=events, **options)


def caption_wd14(folder, model=None, events: EventSink = ignore_events, **options):
    """Tag images with a WD14 ONNX tagger folder (model.onnx + selected_tags.csv)."""
    from lorasmith.errors import ToolError
    from lorasmith.tools.caption.wd14 import caption_wd14 as run

    if not model:
        raise ToolError("give the WD14 tagger folder (model.onnx + selected_tags.csv) as the model")
    return run(folder, model, events=events, **options)


def caption_blip(folder, model=None, events: EventSink = ignore_events, **options):
    """Caption images with a local BLIP model folder."""
    from lorasmith.tools.caption.blip import caption_blip as run

    return run(folder, model, events=events, **options)


def caption_basic(folder, caption_text: str = "", events: EventSink = ignore_events, **options):
    """A fixed caption where none exists; prefix/postfix/trigger on every caption."""
    from lorasmith.tools.caption.basic import caption_basic as run

    return run(folder, caption_text, events=events, **options)


def tag_frequencies(folder, caption_extension: str = ".txt", recursive: bool = True) -> dict[str, int]:
    """tag -> how many captions hold it, most frequent first."""
    from lorasmith.tools.tags import tag_frequencies as run

    return run(folder, caption_extension, recursive)


def edit_tags(folder, events: EventSink = ignore_events, **edits):
    """Add/remove/replace/move/dedupe tags in every caption (backup first, or dry_run)."""
    from lorasmith.tools.tags import edit_tags as run

    return run(folder, events=events, **edits)


def doctor_dataset(folder, events: EventSink = ignore_events, **options):
    """Check a dataset folder; the report separates errors (stop training) from warnings."""
    from lorasmith.tools.doctor import doctor_dataset as run

    return run(folder, events=events, **options)


# --- the LoRA toolbox (sd-scripts' networks/*.py scripts, with their argument names) ---


def lora_inspect(path: str):
    """What a LoRA file is: family, network type, ranks per block, metadata, and who will load it."""
    from lorasmith.tools.lora.inspect_lora import inspect_lora

    return inspect_lora(path)


def lora_merge(models: list, ratios: list | None, save_to: str, *, sd_model: str | None = None,
               new_rank: int | None = None, new_conv_rank: int | None = None, save_precision: str | None = None,
               overwrite: bool = False):
    """LoRAs into one LoRA (ranks concatenated, or SVD to new_rank), or into the checkpoint `sd_model`."""
    if sd_model:
        from lorasmith.errors import ToolError
        from lorasmith.tools.lora.merge_checkpoint import merge_into_checkpoint

        if new_rank is not None or new_conv_rank is not None:
            raise ToolError("--new_rank and --new_conv_rank shape a merged LoRA; leave them out with --sd_model")
        return merge_into_checkpoint(sd_model, list(models), list(ratios or [1.0] * len(models)), save_to,
                                     overwrite=overwrite, save_precision=save_precision)
    from lorasmith.tools.lora.merge_loras import merge_lora_files

    return merge_lora_files(list(models), ratios, save_to, new_rank=new_rank, new_conv_rank=new_conv_rank,
                            save_precision=save_precision, overwrite=overwrite)


def lora_resize(model: str, save_to: str, new_rank: int, **options):
    """A LoRA at a lower rank by SVD (new_conv_rank, dynamic_method, dynamic_param, save_precision, overwrite)."""
    from lorasmith.tools.lora.resize import resize_lora_file

    return resize_lora_file(model, save_to, new_rank, **options)


def lora_extract(model_org: str, model_tuned: str, save_to: str, dim: int = 4, **options):
    """The LoRA of a fine-tuned checkpoint minus its base (conv_dim, clamp_quantile, min_diff, ...)."""
    from lorasmith.tools.lora.extract import extract_lora

    return extract_lora(model_org, model_tuned, save_to, dim, **options)


def lora_convert(path: str, to: str, save_to: str, overwrite: bool = False):
    """kohya keys to diffusers/peft keys ("diffusers") and back ("kohya")."""
    from lorasmith.tools.lora.convert import convert_lora

    return convert_lora(path, to, save_to, overwrite=overwrite)
