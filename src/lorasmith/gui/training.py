"""What the LoRA > Training tab's buttons do: plain functions of the form's values.

Every handler takes the form as one list of values in `form.FORM` order and answers with
new values and/or one status line. A `LorasmithError` becomes that line (and a toast);
nothing here trains or reads datasets itself: it calls `lorasmith.api` and the config module.
"""

from __future__ import annotations

import dataclasses
import html
import os
import threading
from dataclasses import dataclass
from typing import Sequence

from lorasmith import api
from lorasmith.config.schema import TrainConfig, with_values
from lorasmith.errors import ConfigError, LorasmithError, TrainingError
from lorasmith.gui import form
from lorasmith.gui.feedback import ERROR_MARK, error_line, is_error, load_pictures, text_block
from lorasmith.gui.runner import RunState, TrainingRunner


@dataclass
class FormAnswer:
    """A status line for the page and, when the form changes, its new values (FORM order)."""

    status: str
    values: list | None = None

    @property
    def failed(self) -> bool:
        return is_error(self.status)


# ---- the configuration bar -----------------------------------------------------------------


def open_config(path: str) -> FormAnswer:
    from lorasmith.config.files import load_config

    if not (path or "").strip():
        return FormAnswer(error_line("type the path of a .toml or .json configuration to open"))
    try:
        config, notes = load_config(path.strip())
    except LorasmithError as error:
        return FormAnswer(error_line(error))
    lines = [f"Opened {path.strip()}."] + [f"note: {note}" for note in notes]
    return FormAnswer("  \n".join(lines), form.config_to_values(config))


def save_config(path: str, values: Sequence) -> FormAnswer:
    """Save the form (TOML or JSON by extension); a value the trainer would refuse is noted, not blocking."""
    from lorasmith.config.checks import check_config
    from lorasmith.config.files import save_config as save

    if not (path or "").strip():
        return FormAnswer(error_line("type a file name ending in .toml or .json to save to"))
    try:
        config = form.values_to_config(values)
        written = save(config, path.strip())
    except LorasmithError as error:
        return FormAnswer(error_line(error))
    status = f"Saved {written}."
    try:
        check_config(config, check_paths=False)
    except ConfigError as error:
        status += f"  \n{ERROR_MARK}fix before training: {error}"
    return FormAnswer(status)


def apply_preset(name: str, values: Sequence) -> FormAnswer:
    """The preset's parameters on top of the form; the model and folders stay as entered."""
    from lorasmith.config.presets import PRESETS, preset_values

    try:
        config = with_values(form.values_to_config(values), preset_values(name))
    except LorasmithError as error:
        return FormAnswer(error_line(error))
    return FormAnswer(f"Preset applied: {PRESETS[name]}.", form.config_to_values(config))


def load_demo(output_dir: str) -> FormAnswer:
    """The embedded tiny model and bundled dataset, ready to Start; an earlier demo run is replaced."""
    from lorasmith import api

    try:
        config = api.demo_config(output_dir)
        if api.is_previous_demo(config):
            config = with_values(config, {"overwrite": True})
    except LorasmithError as error:
        return FormAnswer(error_line(error))
    return FormAnswer(f"Demo loaded: a tiny model and the bundled dataset, writing to {config.output_dir}. "
                      "Press Start training.", form.config_to_values(config))


# ---- the step plan and the run ---------------------------------------------------------------


_IMPORTING = threading.Lock()


def libraries_imported() -> None:
    """diffusers resolves its names lazily and not thread-safely, and handlers run side by side (the page's
    estimate while "Load demo" builds the tiny model): the names lorasmith uses are resolved once, under a
    lock, before the page is served (gui.app.launch) and again (at no cost) before each estimate."""
    with _IMPORTING:
        import diffusers
        import transformers

        for name in ("AutoencoderKL", "DDPMScheduler", "UNet2DConditionModel", "FluxTransformer2DModel",
                     "FlowMatchEulerDiscreteScheduler"):
            getattr(diffusers, name)
        for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel"):
            getattr(transformers, name)


def plan_text(values: Sequence) -> str:
    """The live step calculation, or what stops it (missing folder, wrong value) as one line."""
    from lorasmith import api
    from lorasmith.events import collect_events

    try:
        config = form.values_to_config(values)
        events: list = []
        step_plan = api.plan(config, events=collect_events(events))
    except LorasmithError as error:
        return error_line(error)
    warnings = [f"warning: {event.text}" for event in events if getattr(event, "level", "") == "warning"]
    return f"**Total steps: {step_plan.total_steps}**\n\n" + text_block(step_plan.lines() + warnings)


