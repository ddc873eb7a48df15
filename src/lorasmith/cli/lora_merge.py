"""`lorasmith lora merge`: LoRAs into one LoRA (sd-scripts' merge_lora.py / svd_merge_lora.py arguments),
or, with --sd_model, into a checkpoint."""

from __future__ import annotations

from lorasmith.network.files import SAVE_PRECISIONS  # no torch at import: --help stays quick


def add_lora_command(tools) -> None:
    parser = tools.add_parser(
        "merge", help="merge LoRAs into one LoRA, or into a checkpoint with --sd_model",
        description="Merge LoRA files at their ratios. Without --sd_model the result is one LoRA: its ranks joined "
        "(exact), or with --new_rank the best rank-N approximation of the sum. With --sd_model the LoRAs are "
        "merged into that checkpoint's weights.")
    parser.add_argument("--models", nargs="+", required=True, help="the LoRA files to merge (.safetensors)")
    parser.add_argument("--ratios", nargs="+", type=float, default=None,
                        help="one weight per model, e.g. 0.7 0.3 (default 1 each)")
    parser.add_argument("--save_to", required=True, help="where to write the merged LoRA or checkpoint")
    parser.add_argument("--sd_model", default=None, help="merge the LoRAs into this checkpoint instead")
    parser.add_argument("--new_rank", type=int, default=None,
                        help="rank of the merged LoRA, by SVD of the summed deltas; default: the ranks joined, exact")
    parser.add_argument("--new_conv_rank", type=int, default=None,
                        help="rank of 3x3 convolution (LoCon) modules with --new_rank; default: --new_rank")
    parser.add_argument("--save_precision", choices=SAVE_PRECISIONS, default=None,
                        help="precision of the saved file; default: the inputs'")
    parser.add_argument("--verbose", action="store_true", help="print every merged module")
    parser.add_argument("--overwrite", action="store_true", help="replace --save_to if it exists")
    parser.set_defaults(handler=_merge)


def _merge(args, extra) -> int:
    from contextlib import nullcontext

    from lorasmith import api
    from lorasmith.tools.lora.merge_loras import check_merge_counts
    from lorasmith.tools.lora.svd import one_thread

    check_merge_counts(len(args.models), args.ratios)
    # small QR/SVD calls go faster on one thread (see one_thread); merging into a checkpoint keeps its threads
    with nullcontext() if args.sd_model else one_thread():
        report = api.lora_merge(args.models, args.ratios, args.save_to, sd_model=args.sd_model,
                                new_rank=args.new_rank, new_conv_rank=args.new_conv_rank,
                                save_precision=args.save_precision, overwrite=args.overwrite)
    for line in report.summary_lines() if args.sd_model else report.summary_lines(verbose=args.verbose):
        print(line)
    return 0
