"""`lorasmith lora inspect|merge|resize|extract|convert`: the LoRA toolbox.

Each tool's module under `lorasmith.cli` adds its own sub-command of `lora` with
`add_lora_command(lora_subparsers)`; the argument names are those of sd-scripts' scripts.
"""

from __future__ import annotations

import importlib

LORA_TOOL_MODULES = (
    "lorasmith.cli.lora_inspect",
    "lorasmith.cli.lora_merge",
    "lorasmith.cli.lora_resize",
    "lorasmith.cli.lora_extract",
    "lorasmith.cli.lora_convert",
)


def add_commands(subparsers) -> None:
    lora = subparsers.add_parser("lora", help="inspect, merge, resize, extract and convert LoRA files")
    tools = lora.add_subparsers(dest="lora_command", metavar="TOOL")
    for module_name in LORA_TOOL_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # that tool is not built yet
                continue
            raise
        module.add_lora_command(tools)
    lora.set_defaults(handler=lambda args, extra: lora.print_help() or 2)