def memory_text(values: Sequence) -> str:
    """The live GPU memory estimate (the VRAM planner: the architecture on meta, no weights), or why not."""
    from lorasmith.memory.disk_cache import measurements_dir
    from lorasmith.memory.estimate import GIB

    libraries_imported()
    try:
        estimate = api.memory_estimate(form.values_to_config(values))
    except LorasmithError as error:
        return error_line(error)
    fits = [size for size in (8, 12, 16, 24) if estimate.fits(size)]
    card = f"fits {fits[0]} GB and more" if fits else "needs more than 24 GB"
    kept = ", kept on disk for the next time" if measurements_dir() else ""
    return (f"**GPU memory: about {estimate.total / GIB:.1f} GB ({card})**\n\n"
            + text_block(estimate.lines() + estimate.fit_lines()
                         + [f"(estimated in {estimate.seconds:.1f} s{kept}; `lorasmith plan --vram N` lists changes)"]))


def remember_form(values: Sequence) -> dict:
    """The form as this browser keeps it between reloads: key -> widget value (keys survive new fields)."""
    return dict(zip(form.FORM_KEYS, values))


def remembered_form(saved: dict | None) -> list | None:
    """The form values (FORM order) kept by `remember_form`, the defaults where a key is missing; None if none."""
    if not saved:
        return None
    defaults = form.config_to_values(TrainConfig())
    return [saved.get(key, default) for key, default in zip(form.FORM_KEYS, defaults)]


def resume_training(runner: TrainingRunner, values: Sequence) -> str:
    """Resume: the form's run goes on from its newest complete state (resume = auto)."""
    try:
        config = form.values_to_config(values)
        found = api.resumable_run(config)
        if found is None:
            return error_line(TrainingError(f"no paused or stopped run of '{config.output_name}' with a saved "
                                            f"state in '{config.output_dir}'; Start trains from the beginning"))
        runner.start(dataclasses.replace(config, resume="auto"))
    except LorasmithError as error:
        return error_line(error)
    return f"Resuming from {os.path.basename(found['state'])} (step {found['step']})."


def resume_offer(values: Sequence, state: RunState) -> str:
    """After a pause, a stop with the state saved, a crash or a reboot: say that the form's run can go on."""
    if state.active:
        return ""
    try:
        found = api.resumable_run(form.values_to_config(values))
    except LorasmithError:
        return ""
    if found is None:
        return ""
    how = {"paused": "was paused", "interrupted": "was stopped", "failed": "failed",
           "crashed": "ended without finishing (a crash or a shutdown)"}.get(found["status"], "did not finish")
    return (f"The run in this output folder {how} at step {found['step']}; its training state "
            f"{os.path.basename(found['state'])} is saved. Press **Resume** to go on from there.")


def start_training(runner: TrainingRunner, values: Sequence) -> str:
    from lorasmith.config.checks import check_config

    try:
        config = form.values_to_config(values)
        warnings = check_config(config, for_training=True)
        runner.start(config)
    except LorasmithError as error:
        return error_line(error)
    return "  \n".join(["Training started."] + [f"warning: {w}" for w in warnings])


# ---- the run panel ------------------------------------------------------------------------------


def progress_html(state: RunState) -> str:
    """A progress bar with 'done / total', the latest loss and the run's status line."""
    label = {"idle": "Idle", "running": "Training", "stopping": "Stopping", "pausing": "Pausing",
             "finished": "Finished", "stopped": "Stopped", "paused": "Paused", "failed": "Failed"}[state.status]
    if state.total:
        loss = f", loss {state.losses[-1][1]:.4f}" if state.losses else ""
        text = f"{label}: {state.task} step {state.done} / {state.total}{loss}"
        bar = f'<progress value="{state.done}" max="{state.total}" style="width:100%"></progress>'
    else:
        text, bar = label, '<progress style="width:100%"></progress>' if state.active else ""
    return (f'<div id="run-progress">{bar}<div class="run-progress-text">{html.escape(text)}</div>'
            f'<div class="run-detail"><b>{html.escape(state.detail)}</b></div></div>')


def files_markdown(state: RunState) -> str:
    # save_last_n_epochs deletes older epoch files as the run goes: list only what is still there.
    present = [(kind, path) for kind, path in state.files if os.path.exists(path)]
    if not present:
        return "No files written yet."
    return "**Files written**\n\n" + "\n".join(f"- {kind}: `{path}`" for kind, path in present)


def loss_frame(state: RunState):
    """The loss chart's data: a row per step that reported a loss, and per validation, each in its series."""
    import pandas as pd

    rows = [(step, loss, "training") for step, loss in state.losses]
    rows += [(step, loss, "validation") for step, loss in state.validation_losses]
    # Numeric types even when empty: the chart keeps the axis types of its first data.
    return pd.DataFrame(rows, columns=["step", "loss", "series"]).astype({"step": "int64", "loss": "float64"})


def sample_images(state: RunState, limit: int = 24) -> list:
    """The newest sample images for the gallery."""
    return load_pictures(state.samples[-limit:])
