"""`lorasmith lora extract`: a LoRA from two checkpoints by SVD (sd-scripts' extract_lora_from_models.py
arguments)."""

from __future__ import annotations

from lorasmith.network.files import SAVE_PRECISIONS  # no torch at import: --help stays quick


def add_lora_command(tools) -> None:
    parser = tools.add_parser(
        "extract", help="extract a LoRA from a fine-tuned checkpoint and its base, by SVD",
        description="Extract the difference model_tuned - model_org as a LoRA: every layer sd-scripts' "
        "networks.lora covers is factored to rank --dim (3x3 convolutions to --conv_dim), with alpha = rank. "
        "Either model may be a single .safetensors file or a diffusers folder; the family is detected.")
    parser.add_argument("--model_org", required=True, help="the base model the tuned one was trained from")
    parser.add_argument("--model_tuned", required=True, help="the fine-tuned model; the LoRA is tuned - org")
    parser.add_argument("--save_to", required=True, help="where to write the LoRA (.safetensors)")
    parser.add_argument("--dim", type=int, default=4, help="rank of the LoRA (default 4)")
    parser.add_argument("--conv_dim", type=int, default=None,
                        help="rank of the 3x3 convolutions (LoCon); default: leave them out")
    parser.add_argument("--clamp_quantile", type=float, default=None,
                        help="clip the factors to this quantile of their absolute values, e.g. 0.99 as sd-scripts "
                        "does (default: the exact SVD, unclipped)")
    parser.add_argument("--min_diff", type=float, default=0.01,
                        help="a text encoder whose largest difference is at most this is left out (default 0.01)")
    parser.add_argument("--save_precision", choices=SAVE_PRECISIONS, default=None,
                        help="precision of the saved file (default float)")
    parser.add_argument("--sdxl", action="store_true", help="the models are SDXL (checked; detected anyway)")
    parser.add_argument("--v2", action="store_true", help="the models are SD2.x (checked; detected anyway)")
    parser.add_argument("--device", default="cpu", help="where to compute the SVDs, e.g. cuda (default cpu)")
    parser.add_argument("--no_metadata", action="store_true",
                        help="write only the minimum ss_* metadata, no modelspec.* keys")
    parser.add_argument("--overwrite", action="store_true", help="replace --save_to if it exists")
    parser.set_defaults(handler=_extract)


def _extract(args, extra) -> int:
    from lorasmith.api import lora_extract as extract_lora
    from lorasmith.errors import ToolError

    if args.sdxl and args.v2:
        raise ToolError("--sdxl and --v2 name different families; give at most one of them")
    family = "sdxl" if args.sdxl else "sd2" if args.v2 else "auto"
    report = extract_lora(args.model_org, args.model_tuned, args.save_to, args.dim, conv_dim=args.conv_dim or 0,
                          clamp_quantile=args.clamp_quantile, min_diff=args.min_diff,
                          save_precision=args.save_precision, overwrite=args.overwrite, family=family,
                          device=args.device, modelspec=not args.no_metadata)
    for line in report.summary_lines():
        print(line)
    return 0
