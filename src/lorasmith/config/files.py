"""Configuration files (TOML and JSON) and `--key value` overrides.

Our own files are strict: an unknown key is an error that names the closest valid key.
kohya_ss GUI JSON files (the kind tutorials hand out) are recognised and translated by
`kohya_ss.py`; the keys that do not apply come back as one note instead of an error. So do
sd-scripts' own arguments that have no meaning here (`sd_scripts.py`), e.g. `xformers`.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from pathlib import Path

from lorasmith.config import kohya_ss, sd_scripts
from lorasmith.config.schema import FIELDS, TrainConfig, field_type, unknown_key_error
from lorasmith.errors import ConfigError

_GROUP_TITLES = {
    "model": "Source model", "folders": "Folders", "basic": "Parameters (basic)",
    "advanced": "Parameters (advanced)", "samples": "Samples and validation",
}


def read_config_values(path: str | Path) -> tuple[dict, list[str]]:
    """Key -> value from a file, and notes (e.g. kohya_ss keys that do not apply)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"configuration file '{path}' does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text)
        elif path.suffix.lower() == ".toml":
            values = _flatten_tables(tomllib.loads(text))
        else:
            raise ConfigError(f"configuration file '{path.name}' must end in .toml or .json")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"configuration file '{path.name}' is not valid {path.suffix[1:].upper()}: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"configuration file '{path.name}' must hold key = value pairs")
    if kohya_ss.looks_like_kohya_gui(values):
        return kohya_ss.translate(values)
    return sd_scripts.split_unused(values)


def _flatten_tables(values: dict) -> dict:
    """sd-scripts' TOML configs group keys in tables ([model_arguments], ...): flatten one level."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key not in FIELDS:
            flat.update(value)
        else:
            flat[key] = value
    return flat


def load_config(path: str | Path, base: TrainConfig | None = None) -> tuple[TrainConfig, list[str]]:
    """Load a TOML/JSON file (ours, sd-scripts' or kohya_ss GUI's) on top of `base` or the defaults."""
    from lorasmith.config.sources import apply_length_rule, load_file

    config, given, notes = load_file(path, base or TrainConfig())
    return apply_length_rule(config, frozenset(given)), notes


def parse_overrides(args: list[str]) -> dict:
    """['--network_dim', '64', '--gradient_checkpointing', '--optimizer_args', 'a=1', 'b=2'] -> dict."""
    values: dict = {}
    index = 0
    while index < len(args):
        token = args[index]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"expected --<key> <value>, got '{token}'")
        key, _, inline = token[2:].partition("=")
        key = key.replace("-", "_")
        if key not in FIELDS:
            raise unknown_key_error(key, " on the command line")
        index += 1
        following = []
        while index < len(args) and not args[index].startswith("--"):
            following.append(args[index])
            index += 1
        if inline:
            following.insert(0, inline)
        kind = field_type(key)
        if kind is list:
            values[key] = following
        elif not following and kind is bool:
            values[key] = True  # a bare flag turns a switch on
        elif len(following) == 1:
            values[key] = following[0]
        else:
            raise ConfigError(f"--{key} takes one value, got {len(following)}: {' '.join(following) or 'none'}")
    return values


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(str(v)) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def config_to_toml(config: TrainConfig, title: str = "") -> str:
    """A commented TOML file: every key with its one-line explanation, grouped as in the GUI."""
    lines = [f"# {title}" if title else "# lorasmith LoRA training configuration",
             "# Keys are sd-scripts' argument names. Run: lorasmith plan THIS_FILE", ""]
    for group, heading in _GROUP_TITLES.items():
        lines.append(f"# ---- {heading} ----")
        for key, spec in FIELDS.items():
            if spec.metadata["group"] != group:
                continue
            doc = spec.metadata["doc"]
            choices = spec.metadata["choices"]
            lines.append(f"# {doc}" + (f" [{' | '.join(choices)}]" if choices else ""))
            value = getattr(config, key)
            lines.append(f"# {key} =" if value is None else f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def default_file_mode() -> int:
    """rw for everyone the umask allows (mkstemp alone would leave files readable by the owner only)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomically(path: Path, text: str) -> None:
    """Write via a temporary file and a rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temp, default_file_mode())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def save_config(config: TrainConfig, path: str | Path, title: str = "") -> Path:
    """Save as TOML (commented) or JSON, chosen by the file's extension."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps({k: getattr(config, k) for k in FIELDS}, indent=2, ensure_ascii=False) + "\n"
    elif suffix == ".toml":
        text = config_to_toml(config, title)
    else:
        raise ConfigError(f"save the configuration as .toml or .json, not '{path.name}'")
    write_text_atomically(path, text)
    return path
