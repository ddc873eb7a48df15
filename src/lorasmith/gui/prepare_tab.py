"""LoRA > Training > Dataset preparation: lay raw images out as kohya folders, then fill Folders.

kohya_ss's tool, as the tutorial shows it: a trigger word (instance prompt), a class, the
raw images and their repeats, optional regularisation images, and a destination; the tool
writes '<repeats>_<trigger> <class>' folders (and model/log folders) and the page copies
those paths into the Folders section.
"""

from __future__ import annotations

import gradio as gr

from lorasmith.gui.feedback import error_line, run_tool, toast_if_error
from lorasmith.gui.paths import path_chooser

# The Folders keys the preparation fills, in the order the handler answers them.
FILLED_KEYS = ("train_data_dir", "reg_data_dir", "output_dir", "logging_dir")


def prepare(trigger, class_name, images, repeats, reg_images, reg_repeats, destination, progress=gr.Progress()):
    """api.prepare_project (kohya_ss's img/ reg/ model/ log/ layout) -> [status, *FILLED_KEYS values];
    the folders are left as they are when it fails."""
    skip = [gr.skip()] * len(FILLED_KEYS)
    if not (trigger or "").strip() or not (images or "").strip() or not (destination or "").strip():
        return [toast_if_error(error_line("give the trigger word, the images folder and a destination")), *skip]
    outcome = run_tool(
        "prepare_project", images.strip(), destination.strip(), trigger.strip(), (class_name or "").strip(),
        repeats=int(repeats), reg_images_dir=(reg_images or "").strip() or None, reg_repeats=int(reg_repeats),
        progress=progress)
    if outcome.result is None:
        return [outcome.status, *skip]
    folders = [str(getattr(outcome.result, key) or "") for key in FILLED_KEYS]
    return [outcome.report + "\nThe Folders section now points at these folders.", *folders]


def build_prepare_tab(browse_root: str, fields: dict) -> list:
    """Place the tool; returns the events that fill the form's folders (the step plan follows them)."""
    gr.Markdown("Copy your images into the kohya layout (`<repeats>_<trigger> <class>`) and point the "
                "Folders section at it.")
    with gr.Row():
        trigger = gr.Textbox(label="Trigger word (instance prompt)", placeholder="e.g. mychar")
        class_name = gr.Textbox(label="Class prompt", placeholder="e.g. girl")
    with gr.Row(equal_height=True):
        images = gr.Textbox(label="Training images", info="The folder holding your raw images.", scale=3)
        repeats = gr.Number(10, precision=0, minimum=1, label="Repeats", scale=1)
    with gr.Row(equal_height=True):
        reg_images = gr.Textbox(label="Regularisation images (optional)", scale=3)
        reg_repeats = gr.Number(1, precision=0, minimum=1, label="Regularisation repeats", scale=1)
    destination = gr.Textbox(label="Destination training folder",
                             info="Gets img/, reg/, model/ and log/ folders, as kohya_ss's tool makes them.")
    path_chooser({"images": images, "reg_images": reg_images, "destination": destination}, browse_root,
                 "dataset folders", labels={"images": "Training images", "reg_images": "Regularisation images",
                                    "destination": "Destination training folder"})
    run = gr.Button("Prepare training data", variant="primary")
    status = gr.Markdown(elem_id="prepare-status")
    event = run.click(prepare, inputs=[trigger, class_name, images, repeats, reg_images, reg_repeats, destination],
                      outputs=[status, *(fields[key] for key in FILLED_KEYS)])
    return [event]
