"""`lorasmith lora inspect`: what a LoRA file is, and which programs will load it."""

from __future__ import annotations


def add_lora_command(tools) -> None:
    parser = tools.add_parser(
        "inspect", help="show a LoRA's family, format, ranks, training metadata and who loads it",
        description="Read a LoRA file's header (no weights): family and base model, key format (kohya, LyCORIS, "
        "diffusers/peft), network types, rank and alpha per block, trained parts, trigger words and training "
        "settings, and whether AUTOMATIC1111, ComfyUI and diffusers map all its keys.")
    parser.add_argument("file", help="the LoRA file (.safetensors)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_inspect)


def _inspect(args, extra) -> int:
    import json

    from lorasmith.api import lora_inspect as inspect_lora

    report = inspect_lora(args.file)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.lines():
            print(line)
    return 0
