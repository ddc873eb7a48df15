"""`lorasmith lora convert`: a LoRA's keys from kohya's to diffusers/peft's, or back."""

from __future__ import annotations

TARGETS = ("diffusers", "kohya")  # as tools/lora/convert.py, whose imports would slow --help


def add_lora_command(tools) -> None:
    parser = tools.add_parser(
        "convert", help="convert a LoRA between kohya and diffusers/peft keys",
        description="Rename a LoRA's tensors between kohya's keys (AUTOMATIC1111, ComfyUI) and diffusers/peft's "
        "(load_lora_weights), for SD1.x, SD2.x and SDXL. Tensors and metadata are kept as they are; alphas go in "
        "the file's lora_adapter_metadata, so kohya -> diffusers -> kohya gives back the very same tensors.")
    parser.add_argument("file", help="the LoRA file to convert (.safetensors)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="the key format to write")
    parser.add_argument("--save_to", required=True, help="where to write the converted LoRA (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace --save_to if it exists")
    parser.set_defaults(handler=_convert)


def _convert(args, extra) -> int:
    from lorasmith.api import lora_convert as convert_lora

    report = convert_lora(args.file, args.to, args.save_to, overwrite=args.overwrite)
    for line in report.summary_lines():
        print(line)
    return 0
