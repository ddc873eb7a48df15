"""Sample prompts files in sd-scripts' syntax: one prompt per line, options after ` --`.

    # comments and blank lines are skipped
    mychar, 1girl, smiling --n lowres, bad hands --w 512 --h 768 --s 28 --l 7 --d 42 --ss euler_a

Options: --n negative prompt, --w/--h size, --s steps, --l CFG scale, --d seed, --ss sampler.
A malformed or unknown option is a ToolError naming the line, so a typo is never ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from lorasmith.errors import ToolError

DEFAULT_STEPS = 20  # A1111's default; sd-scripts uses 30
DEFAULT_CFG = 7.0
DEFAULT_SIZE = 512


@dataclass(frozen=True)
class SamplePrompt:
    """One image to make: the prompt and its settings (None seed: the caller picks one)."""

    prompt: str
    negative_prompt: str = ""
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    steps: int = DEFAULT_STEPS
    cfg_scale: float = DEFAULT_CFG
    seed: int | None = None
    sampler: str | None = None  # None: the run's sample_sampler
    guidance: float | None = None  # Flux.1 dev's distilled guidance (sd-scripts' --g); None: 3.5


# option -> (field, parser, what a value looks like)
_OPTIONS = {
    "n": ("negative_prompt", str, "text"),
    "w": ("width", int, "a width in pixels, a multiple of 8"),
    "h": ("height", int, "a height in pixels, a multiple of 8"),
    "s": ("steps", int, "a number of steps, 1 or more"),
    "l": ("cfg_scale", float, "a CFG scale such as 7"),
    "d": ("seed", int, "a whole-number seed"),
    "ss": ("sampler", str, "a sampler name"),
    "g": ("guidance", float, "a Flux guidance scale such as 3.5"),
}
_SPLIT = re.compile(r"(?:^|\s)--(?=[a-zA-Z])")


def parse_prompt_line(line: str, number: int = 1) -> SamplePrompt:
    """One prompts-file line -> SamplePrompt; `number` (1-based) names the line in errors."""
    parts = _SPLIT.split(line.strip())
    prompt = parts[0].strip()
    if not prompt:
        raise ToolError(f"prompts line {number}: no prompt before the options; start the line with the prompt")
    values: dict = {}
    for part in parts[1:]:
        name, _, text = part.strip().partition(" ")
        values.update(_parse_option(name, text.strip(), number))
    return _checked(SamplePrompt(prompt, **values), number)


def _parse_option(name: str, text: str, number: int) -> dict:
    if name not in _OPTIONS:
        known = ", ".join(f"--{k}" for k in _OPTIONS)
        raise ToolError(f"prompts line {number}: unknown option '--{name}'; use {known}")
    field, kind, looks = _OPTIONS[name]
    if kind is str:
        return {field: text}
    try:
        return {field: kind(text)}
    except ValueError:
        raise ToolError(f"prompts line {number}: '--{name}' needs {looks}, got {text!r}") from None


def _checked(prompt: SamplePrompt, number: int) -> SamplePrompt:
    from lorasmith.sampling.samplers import SAMPLER_TABLE

    for name, value in (("w", prompt.width), ("h", prompt.height)):
        if value < 8 or value % 8:
            raise ToolError(f"prompts line {number}: '--{name} {value}' must be a multiple of 8 (e.g. 512)")
    if prompt.steps < 1:
        raise ToolError(f"prompts line {number}: '--s {prompt.steps}' must be 1 or more steps")
    if prompt.sampler is not None and prompt.sampler not in SAMPLER_TABLE:
        raise ToolError(f"prompts line {number}: unknown sampler '{prompt.sampler}'; use one of "
                        f"{', '.join(SAMPLER_TABLE)}")
    return prompt


def parse_prompts(text: str) -> list[SamplePrompt]:
    """Every prompt of a prompts file's text, in order."""
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            prompts.append(parse_prompt_line(line, number))
    return prompts


def read_prompts_file(path: str | Path) -> list[SamplePrompt]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ToolError(f"prompts file '{path}' does not exist; fix sample_prompts or create the file")
    prompts = parse_prompts(path.read_text(encoding="utf-8", errors="replace"))
    if not prompts:
        raise ToolError(f"prompts file '{path}' holds no prompt; write one prompt per line")
    return prompts


def is_prompt_text(value: str) -> bool:
    """Whether sample_prompts holds the prompts themselves (as the kohya_ss GUI stores them), not a file name."""
    text = value.strip()
    if not text:
        return False
    if "\n" in text or " --" in text:
        return True
    looks_like_path = any(sep in text for sep in "/\\") or Path(text).suffix.lower() in (".txt", ".toml", ".json")
    return not looks_like_path


def run_prompts_file(sample_prompts: str, output_dir: Path) -> Path:
    """The prompts file a run samples from: the file named, or the prompts text written to
    `<output_dir>/sample/prompt.txt` as the kohya_ss GUI does (another name if that file holds other prompts)."""
    if not is_prompt_text(sample_prompts):
        return Path(sample_prompts).expanduser()
    from lorasmith.config.files import write_text_atomically

    text = sample_prompts.strip() + "\n"
    folder = output_dir / "sample"
    for index in range(1, 1000):
        path = folder / ("prompt.txt" if index == 1 else f"prompt-{index}.txt")
        if not path.exists() or path.read_text(encoding="utf-8", errors="replace") == text:
            write_text_atomically(path, text)
            return path
    raise ToolError(f"{folder} holds too many prompt files; remove some")


def with_defaults(prompt: SamplePrompt, **values) -> SamplePrompt:
    """A copy with the given fields set where the prompt left them None."""
    return replace(prompt, **{k: v for k, v in values.items() if getattr(prompt, k) is None})
