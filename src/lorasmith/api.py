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


def guess_family(config: TrainConfig) -> tuple[str, str]:
    """(family name, how we know) without loading weights; 'sd1' when nothing tells."""
    if config.model_family != "auto":
        return config.model_family, "from model_family"
    path = config.pretrained_model_name_or_path
    if path and Path(path).expanduser().exists():
        try:
            from lorasmith.models.detect import detect_family

            return detect_family(str(Path(path).expanduser()))[0], "detected from the checkpoint"
        except Exception:  # the plan must work even for a model it cannot read; training will say why
            pass
    return "sd1", "assumed (no readable base model given)"


def plan(config: TrainConfig, verify_images: bool = True, events: EventSink = ignore_events):
    """The step plan for a configuration: needs the folders and parameters, no model file."""
    from lorasmith.dataset.plan import plan_steps
    from lorasmith.network.size import estimate_lora_bytes

    for warning in check_config(config, for_training=False):
        events(Message(warning, "warning"))
    train, reg = load_datasets(config, verify_images)
    step_plan = plan_steps(config, train, reg)
    family, _ = guess_family(config)
    step_plan.lora_file_bytes = estimate_lora_bytes(
        family, config.network_dim, conv_rank=config.conv_dim,
        train_unet=not config.network_train_text_encoder_only,
        train_text_encoder=not config.network_train_unet_only, save_precision=config.save_precision,
    )
    return step_plan


# --- training and the demo ---


def train(config: TrainConfig, events: EventSink = ignore_events, stop=None, base=None):
    """Train a LoRA. `stop` (a threading.Event) ends the run early, saving the LoRA, as Ctrl-C does.

    `base` lets a caller pass an already loaded BaseModel (tests, notebooks); normally the
    model is loaded from `config.pretrained_model_name_or_path`.
    """
    import torch

    from lorasmith.train.setup import cpu_only, setup_data, weight_dtype
    from lorasmith.train.trainer import Trainer

    for warning in check_config(config, for_training=base is None):
        events(Message(warning, "warning"))
    torch.set_num_threads(config.num_cpu_threads_per_process)
    train_set, reg_set = load_datasets(config)
    data = setup_data(config, train_set, reg_set)
    for line in data.plan.lines():
        events(Message(line))
    owns_base = base is None
    if owns_base:
        from accelerate import PartialState

        from lorasmith.models.load import load_base_model

        device = PartialState(cpu=cpu_only()).device
        events(Message(f"loading {config.pretrained_model_name_or_path}"))
        base = load_base_model(
            config.pretrained_model_name_or_path, family=config.model_family,
            v_parameterization=config.v_parameterization, allow_pickle=config.allow_pickle,
            dtype=weight_dtype(config.mixed_precision, device), device=device,
        )
    trainer = Trainer(config, data, base, events, stop, owns_base=owns_base)
    trainer.setup()
    return trainer.train()


DEMO_MODEL_NAME = "tiny-sd1.safetensors"


def demo_config(output_dir: str = "lorasmith-demo") -> TrainConfig:
    """The embedded default: a tiny SD1 model and the bundled 'smithy' dataset, copied into `output_dir`.

    Writes the tiny model (random weights, fixed seed) as a single-file checkpoint and copies
    the dataset, so that the demo goes through the same loading code as a real run.
    """
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
    })


def is_previous_demo(config: TrainConfig) -> bool:
    """True when the output folder holds an earlier demo run, which the demo may replace."""
    from lorasmith.train.run import read_record

    try:
        record = read_record(config.output_dir)
    except Exception:  # no or unreadable record: not ours to replace
        return False
    return record.base_model.endswith(DEMO_MODEL_NAME)


def demo(output_dir: str = "lorasmith-demo", events: EventSink = ignore_events, stop=None, **overrides):
    """Train the embedded default end to end: the README's main job."""
    from lorasmith.config.schema import with_values

    config = with_values(demo_config(output_dir), overrides)
    if is_previous_demo(config):
        config = with_values(config, {"overwrite": True})
    events(Message(f"demo: tiny SD1 model and the bundled 'smithy' dataset in {Path(output_dir).resolve()}"))
    return train(config, events, stop)
