"""LoRA > Training > Dataset preparation: lay raw images out as kohya folders, then fill Folders."""

from __future__ import annotations



def build_prepare_tab(browse_root: str, fields: dict) -> list:
    """Returns the events that fill the form's folders (the step plan follows them)."""
    import gradio as gr

    gr.Markdown("Dataset preparation arrives with `lorasmith.api.prepare_dataset`.")
    return []
