"""BLIP captioning through transformers: one sentence per image, from a local model folder.

The folder is what `save_pretrained` writes for BlipForConditionalGeneration and its
processor (e.g. a downloaded Salesforce/blip-image-captioning-large). Images are prepared by
the PIL-based image processor so that torchvision is never needed.
"""

from __future__ import annotations

from pathlib import Path

from lorasmith.errors import ToolError
from lorasmith.events import EventSink, Message, ignore_events
from lorasmith.tools.caption.common import CaptionSummary, WriteOptions, add_affixes, run_captioner


def load_blip(model_dir: str | Path):
    """(processor, model) from a local folder; never reaches a model hub."""
    folder = Path(model_dir).expanduser()
    if not (folder / "config.json").is_file():
        raise ToolError(f"'{folder}' is not a BLIP model folder (no config.json); give the folder "
                        "save_pretrained wrote, e.g. a downloaded blip-image-captioning-large")
    import transformers
    from transformers import AutoTokenizer, BlipForConditionalGeneration, BlipProcessor

    from lorasmith.models.quiet import no_library_progress_bars

    # The PIL backend when this transformers has one; the default one would want torchvision.
    image_processor_class = getattr(transformers, "BlipImageProcessorPil", transformers.BlipImageProcessor)
    try:
        with no_library_progress_bars():
            processor = BlipProcessor(
                image_processor=image_processor_class.from_pretrained(folder, local_files_only=True),
                tokenizer=AutoTokenizer.from_pretrained(folder, local_files_only=True))
            model = BlipForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    except (OSError, ValueError) as error:
        raise ToolError(f"cannot load the BLIP model in '{folder}': {str(error).splitlines()[0]}") from None
    return processor, model


def caption_blip(
    folder: str | Path,
    model: str | Path | None = None,
    *,
    num_beams: int = 3,
    min_length: int = 5,
    max_length: int = 75,
    prefix: str = "",
    trigger: str = "",
    batch_size: int = 4,
    caption_extension: str = ".txt",
    overwrite: bool = False,
    append: bool = False,
    recursive: bool = True,
    events: EventSink = ignore_events,
) -> CaptionSummary:
    """Write a BLIP sentence (after `prefix`, with `trigger` first) beside every image under `folder`."""
    if not model:
        raise ToolError("give the BLIP model folder (model=..., --model PATH)")
    if num_beams < 1 or min_length < 0 or max_length < max(min_length, 1):
        raise ToolError(f"need num_beams >= 1 and 0 <= min_length <= max_length, got {num_beams}, "
                        f"{min_length}, {max_length}")
    options = WriteOptions(caption_extension, overwrite, append, trigger.strip())
    processor, blip = load_blip(model)
    events(Message(f"BLIP: beams {num_beams}, length {min_length}-{max_length}"))

    def caption_batch(images: list) -> list[str]:
        import torch

        inputs = processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            tokens = blip.generate(pixel_values=inputs["pixel_values"], num_beams=num_beams,
                                   min_length=min_length, max_length=max_length)
        texts = processor.batch_decode(tokens, skip_special_tokens=True)
        return [add_affixes(" ".join(text.split()), prefix) for text in texts]

    return run_captioner(folder, caption_batch, options, batch_size=batch_size, recursive=recursive,
                         task="BLIP captioning", events=events)
