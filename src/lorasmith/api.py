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
