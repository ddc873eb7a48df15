"""Utilities: captioning (WD14, BLIP, basic), the tag editor with its frequency table, the doctor."""

from __future__ import annotations


def build_utilities_tab(browse_root: str) -> None:
    import gradio as gr

    gr.Markdown("Utilities arrive with the dataset tools.")
