"""`lorasmith config ...` and `lorasmith plan`: configuration files and the step calculation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lorasmith.errors import ConfigError


def resolve_config(config_path: str | None, extra: list[str], preset: str | None = None):
    """Defaults (or a preset), then the file, then `--key value` overrides: the CLI's one recipe."""
    from lorasmith.config.files import parse_overrides
    from lorasmith.config.sources import resolve_config as resolve

    resolved = resolve(config_path, parse_overrides(extra), preset)
    for note in resolved.notes:
        print(f"note: {note}", file=sys.stderr)
    return resolved


def add_config_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="a .toml/.json configuration (ours, sd-scripts' or kohya_ss GUI's)")
    parser.add_argument("--preset", choices=("8gb", "12gb"), help="start from a VRAM preset before the file")
    parser.set_defaults(accepts_overrides=True)


def _plan(args, extra) -> int:
    from lorasmith import api

    resolved = resolve_config(args.config, extra, args.preset)
    step_plan = api.plan(resolved.config, events=print_event, given=resolved.given)
    print("\n".join(step_plan.lines()))
    return 0


def _new(args, extra) -> int:
    from lorasmith.config.files import save_config

    path = Path(args.file)
    if path.exists() and not args.force:
        raise ConfigError(f"'{path}' already exists; choose another name or add --force")
    config = resolve_config(None, extra, args.preset).config
    title = f"lorasmith configuration from the {args.preset} preset" if args.preset else ""
    save_config(config, path, title=title)
    print(f"wrote {path}")
    return 0


def _keys(args, extra) -> int:
    from lorasmith.config.schema import FIELDS

    for key, spec in FIELDS.items():
        default = spec.default if spec.default is not spec.default_factory else spec.default_factory()
        print(f"{key:34} {spec.metadata['doc']} (default: {default!r})")
    return 0


def _show(args, extra) -> int:
    from lorasmith.config.files import config_to_toml

    print(config_to_toml(resolve_config(args.config, extra, args.preset).config))
    return 0


def print_event(event) -> None:
    from lorasmith.events import FileWritten, Message

    if isinstance(event, Message):
        prefix = "warning: " if event.level == "warning" else ""
        print(f"{prefix}{event.text}", file=sys.stderr if event.level == "warning" else sys.stdout)
    elif isinstance(event, FileWritten):
        print(f"wrote {event.kind}: {event.path}")


def add_commands(subparsers) -> None:
    plan = subparsers.add_parser("plan", help="count the training steps of a configuration (no model needed)")
    add_config_source(plan)
    plan.set_defaults(handler=_plan)

    config = subparsers.add_parser("config", help="create, show and list configurations")
    actions = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="write a commented configuration file to start from")
    new.add_argument("file", help="where to write it (.toml or .json)")
    new.add_argument("--preset", choices=("8gb", "12gb"), help="VRAM preset to start from")
    new.add_argument("--force", action="store_true", help="replace the file if it exists")
    new.set_defaults(handler=_new, accepts_overrides=True)
    show = actions.add_parser("show", help="print the full configuration after file, preset and overrides")
    add_config_source(show)
    show.set_defaults(handler=_show)
    keys = actions.add_parser("keys", help="list every configuration key with its meaning")
    keys.set_defaults(handler=_keys)
