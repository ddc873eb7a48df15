"""An upload-free path chooser: browse this computer's folders and copy a path into a textbox.

The GUI runs beside the files it trains on, so nothing is uploaded: a `gr.FileExplorer`
rooted at the server's browse folder lists files and folders lazily, and "Use selected path"
writes the chosen path into one of the section's path fields.
"""

from __future__ import annotations

import os

from lorasmith.gui import form


def chosen_path(selection: str | list | None) -> str | None:
    """The one path picked in a FileExplorer (it answers a string, or a list when several).

    A folder is picked by ticking the '.' entry inside it, hence the normalisation."""
    if isinstance(selection, list):
        selection = selection[0] if len(selection) == 1 else None
    return os.path.normpath(selection) if selection else None


def path_chooser(fields: dict, root: str, section: str, labels: dict | None = None):
    """A collapsed 'Browse' panel that fills one of `fields` (key -> Textbox) with a chosen path.

    `labels` names the fields in the 'Put it in' list (default: the form's labels of the keys).
    Returns the click event, for the caller to chain what follows a change (the step plan).
    """
    import gradio as gr

    labels = labels or {w.key: w.label for w in form.FORM}
    keys = list(fields)
    with gr.Accordion(f"Browse this computer for the {section}", open=False):
        gr.Markdown("Tick a file, or the `.` inside a folder to choose the folder itself.")
        explorer = gr.FileExplorer(root_dir=root, file_count="single", glob="**/*",
                                   label=f"Files and folders under {root}", max_height=320, interactive=True,
                                   elem_id="browse-" + section.replace(" ", "-"))
        with gr.Row():
            target = gr.Dropdown(choices=[(labels[k], k) for k in keys], value=keys[0], label="Put it in",
                                 scale=3)
            use = gr.Button("Use selected path", scale=1)

    def use_selected(selection, key):
        path = chosen_path(selection)
        if path is None:
            gr.Warning("Select one file or folder first.")
            return [gr.skip() for _ in keys] if len(keys) > 1 else gr.skip()
        answer = [path if k == key else gr.skip() for k in keys]
        return answer if len(answer) > 1 else answer[0]  # Gradio takes a lone output's value bare

    return use.click(use_selected, inputs=[explorer, target], outputs=[fields[k] for k in keys])
