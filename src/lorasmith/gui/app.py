"""The web GUI's layout: LoRA > Training, Utilities and Testing, as in the tutorial.

`build_app` places the tabs (each tab module builds and wires its own part) and returns the
Blocks; `launch` serves it on this computer only unless told otherwise. The page holds no
training or dataset logic: handlers call `lorasmith.api`, and training runs in the worker
process that `runner.TrainingRunner` owns, so a browser reload finds the run where it is.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from lorasmith import __version__
from lorasmith.gui.runner import TrainingRunner
from lorasmith.gui.training_tab import TrainingTab
from lorasmith.gui.utilities_tab import build_utilities_tab
from lorasmith.gui.testing_tab import build_testing_tab

# System fonts only: the default theme would fetch Google Fonts, and the GUI must work offline.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])


def build_app(runner: TrainingRunner | None = None, browse_root: str | Path | None = None,
              demo_root: str | Path | None = None) -> gr.Blocks:
    """The whole page. `browse_root` is where the path choosers start; demo runs go under `demo_root`."""
    runner = runner or TrainingRunner()
    browse_root = str(Path(browse_root or Path.home()).expanduser().resolve())
    demo_root = Path(demo_root or Path.cwd() / "demo_output").expanduser().resolve()
    with gr.Blocks(title="lorasmith", analytics_enabled=False) as app:
        gr.Markdown(f"## lorasmith {__version__}: character LoRAs for Stable Diffusion")
        with gr.Tabs():
            with gr.Tab("LoRA", id="lora"):
                with gr.Tabs():
                    TrainingTab(runner, browse_root, demo_root).build(app)
            with gr.Tab("Utilities", id="utilities"):
                build_utilities_tab(browse_root)
            with gr.Tab("Testing", id="testing"):
                build_testing_tab(browse_root)
    return app


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, auth: tuple[str, str] | None = None,
           inbrowser: bool = False, block: bool = True, quiet: bool = False):
    """Serve `app`; never through a public share link. `block=False` returns at once (tests)."""
    from lorasmith.gui.training import libraries_imported

    libraries_imported()  # before two handlers can race through diffusers' lazy imports
    return app.launch(server_name=host, server_port=port, share=False, auth=auth, inbrowser=inbrowser,
                      prevent_thread_lock=not block, show_error=False, quiet=quiet, theme=THEME,
                      footer_links=["settings"], mcp_server=False)
