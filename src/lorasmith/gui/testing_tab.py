"""Testing: generate with a LoRA, an X/Y grid across a run's epochs and weights, the best epoch.

Part 04 of the tutorial: try each saved epoch at a few weights on the same prompt and seed,
and keep the one that looks like the character without burning. Each button calls one
`lorasmith.api` tool through `feedback.run_tool`; images are shown as pictures (not paths), so
they may come from any run folder.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from lorasmith.config.schema import SAMPLERS
from lorasmith.gui.feedback import error_line, load_pictures, run_tool, toast_if_error
from lorasmith.gui.paths import path_chooser


def _numbers(text: str) -> list[float]:
    """'0.6, 0.8 1' -> [0.6, 0.8, 1.0]; raises ValueError on a word that is not a number."""
    return [float(part) for part in (text or "").replace(",", " ").split()]


def as_pictures(result) -> list:
    """A tool's image result (a path, a PIL image, or a list or object holding them) as gallery items."""
    from PIL import Image

    items = getattr(result, "images", None) or getattr(result, "paths", None) or getattr(result, "path", None) or result
    items = items if isinstance(items, (list, tuple)) else [items]
    pictures = [item for item in items if isinstance(item, Image.Image)]
    return pictures + load_pictures([item for item in items if isinstance(item, (str, Path))])


# ---- handlers ------------------------------------------------------------------------------------


def generate(base_model, lora, weight, prompt, negative, steps, cfg, seed, size, sampler, output_dir,
             progress=gr.Progress()):
    outcome = run_tool(
        "generate", base_model.strip(), prompt, loras=[(lora.strip(), float(weight))] if lora.strip() else [],
        negative_prompt=negative, steps=int(steps), cfg_scale=float(cfg), seed=int(seed), width=int(size),
        height=int(size), sampler=sampler, output_dir=output_dir.strip() or None, progress=progress)
    return outcome.status, (as_pictures(outcome.result) if outcome.result is not None else gr.skip())


def grid(run_dir, base_model, prompt, weights, seed, progress=gr.Progress()):
    try:
        weight_list = _numbers(weights)
    except ValueError:
        return toast_if_error(error_line(f"weights must be numbers such as '0.6, 0.8, 1.0', got {weights!r}")), \
            gr.skip()
    outcome = run_tool("grid", run_dir.strip(), prompt, weights=weight_list, seed=int(seed),
                       base_model=base_model.strip() or None, progress=progress)
    return outcome.status, (as_pictures(outcome.result) if outcome.result is not None else gr.skip())


def evaluate(run_dir, base_model, progress=gr.Progress()):
    """(report, validation-loss plot) of every saved epoch of a run."""
    outcome = run_tool("evaluate", run_dir.strip(), base_model=base_model.strip() or None, progress=progress)
    plot = getattr(outcome.result, "plot_path", None)
    return outcome.report, (load_pictures([plot])[0][0] if plot else None)


def open_run(run_dir):
    """A run that measured its validation loss opens on its best epoch: named, its file ready to generate with,
    the grid in front."""
    from lorasmith import api

    found = api.best_epoch(run_dir.strip()) if (run_dir or "").strip() else None
    if found is None:
        return gr.skip(), gr.skip(), gr.skip()
    epoch, path = found
    return (f"Best epoch of this run (lowest validation loss during training): **{epoch}**, `{path}`. "
            "Make the grid to check it against its neighbours.", path, gr.Tabs(selected="grid"))


# ---- layout -----------------------------------------------------------------------------------------


def build_testing_tab(browse_root: str) -> None:
    with gr.Row(equal_height=True):
        run_dir = gr.Textbox(label="Training run (output folder)", scale=3, elem_id="test-run-dir",
                             info="The output folder of a run: its LoRA files per epoch and its record.")
        base_model = gr.Textbox(label="Base model", scale=3, elem_id="test-base-model",
                                info="Empty: the base model the run was trained on.")
    path_chooser({"run_dir": run_dir, "base_model": base_model}, browse_root, "run or model",
                 labels={"run_dir": "Training run", "base_model": "Base model"})
    prompt = gr.Textbox(label="Prompt", info="Start with the trigger word, e.g. 'mychar, 1girl, smiling'.")
    status = gr.Markdown(elem_id="testing-status")
    with gr.Tabs() as tabs:
        with gr.Tab("Generate", id="generate"):
            lora = _generate_panel(base_model, prompt, status)
        with gr.Tab("X/Y grid", id="grid"):
            weights = gr.Textbox("0.6, 0.8, 1.0", label="LoRA weights (columns)", info="Rows are the saved epochs.")
            grid_seed = gr.Number(1234, precision=0, label="Seed")
            make = gr.Button("Make the grid", variant="primary")
            grid_image = gr.Gallery(label="Epochs x weights", columns=1, height=520)
            make.click(grid, inputs=[run_dir, base_model, prompt, weights, grid_seed], outputs=[status, grid_image])
        with gr.Tab("Best epoch", id="best-epoch"):
            gr.Markdown("A validation loss for every saved epoch (fixed noise and timesteps): the lowest is "
                        "usually the epoch to keep. Check it against the grid.")
            run = gr.Button("Report the best epoch", variant="primary")
            with gr.Row():
                report = gr.Markdown(elem_id="best-epoch-report")
                plot = gr.Image(label="Validation loss per epoch", type="pil", interactive=False)
            run.click(evaluate, inputs=[run_dir, base_model], outputs=[report, plot])
    run_dir.change(open_run, inputs=run_dir, outputs=[status, lora, tabs])


def _generate_panel(base_model, prompt, status) -> None:
    with gr.Row(equal_height=True):
        lora = gr.Textbox(label="LoRA file", scale=3, info="A .safetensors LoRA; empty generates without one.")
        weight = gr.Slider(0, 1.5, 1.0, step=0.05, label="LoRA weight", scale=2)
    negative = gr.Textbox(label="Negative prompt")
    with gr.Row():
        steps = gr.Number(20, precision=0, label="Steps")
        cfg = gr.Number(7.0, label="CFG scale")
        seed = gr.Number(1234, precision=0, label="Seed")
        size = gr.Number(512, precision=0, label="Size (px)")
        sampler = gr.Dropdown(list(SAMPLERS), value="euler_a", label="Sampler")
    output_dir = gr.Textbox(label="Save images to", info="Empty: images are shown only.")
    run = gr.Button("Generate", variant="primary")
    images = gr.Gallery(label="Images", columns=4, height=360)
    run.click(generate, inputs=[base_model, lora, weight, prompt, negative, steps, cfg, seed, size, sampler,
                                output_dir], outputs=[status, images])
    return lora
