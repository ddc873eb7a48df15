"""Utilities: captioning (WD14, BLIP, basic), the tag editor with its frequency table, the doctor.

Part 03 of the tutorial: caption the images, look at which tags occur how often, prune or
add tags (the trigger word first), then let the doctor check the folder before training.
Every button calls one `lorasmith.api` tool through `feedback.run_tool`.
"""

from __future__ import annotations

import gradio as gr

from lorasmith.gui.feedback import error_line, report_markdown, run_tool, toast_if_error
from lorasmith.gui.paths import path_chooser

_CAPTION_EXTENSION_INFO = "Caption files are written beside the images with this extension."


def _tags(text: str) -> list[str]:
    """'a, b ,c' -> ['a', 'b', 'c']"""
    return [tag.strip() for tag in (text or "").split(",") if tag.strip()]


def _need_folder(folder: str) -> str | None:
    return None if (folder or "").strip() else toast_if_error(error_line("choose the image folder first"))


# ---- handlers: widget values -> one api call -> what the page shows -----------------------------


def caption_wd14(folder, threshold, character_threshold, prepend, extension, overwrite, progress=gr.Progress()):
    return _need_folder(folder) or run_tool(
        "caption_wd14", folder.strip(), threshold=threshold, character_threshold=character_threshold,
        prepend=_tags(prepend), caption_extension=extension, overwrite=overwrite, progress=progress).status


def caption_blip(folder, prefix, beams, max_length, extension, overwrite, progress=gr.Progress()):
    return _need_folder(folder) or run_tool(
        "caption_blip", folder.strip(), prefix=prefix, num_beams=int(beams), max_length=int(max_length),
        caption_extension=extension, overwrite=overwrite, progress=progress).status


def caption_basic(folder, text, extension, overwrite, progress=gr.Progress()):
    return _need_folder(folder) or run_tool(
        "caption_basic", folder.strip(), text, caption_extension=extension, overwrite=overwrite,
        progress=progress).status


def tag_table(folder, extension):
    """(status, rows of [tag, count]) for the frequency table."""
    missing = _need_folder(folder)
    if missing:
        return missing, gr.skip()
    outcome = run_tool("tag_frequencies", folder.strip(), caption_extension=extension)
    if outcome.result is None:
        return outcome.status, gr.skip()
    rows = [[tag, count] for tag, count in _as_pairs(outcome.result)]
    return f"{len(rows)} different tags.", rows


def _as_pairs(frequencies) -> list:
    items = frequencies.items() if hasattr(frequencies, "items") else frequencies
    return sorted(((str(tag), int(count)) for tag, count in items), key=lambda pair: (-pair[1], pair[0]))


def edit_tags(folder, extension, add, remove, replace_old, replace_new):
    missing = _need_folder(folder)
    if missing:
        return missing, gr.skip()
    replace = {replace_old.strip(): replace_new.strip()} if (replace_old or "").strip() else {}
    outcome = run_tool("edit_tags", folder.strip(), add=_tags(add), remove=_tags(remove), replace=replace,
                       caption_extension=extension)
    if outcome.result is None:
        return outcome.status, gr.skip()
    return outcome.status, tag_table(folder, extension)[1]


def doctor(folder, extension, progress=gr.Progress()):
    missing = _need_folder(folder)
    if missing:
        return missing
    outcome = run_tool("doctor_dataset", folder.strip(), caption_extension=extension, progress=progress)
    return outcome.status if outcome.result is None else report_markdown(outcome.result)


# ---- layout -------------------------------------------------------------------------------------------


def build_utilities_tab(browse_root: str) -> None:
    with gr.Row(equal_height=True):
        folder = gr.Textbox(label="Image folder", scale=4, elem_id="util-folder",
                            info="A '<repeats>_<name>' folder of images, or the training folder holding them.")
        extension = gr.Textbox(".txt", label="Caption extension", info=_CAPTION_EXTENSION_INFO, scale=1)
    path_chooser({"folder": folder}, browse_root, "image folder", labels={"folder": "Image folder"})
    with gr.Tabs():
        with gr.Tab("Captioning", id="captioning"):
            _captioning(folder, extension)
        with gr.Tab("Tag editor", id="tag-editor"):
            _tag_editor(folder, extension)
        with gr.Tab("Dataset doctor", id="doctor"):
            check = gr.Button("Check the dataset", variant="primary")
            report = gr.Markdown(elem_id="doctor-report")
            check.click(doctor, inputs=[folder, extension], outputs=report)


def _captioning(folder, extension) -> None:
    status = gr.Markdown(elem_id="caption-status")
    overwrite = gr.Checkbox(False, label="Overwrite existing captions")
    with gr.Tabs():
        with gr.Tab("WD14 (tags)"):
            with gr.Row():
                threshold = gr.Slider(0.05, 1.0, 0.35, step=0.05, label="General tag threshold")
                character = gr.Slider(0.05, 1.0, 0.85, step=0.05, label="Character tag threshold")
            prepend = gr.Textbox(label="Tags to put first", info="Comma separated, e.g. your trigger word.")
            run = gr.Button("Caption with WD14", variant="primary")
            run.click(caption_wd14, inputs=[folder, threshold, character, prepend, extension, overwrite],
                      outputs=status)
        with gr.Tab("BLIP (sentences)"):
            prefix = gr.Textbox(label="Prefix", info="Text put before every caption, e.g. your trigger word.")
            with gr.Row():
                beams = gr.Slider(1, 8, 3, step=1, label="Beams")
                max_length = gr.Slider(10, 150, 75, step=5, label="Maximum length")
            run = gr.Button("Caption with BLIP", variant="primary")
            run.click(caption_blip, inputs=[folder, prefix, beams, max_length, extension, overwrite],
                      outputs=status)
        with gr.Tab("Basic (fixed text)"):
            text = gr.Textbox(label="Caption", info="The same caption for every image, e.g. 'mychar, 1girl'.")
            run = gr.Button("Write captions", variant="primary")
            run.click(caption_basic, inputs=[folder, text, extension, overwrite], outputs=status)


def _tag_editor(folder, extension) -> None:
    status = gr.Markdown(elem_id="tags-status")
    count = gr.Button("Count tags")
    table = gr.Dataframe(headers=["tag", "count"], datatype=["str", "number"], interactive=False,
                         label="Tag frequencies", max_height=360, elem_id="tag-table")
    with gr.Row():
        add = gr.Textbox(label="Add tags", info="Comma separated; added at the front of every caption.")
        remove = gr.Textbox(label="Remove tags", info="Comma separated.")
    with gr.Row():
        old = gr.Textbox(label="Replace tag")
        new = gr.Textbox(label="with")
    apply = gr.Button("Apply to every caption", variant="primary")
    count.click(tag_table, inputs=[folder, extension], outputs=[status, table])
    apply.click(edit_tags, inputs=[folder, extension, add, remove, old, new], outputs=[status, table])
