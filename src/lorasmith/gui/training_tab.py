"""Layout and wiring of LoRA > Training: configuration bar, the form's sections, plan, run panel.

The tutorial's order: a configuration bar (Open / Save / Save as, presets), then the tabs
Source model, Folders, Parameters and Dataset preparation; below them the live step
calculation and Start / Stop with progress, loss chart, samples and files written.
What each button does lives in `training.py`; this module only places and connects.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from lorasmith.config.presets import PRESETS
from lorasmith.config.schema import TrainConfig
from lorasmith.gui import form, training
from lorasmith.gui.feedback import is_error, toast_if_error
from lorasmith.gui.paths import path_chooser
from lorasmith.gui.prepare_tab import build_prepare_tab
from lorasmith.gui.runner import TrainingRunner

POLL_SECONDS = 1.0


def _form_outputs(answer: training.FormAnswer) -> list:
    """[status, *form values]: the form is left alone when the answer carries no values."""
    toast_if_error(answer.status)
    values = answer.values if answer.values is not None else [gr.skip()] * len(form.FORM)
    return [answer.status, *values]


def _plan(*values) -> tuple[str, dict]:
    """The step calculation, and the form for this browser to keep (every change passes here)."""
    return training.plan_text(values), training.remember_form(values)


def _memory(*values) -> str:
    """The GPU memory estimate of the form's settings (cached: a changed learning rate costs nothing)."""
    return training.memory_text(values)


def _restore(saved: dict) -> list:
    """[*form values, plan] as this browser left them before a reload; nothing changes on a first visit."""
    values = training.remembered_form(saved)
    if values is None:
        return [gr.skip()] * (len(form.FORM) + 1)
    return [*values, training.plan_text(values)]


