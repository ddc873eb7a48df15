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


def _preset_names() -> tuple[str, ...]:
    from lorasmith.config.presets import PRESETS

    return tuple(PRESETS)


def add_config_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="a .toml/.json configuration (ours, sd-scripts' or kohya_ss GUI's)")
    parser.add_argument("--preset", choices=_preset_names(), help="start from a VRAM preset before the file")
    parser.set_defaults(accepts_overrides=True)


def _plan(args, extra) -> int:
    from lorasmith import api

    vram, extra = _vram_out_of(extra, args.vram)
    resolved = resolve_config(args.config, extra, args.preset)
    step_plan = api.plan(resolved.config, events=print_event, given=resolved.given, memory=True)
    print("\n".join(step_plan.lines()))
    if vram is None and (free := api.gpu_free_bytes()) is not None:
        vram = free / 2**30
    if vram is not None and step_plan.memory is not None:
        print("\n".join(fit_lines(step_plan.memory, api.fit_changes(resolved.config, vram), vram)))
    return 0


def _vram_out_of(extra: list[str], vram: float | None) -> tuple[float | None, list[str]]:
    """`--vram N` among the `--key value` overrides (it may come after them): (N, the overrides without it)."""
    for index, token in enumerate(extra):
        value = token.partition("=")[2] if token.startswith("--vram=") else None
        if token == "--vram" and index + 1 < len(extra):
            value, rest = extra[index + 1], extra[:index] + extra[index + 2:]
        elif value is not None:
            rest = extra[:index] + extra[index + 1:]
        else:
            continue
        try:
            return float(value), rest
        except ValueError:
            raise ConfigError(f"--vram takes the GPU's memory in GB (e.g. --vram 8), got {value!r}") from None
    return vram, extra


def fit_lines(estimate, changes, vram: float) -> list[str]:
    """What `plan --vram N` prints: whether it fits, else the changes in order with their estimates."""
    if estimate.fits(vram):
        return [f"fits {vram:g} GB: yes ({estimate.total / 2**30:.2f} GB)"]
    out = [f"does not fit {vram:g} GB ({estimate.total / 2**30:.2f} GB); the cheapest changes, in order:"]
    out += [f"  {number}. {change.line(vram)}" for number, change in enumerate(changes, 1)]
    if not changes or not changes[-1].estimate.fits(vram):
        out.append(f"  none of these fits {vram:g} GB: a larger GPU, or a smaller rank or model")
    return out


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
    plan.add_argument("--vram", type=float, metavar="GB",
                      help="the GPU's memory in GB: list the cheapest changes that make the run fit "
                           "(default: the free memory of the CUDA GPU, if any)")
    plan.set_defaults(handler=_plan)

    config = subparsers.add_parser("config", help="create, show and list configurations")
    actions = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="write a commented configuration file to start from")
    new.add_argument("file", help="where to write it (.toml or .json)")
    new.add_argument("--preset", choices=_preset_names(), help="VRAM preset to start from")
    new.add_argument("--force", action="store_true", help="replace the file if it exists")
    new.set_defaults(handler=_new, accepts_overrides=True)
    show = actions.add_parser("show", help="print the full configuration after file, preset and overrides")
    add_config_source(show)
    show.set_defaults(handler=_show)
    keys = actions.add_parser("keys", help="list every configuration key with its meaning")
    keys.set_defaults(handler=_keys)
