"""Utilities: captioning (WD14, BLIP, basic), the tag editor with its frequency table, the doctor, LoRA tools.

Part 03 of the tutorial: caption the images, look at which tags occur how often, prune or
add tags (the trigger word first), then let the doctor check the folder before training.
Every button calls one `lorasmith.api` tool through `feedback.run_tool`.
"""

from __future__ import annotations

import gradio as gr

from lorasmith.gui.feedback import error_line, run_tool, toast_if_error
from lorasmith.gui.paths import path_chooser

_CAPTION_EXTENSION_INFO = "Caption files are written beside the images with this extension."


def _tags(text: str) -> list[str]:
    """'a, b ,c' -> ['a', 'b', 'c']"""
    return [tag.strip() for tag in (text or "").split(",") if tag.strip()]


def _need_folder(folder: str) -> str | None:
    return None if (folder or "").strip() else toast_if_error(error_line("choose the image folder first"))


# ---- handlers: widget values -> one api call -> what the page shows -----------------------------


# What to do with a caption an image already has (the CLI's default, --overwrite, --append).
EXISTING_CAPTIONS = {"Keep them": "keep", "Overwrite them": "overwrite", "Add the new tags to them": "append"}


def _existing(choice: str) -> dict:
    mode = EXISTING_CAPTIONS.get(choice, choice)
    return {"overwrite": mode == "overwrite", "append": mode == "append"}


def caption_wd14(folder, model, threshold, character_threshold, exclude, trigger, extension, existing,
                 progress=gr.Progress()):
    return _need_folder(folder) or run_tool(
        "caption_wd14", folder.strip(), (model or "").strip() or None, general_threshold=threshold,
        character_threshold=character_threshold, exclude_tags=_tags(exclude), trigger=(trigger or "").strip(),
        caption_extension=extension, **_existing(existing), progress=progress).report


def caption_blip(folder, model, prefix, trigger, beams, max_length, extension, existing, progress=gr.Progress()):
    return _need_folder(folder) or run_tool(
        "caption_blip", folder.strip(), (model or "").strip() or None, prefix=prefix or "",
        trigger=(trigger or "").strip(), num_beams=int(beams), max_length=int(max_length),
        caption_extension=extension, **_existing(existing), progress=progress).report


def caption_basic(folder, text, prefix, postfix, trigger, extension, existing, progress=gr.Progress()):
    # basic captions decorate what is there: "add" means the same as keep
    return _need_folder(folder) or run_tool(
        "caption_basic", folder.strip(), text or "", prefix=prefix or "", postfix=postfix or "",
        trigger=(trigger or "").strip(), caption_extension=extension,
        overwrite=_existing(existing)["overwrite"], progress=progress).report


def tag_table(folder, extension):
    """(status, rows of [tag, count]) for the frequency table."""
    missing = _need_folder(folder)
    if missing:
        return missing, gr.skip()
    outcome = run_tool("tag_frequencies", folder.strip(), caption_extension=extension)
    if outcome.result is None:
        return outcome.status, gr.skip()
    rows = [[tag, count] for tag, count in outcome.result.items()]  # most frequent first
    return f"{len(rows)} different tags.", rows


def edit_tags(folder, extension, add, remove, replace_old, replace_new):
    missing = _need_folder(folder)
    if missing:
        return missing, gr.skip()
    replace = {replace_old.strip(): (replace_new or "").strip()} if (replace_old or "").strip() else None
    outcome = run_tool("edit_tags", folder.strip(), add=_tags(add), remove=_tags(remove), replace=replace,
                       caption_extension=extension)
    if outcome.result is None:
        return outcome.status, gr.skip()
    return outcome.report, tag_table(folder, extension)[1]


def doctor(folder, extension, resolution, progress=gr.Progress()):
    return _need_folder(folder) or run_tool(
        "doctor_dataset", folder.strip(), resolution=resolution, caption_extension=extension, progress=progress).report


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
            resolution = gr.Textbox("512,512", label="Training resolution", info="To check buckets and sizes.")
            check = gr.Button("Check the dataset", variant="primary")
            report = gr.Markdown(elem_id="doctor-report")
            check.click(doctor, inputs=[folder, extension, resolution], outputs=report)
        with gr.Tab("LoRA tools", id="lora-tools"):
            from lorasmith.gui.lora_tools_tab import build_lora_tools_tab

            build_lora_tools_tab()


def _captioning(folder, extension) -> None:
    with gr.Row():
        existing = gr.Radio(list(EXISTING_CAPTIONS), value="Keep them", label="Existing captions",
                            info="Images that already have a caption file.")
        trigger = gr.Textbox(label="Trigger word", info="Put first in every caption, e.g. mychar.")
    with gr.Tabs():
        with gr.Tab("WD14 (tags)"):
            model = gr.Textbox(label="WD14 tagger folder", info="A local folder with model.onnx and "
                               "selected_tags.csv (e.g. a SmilingWolf wd-v1-4 tagger).")
            with gr.Row():
                threshold = gr.Slider(0.05, 1.0, 0.35, step=0.05, label="General tag threshold")
                character = gr.Slider(0.05, 1.0, 0.85, step=0.05, label="Character tag threshold")
            exclude = gr.Textbox(label="Leave out tags", info="Comma separated.")
            wd14 = gr.Button("Caption with WD14", variant="primary")
        with gr.Tab("BLIP (sentences)"):
            blip_model = gr.Textbox(label="BLIP model folder", info="A local BLIP captioning model folder.")
            prefix = gr.Textbox(label="Prefix", info="Text put before every caption.")
            with gr.Row():
                beams = gr.Slider(1, 8, 3, step=1, label="Beams")
                max_length = gr.Slider(10, 150, 75, step=5, label="Maximum length")
            blip = gr.Button("Caption with BLIP", variant="primary")
        with gr.Tab("Basic (fixed text)"):
            text = gr.Textbox(label="Caption", info="Written where an image has no caption yet, e.g. '1girl'.")
            with gr.Row():
                basic_prefix = gr.Textbox(label="Prefix", info="Added before every caption.")
                postfix = gr.Textbox(label="Postfix", info="Added after every caption.")
            basic = gr.Button("Write captions", variant="primary")
    status = gr.Markdown(elem_id="caption-status")
    wd14.click(caption_wd14, inputs=[folder, model, threshold, character, exclude, trigger, extension, existing],
               outputs=status)
    blip.click(caption_blip, inputs=[folder, blip_model, prefix, trigger, beams, max_length, extension, existing],
               outputs=status)
    basic.click(caption_basic, inputs=[folder, text, basic_prefix, postfix, trigger, extension, existing],
                outputs=status)


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