class TrainingTab:
    """Builds the tab inside the current Blocks and keeps the components its handlers need."""

    def __init__(self, runner: TrainingRunner, browse_root: str, demo_root: Path) -> None:
        self.runner = runner
        self.browse_root = browse_root
        self.demo_root = demo_root
        self.fields: dict = {}
        self.filled_by_tools: list = []  # events that change the form without typing: the plan follows

    def build(self, app: gr.Blocks) -> None:
        with gr.Tab("Training", id="training"):
            # The run lives on the server; the form in this browser's storage, so a reload keeps both.
            self.saved_form = gr.BrowserState({})
            self._config_bar()
            with gr.Tabs():
                self._sections()
            with gr.Row():
                self.plan = gr.Markdown("Set the image folder (Folders tab) to see the step calculation.",
                                        elem_id="step-plan")
                self.memory = gr.Markdown("The GPU memory estimate follows the settings.", elem_id="memory-estimate")
            self._run_panel()
        self.inputs = form.in_form_order(self.fields)
        self._wire_config_bar()
        self._wire_plan()
        self._wire_run()
        restored = app.load(self._restore_with_offer, inputs=self.saved_form,
                            outputs=[*self.inputs, self.plan, self.resume_offer], show_progress="hidden")
        restored.then(_memory, inputs=self.inputs, outputs=[self.memory], show_progress="hidden")

    def _restore_with_offer(self, saved: dict) -> list:
        """The form as this browser left it, and, after a crash or a reboot, the offer to resume its run."""
        restored = _restore(saved)
        values = training.remembered_form(saved)
        offer = training.resume_offer(values, self.runner.snapshot()) if values is not None else gr.skip()
        return [*restored, offer]

    # ---- layout ---------------------------------------------------------------------------

    def _config_bar(self) -> None:
        with gr.Group():
            with gr.Row(equal_height=True):
                self.config_path = gr.Textbox(label="Configuration file", placeholder="e.g. C:/lora/mychar.toml",
                                              info="A .toml or .json file (ours, sd-scripts' or a kohya_ss GUI "
                                                   "config).", scale=5, elem_id="config-path")
                self.open_button = gr.Button("Open", scale=1, elem_id="config-open")
                self.save_button = gr.Button("Save", scale=1, elem_id="config-save")
                self.save_as_button = gr.Button("Save as", scale=1, elem_id="config-save-as")
            with gr.Row(visible=False, equal_height=True) as self.save_as_row:
                self.save_as_path = gr.Textbox(label="Save as", placeholder="new file name ending in .toml or .json",
                                               scale=5, elem_id="config-save-as-path")
                self.save_as_confirm = gr.Button("Save to this file", variant="primary", scale=1,
                                                 elem_id="config-save-as-confirm")
                self.save_as_cancel = gr.Button("Cancel", scale=1)
            with gr.Row(equal_height=True):
                self.preset = gr.Dropdown(choices=[(text, name) for name, text in PRESETS.items()], value=None,
                                          label="Preset", info="Fills the parameters for your GPU's VRAM; the model "
                                          "and folders stay as they are.", scale=5, elem_id="preset")
                self.demo_button = gr.Button("Load demo", scale=1, elem_id="load-demo")
        self.config_status = gr.Markdown(elem_id="config-status")

    def _sections(self) -> None:
        defaults = TrainConfig()
        with gr.Tab("Source model", id="source-model"):
            self.fields.update(form.build_group("model", defaults))
            self.filled_by_tools.append(path_chooser(
                {"pretrained_model_name_or_path": self.fields["pretrained_model_name_or_path"]},
                self.browse_root, "checkpoint"))
        with gr.Tab("Folders", id="folders"):
            self.fields.update(form.build_group("folders", defaults))
            self.filled_by_tools.append(path_chooser(
                {k: self.fields[k] for k in ("train_data_dir", "reg_data_dir", "output_dir", "logging_dir")},
                self.browse_root, "folders"))
        with gr.Tab("Parameters", id="parameters"):
            for group, is_open in (("basic", True), ("advanced", False), ("flux", False), ("samples", False)):
                with gr.Accordion(form.GROUP_TITLES[group], open=is_open):
                    self.fields.update(form.build_group(group, defaults))
        with gr.Tab("Dataset preparation", id="dataset-preparation"):
            self.filled_by_tools += build_prepare_tab(self.browse_root, self.fields)

    def _run_panel(self) -> None:
        with gr.Row():
            self.start_button = gr.Button("Start training", variant="primary", elem_id="start-training")
            self.pause_button = gr.Button("Pause", elem_id="pause-training")
            self.resume_button = gr.Button("Resume", elem_id="resume-training")
            self.stop_button = gr.Button("Stop", variant="stop", elem_id="stop-training")
        self.run_status = gr.Markdown(elem_id="run-status")
        self.resume_offer = gr.Markdown(elem_id="resume-offer")
        self.progress = gr.HTML(training.progress_html(self.runner.snapshot()))
        with gr.Row():
            self.loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", height=260, scale=3,
                                       elem_id="loss-plot")
            self.gallery = gr.Gallery(label="Sample images", columns=4, height=260, scale=2,
                                      elem_id="run-samples")
        self.files = gr.Markdown("No files written yet.", elem_id="run-files")
        with gr.Accordion("Training log", open=False):
            self.log = gr.Textbox(lines=8, max_lines=16, show_label=False, autoscroll=True)
        self.seen = gr.State({})
        self.timer = gr.Timer(POLL_SECONDS)

    # ---- wiring ---------------------------------------------------------------------------

    def _then_plan(self, event) -> None:
        # always_last: a chained event still running when the next one comes (a cold estimate takes seconds)
        # runs once more with the newest values; gradio's default ("once") would drop the newer one
        event.then(_plan, inputs=self.inputs, outputs=[self.plan, self.saved_form], show_progress="hidden",
                   trigger_mode="always_last")
        # its own branch: the estimate neither waits for the plan nor is skipped when the plan's queue is busy
        event.then(_memory, inputs=self.inputs, outputs=[self.memory], show_progress="hidden",
                   trigger_mode="always_last")

    def _fill(self, handler, inputs: list, event_source) -> None:
        """`handler(...) -> FormAnswer` fills the form and the status line, then the plan and the estimate.

        The estimate reads the filled values from a server-side State: a chained event can start before the
        page has taken in a hundred new field values, and would estimate the form as it was."""
        filled = gr.State(None)

        def fill(*args):
            answer = handler(*args)
            return [*_form_outputs(answer), answer.values]

        event = event_source(fill, inputs=inputs, outputs=[self.config_status, *self.inputs, filled])
        event.then(_plan, inputs=self.inputs, outputs=[self.plan, self.saved_form], show_progress="hidden",
                   trigger_mode="always_last")
        event.then(lambda values, *now: _memory(*(values if values is not None else now)),
                   inputs=[filled, *self.inputs], outputs=[self.memory], show_progress="hidden",
                   trigger_mode="always_last")

    def _wire_config_bar(self) -> None:
        self._fill(training.open_config, [self.config_path], self.open_button.click)
        self._fill(lambda name, *values: training.apply_preset(name, values), [self.preset, *self.inputs],
                   self.preset.input)
        self._fill(lambda: training.load_demo(str(self.demo_root)), [], self.demo_button.click)

        def save(path, *values):
            if not (path or "").strip():  # nothing opened yet: Save works as Save as
                return "Choose a file name to save to.", gr.Row(visible=True)
            return toast_if_error(training.save_config(path, values).status), gr.skip()

        self.save_button.click(save, inputs=[self.config_path, *self.inputs],
                               outputs=[self.config_status, self.save_as_row])
        self.save_as_button.click(lambda path: (gr.Row(visible=True), path), inputs=self.config_path,
                                  outputs=[self.save_as_row, self.save_as_path])
        self.save_as_cancel.click(lambda: gr.Row(visible=False), outputs=self.save_as_row)

        def save_as(path, *values):
            answer = training.save_config(path, values)
            if is_error(toast_if_error(answer.status)):
                return answer.status, gr.skip(), gr.skip()
            return answer.status, path.strip(), gr.Row(visible=False)

        self.save_as_confirm.click(save_as, inputs=[self.save_as_path, *self.inputs],
                                   outputs=[self.config_status, self.config_path, self.save_as_row])

    def _wire_plan(self) -> None:
        for event in self.filled_by_tools:
            self._then_plan(event)
        gr.on([component.input for component in self.inputs], _plan, inputs=self.inputs,
              outputs=[self.plan, self.saved_form], trigger_mode="always_last", show_progress="hidden")
        # the estimate beside it, on its own queue: the step plan never waits for a first measurement
        gr.on([component.input for component in self.inputs], _memory, inputs=self.inputs,
              outputs=[self.memory], trigger_mode="always_last", show_progress="hidden")

    def _wire_run(self) -> None:
        def start(*values):
            return toast_if_error(training.start_training(self.runner, values))

        def resume(*values):
            return toast_if_error(training.resume_training(self.runner, values)), ""

        self.start_button.click(start, inputs=self.inputs, outputs=self.run_status)
        self.resume_button.click(resume, inputs=self.inputs, outputs=[self.run_status, self.resume_offer])
        self.pause_button.click(self.runner.pause, outputs=self.run_status)
        self.stop_button.click(self.runner.stop, outputs=self.run_status)
        self.timer.tick(self._poll, inputs=[self.seen, *self.inputs], show_progress="hidden",
                        outputs=[self.progress, self.loss_plot, self.gallery, self.files, self.log, self.seen,
                                 self.resume_offer])

    def _poll(self, seen: dict, *values) -> list:
        """Refresh the run panel from the server's state; unchanged parts are skipped. The resume offer is
        looked for once per page and whenever a run ends (a pause, a stop), not every second."""
        state = self.runner.snapshot()
        if seen.get("version") == state.version:
            return [gr.skip()] * 7
        gallery = gr.skip() if seen.get("samples") == len(state.samples) else training.sample_images(state)
        return [
            training.progress_html(state), training.loss_frame(state), gallery,
            training.files_markdown(state), "\n".join(state.messages),
            {"version": state.version, "samples": len(state.samples)}, training.resume_offer(values, state),
        ]
