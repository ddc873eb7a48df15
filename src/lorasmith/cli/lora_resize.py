"""`lorasmith lora resize`: a LoRA at a lower rank (sd-scripts' networks/resize_lora.py arguments)."""

from __future__ import annotations

from lorasmith.network.files import SAVE_PRECISIONS  # no torch at import: --help stays quick
from lorasmith.tools.lora.svd import DYNAMIC_METHODS, one_thread  # svd.py imports torch only when called


def add_lora_command(tools) -> None:
    parser = tools.add_parser(
        "resize", help="resize a LoRA to a lower rank by SVD",
        description="Resize a LoRA/LoCon file to a lower rank: each module keeps its best rank-N approximation "
        "(the alpha/rank scale is kept). With --dynamic_method the rank is picked per module, at most --new_rank.")
    parser.add_argument("--model", required=True, help="the LoRA file to resize (.safetensors)")
    parser.add_argument("--save_to", required=True, help="where to write the resized LoRA (.safetensors)")
    parser.add_argument("--new_rank", type=int, required=True,
                        help="rank of the output (the cap with --dynamic_method)")
    parser.add_argument("--new_conv_rank", type=int, default=None,
                        help="rank of 3x3 convolution (LoCon) modules; default: --new_rank, or their own rank if lower")
    parser.add_argument("--dynamic_method", choices=DYNAMIC_METHODS, default=None,
                        help="pick each module's rank: sv_ratio (S[0]/S[r] at most the param), sv_fro (a share of the "
                        "Frobenius norm), sv_cumulative (a share of the sum of singular values)")
    parser.add_argument("--dynamic_param", type=float, default=None,
                        help="the target of --dynamic_method (e.g. 0.9 for sv_fro, 4 for sv_ratio)")
    parser.add_argument("--save_precision", choices=SAVE_PRECISIONS, default=None,
                        help="precision of the saved file; default: the input's")
    parser.add_argument("--verbose", action="store_true", help="print every module's rank and energy kept")
    parser.add_argument("--overwrite", action="store_true", help="replace --save_to if it exists")
    parser.set_defaults(handler=_resize)


def _resize(args, extra) -> int:
    from lorasmith.api import lora_resize

    with one_thread():
        report = lora_resize(args.model, args.save_to, args.new_rank, new_conv_rank=args.new_conv_rank,
                                  dynamic_method=args.dynamic_method, dynamic_param=args.dynamic_param,
                                  save_precision=args.save_precision, overwrite=args.overwrite)
    for line in report.summary_lines(verbose=args.verbose):
        print(line)
    return 0
