"""Where a configuration's values come from: defaults, a VRAM preset, a file, the command line.

The one recipe the CLI uses (`resolve_config`), and the set of keys the user actually gave, which
decides two things: which setting wins where two compete (a `max_train_steps` given alone decides the
length, as in sd-scripts, where `max_train_epochs` has no default), and which settings that lose are
worth a line (`config.losing.losing_settings`). A key counts as given when the command line names it,
or a file sets it to something other than the default (our own saved files list every key).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from lorasmith.config.schema import FIELDS, TrainConfig, from_dict, with_values


@dataclass
class ResolvedConfig:
    config: TrainConfig
    given: frozenset[str] = frozenset()  # keys the user set (file or command line), not defaults or the preset
    notes: list[str] = field(default_factory=list)  # e.g. kohya_ss settings that do not apply


def non_default_keys(config: TrainConfig) -> set[str]:
    """Keys whose value differs from the default: what a form or a saved file can tell of what was set."""
    defaults = TrainConfig()
    return {key for key in FIELDS if getattr(config, key) != getattr(defaults, key)}


def apply_length_rule(config: TrainConfig, given: frozenset[str]) -> TrainConfig:
    """`max_train_steps` given without `max_train_epochs`: the steps decide (sd-scripts has no default epochs)."""
    if "max_train_steps" in given and "max_train_epochs" not in given and config.max_train_steps > 0:
        return dataclasses.replace(config, max_train_epochs=0)
    return config


def load_file(path: str | Path, base: TrainConfig) -> tuple[TrainConfig, set[str], list[str]]:
    """(`base` with the file's values, the keys the file gave, notes such as kohya_ss keys that do not apply)."""
    from lorasmith.config.files import read_config_values

    values, notes = read_config_values(path)
    from_file = from_dict(values, where=f" in {Path(path).name}")
    return with_values(base, values), non_default_keys(from_file), notes  # from the defaults: the file's keys


def resolve_config(config_path: str | None = None, overrides: dict | None = None,
                   preset: str | None = None) -> ResolvedConfig:
    """Defaults (or a preset), then the file, then `--key value` overrides."""
    from lorasmith.config.presets import load_preset

    config = load_preset(preset) if preset else TrainConfig()
    given: set[str] = set()
    notes: list[str] = []
    if config_path:
        config, given, notes = load_file(config_path, config)
    overrides = overrides or {}
    config = with_values(config, overrides)
    given |= set(overrides)
    frozen = frozenset(given)
    return ResolvedConfig(apply_length_rule(config, frozen), frozen, notes)
