"""Testing: generate with a LoRA, an X/Y grid across epochs and weights, the best-epoch report."""

from __future__ import annotations


def build_testing_tab(browse_root: str) -> None:
    import gradio as gr

    gr.Markdown("Testing arrives with the sampling tools.")
