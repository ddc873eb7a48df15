"""`lorasmith generate`, `grid` and `evaluate`: try a LoRA, compare epochs and weights, pick an epoch."""

from __future__ import annotations

import argparse

from lorasmith.cli.train_commands import TerminalProgress
from lorasmith.config.schema import MODEL_FAMILIES, PRECISIONS, SAMPLERS


def parse_lora_option(text: str) -> tuple[str, float]:
    """'my.safetensors:0.8' -> (path, 0.8); without a number after the last colon the weight is 1."""
    path, _, weight = text.rpartition(":")
    if path:
        try:
            return path, float(weight)
        except ValueError:
            pass  # a colon of the path itself (C:\...)
    return text, 1.0


def parse_weights(text: str) -> list[float]:
    try:
        return [float(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"weights must be numbers such as 0.4,0.6,0.8,1.0, got {text!r}") from None


def _add_image_options(parser: argparse.ArgumentParser, size_default: int | None) -> None:
    parser.add_argument("--model", help="base model: .safetensors, diffusers folder (default for grid/evaluate: "
                        "the run's)")
    parser.add_argument("--prompt", default="", help="the prompt; <lora:name:0.8> tags load LoRAs by name")
    parser.add_argument("--negative_prompt", default="")
    parser.add_argument("--sampler", default="euler_a", choices=SAMPLERS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg_scale", type=float, default=7.0)
    parser.add_argument("--width", type=int, default=size_default, help="pixels, a multiple of 8")
    parser.add_argument("--height", type=int, default=size_default, help="pixels, a multiple of 8")
    parser.add_argument("--clip_skip", type=int, default=None, help="2 for NAI-based anime models")
    parser.add_argument("--output_dir", help="where the images go")
    parser.add_argument("--precision", default="no", choices=PRECISIONS, help="fp16/bf16 on a GPU")
    parser.add_argument("--allow_pickle", action="store_true", help="allow a .ckpt base model you trust")


def _run(call) -> int:
    progress = TerminalProgress()
    try:
        return call(progress)
    finally:
        progress.close()


def _generate(args, extra) -> int:
    from lorasmith import api

    def call(progress) -> int:
        result = api.generate(
            args.model, args.prompt, loras=[parse_lora_option(text) for text in args.lora],
            negative_prompt=args.negative_prompt, steps=args.steps, cfg_scale=args.cfg_scale, seed=args.seed,
            width=args.width, height=args.height, sampler=args.sampler, batch_size=args.batch_size,
            clip_skip=args.clip_skip or 1, output_dir=args.output_dir, lora_dirs=args.lora_dir,
            model_family=args.model_family, v_parameterization=args.v_parameterization,
            allow_pickle=args.allow_pickle, precision=args.precision, events=progress, ae=args.ae,
            clip_l=args.clip_l, t5xxl=args.t5xxl, guidance=args.guidance)
        print(f"{len(result.paths)} image(s) in {args.output_dir}")
        return 0

    return _run(call)


def _grid(args, extra) -> int:
    from lorasmith import api

    def call(progress) -> int:
        api.grid(
            args.run_dir, args.prompt, weights=args.weights, seed=args.seed, base_model=args.model,
            loras=args.loras or None, prompts=args.row_prompt or None, lora=args.lora,
            negative_prompt=args.negative_prompt, steps=args.steps, cfg_scale=args.cfg_scale, width=args.width,
            height=args.height, sampler=args.sampler, clip_skip=args.clip_skip, output_dir=args.output_dir,
            allow_pickle=args.allow_pickle, precision=args.precision, events=progress)
        return 0  # the grid's files were printed as they were written

    if not args.run_dir and not args.loras and not args.row_prompt:
        raise _usage("grid needs --run_dir, --loras or --row_prompt for its rows")
    return _run(call)


def _evaluate(args, extra) -> int:
    from lorasmith import api

    def call(progress) -> int:
        report = api.evaluate(
            args.run_dir, base_model=args.model, train_data_dir=args.train_data_dir, resolution=args.resolution,
            clip_skip=args.clip_skip, seed=args.seed, output_dir=args.output_dir, allow_pickle=args.allow_pickle,
            events=progress)
        print("\n".join(report.lines()))  # the plot and table were printed as they were written
        return 0

    return _run(call)


def _usage(text: str):
    from lorasmith.errors import ToolError

    return ToolError(text)


def add_commands(subparsers) -> None:
    generate = subparsers.add_parser("generate", help="make images with a base model and LoRAs")
    _add_image_options(generate, 512)
    generate.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]",
                          help="a LoRA file and its weight (default 1); repeat for several")
    generate.add_argument("--lora_dir", action="append", default=[], help="folder where <lora:name> tags look")
    generate.add_argument("--seed", type=int, default=-1, help="-1 draws one; image i of a batch uses seed + i")
    generate.add_argument("--batch_size", type=int, default=1)
    generate.add_argument("--model_family", default="auto", choices=MODEL_FAMILIES)
    generate.add_argument("--v_parameterization", action="store_true", help="SD2.x 768-v models")
    for name, what in (("ae", "autoencoder"), ("clip_l", "CLIP-L text encoder"), ("t5xxl", "T5-XXL text encoder")):
        generate.add_argument(f"--{name}", default="", help=f"Flux.1: the {what} file (a diffusers folder has its own)")
    generate.add_argument("--guidance", type=float, default=None, help="Flux.1 dev's guidance (default 3.5)")
    generate.set_defaults(handler=_generate, output_dir="lorasmith-images")

    grid = subparsers.add_parser("grid", help="X/Y grid: LoRA weights across, epochs (or prompts) down, one seed")
    _add_image_options(grid, None)
    grid.add_argument("--run_dir", help="a training run's output folder: its epoch files are the rows")
    grid.add_argument("--loras", nargs="+", help="LoRA files as the rows instead of a run's epochs")
    grid.add_argument("--row_prompt", action="append", help="a prompt per row (with --lora); repeat")
    grid.add_argument("--lora", help="the LoRA whose weights the columns vary, with --row_prompt")
    grid.add_argument("--weights", type=parse_weights, default=[0.4, 0.6, 0.8, 1.0], help="e.g. 0.4,0.6,0.8,1.0")
    grid.add_argument("--seed", type=int, default=1234)
    grid.set_defaults(handler=_grid)

    evaluate = subparsers.add_parser("evaluate", help="validation loss per saved epoch, and which epoch to keep")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a training run's output folder")
    evaluate.add_argument("--model", help="base model (default: the one the run was trained on)")
    evaluate.add_argument("--train_data_dir", help="images to measure on (default: the run's held-out images, "
                          "else its training images)")
    evaluate.add_argument("--resolution", type=int, help="square size the images are measured at")
    evaluate.add_argument("--clip_skip", type=int)
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the fixed noise")
    evaluate.add_argument("--output_dir", help="where the table and plot go (default RUN_DIR/evaluation)")
    evaluate.add_argument("--allow_pickle", action="store_true")
    evaluate.set_defaults(handler=_evaluate)
