"""The `lorasmith` command: sub-commands that call `lorasmith.api`.

This package is the only place that prints to the terminal for the library or exits.
Each module under `lorasmith.cli` adds its sub-commands with `add_commands(subparsers)`;
a handler takes the parsed arguments (and any `--key value` overrides left over) and
returns an exit code. User mistakes (`LorasmithError`) become one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lorasmith import __version__
from lorasmith.errors import LorasmithError

# Modules that contribute sub-commands, in the order `--help` lists them.
COMMAND_MODULES = (
    "lorasmith.cli.config_commands",
    "lorasmith.cli.train_commands",
    "lorasmith.cli.dataset_commands",
    "lorasmith.cli.testing_commands",
    "lorasmith.cli.lora_commands",
    "lorasmith.cli.gui_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorasmith",
        description="Train character LoRAs for Stable Diffusion (SD1.x, SD2.x, SDXL).",
        epilog="Configuration keys are sd-scripts' argument names; any of them can be given "
        "as --<key> <value> after train/plan. Start with: lorasmith demo",
    )
    parser.add_argument("--version", action="version", version=f"lorasmith {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # that group of commands is not built yet
                continue
            raise
        module.add_commands(subparsers)
    return parser


def _split_overrides(parser: argparse.ArgumentParser, argv: list[str]):
    """Everything from the first `--<configuration key>` on is overrides, values included.

    Parsed apart so that a value such as `--network_dim 32` is never taken for the
    positional CONFIG argument.
    """
    from lorasmith.config.schema import FIELDS

    for index, token in enumerate(argv):
        if token.startswith("--") and token[2:].split("=")[0].replace("-", "_") in FIELDS:
            preset, overrides = _preset_out_of(argv[index:])  # --preset may come anywhere
            return parser.parse_args(argv[:index] + preset), overrides
    return parser.parse_args(argv), []


def _preset_out_of(overrides: list[str]) -> tuple[list[str], list[str]]:
    """`--preset 8gb` among the `--key value` overrides: (the preset's tokens, the overrides without them)."""
    for index, token in enumerate(overrides):
        if token == "--preset" and index + 1 < len(overrides):
            return overrides[index:index + 2], overrides[:index] + overrides[index + 2:]
        if token.startswith("--preset="):
            return [token], overrides[:index] + overrides[index + 1:]
    return [], overrides


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0 if not argv and args.command is None else 2
    if getattr(args, "accepts_overrides", False):
        args, extra = _split_overrides(parser, argv)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(handler(args, extra) or 0)
    except LorasmithError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader stopped early (`lorasmith config keys | head`): not a failure worth a traceback.
        # stdout goes to devnull so that the interpreter's last flush does not raise it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE
