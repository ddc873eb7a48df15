"""How the page reports outcomes: one readable status line, and a toast for mistakes.

A `LorasmithError` is the user's to fix: its one-line message goes on the page. Tools that
other modules are still adding to `lorasmith.api` are looked up by name at click time, so a
missing one is a readable line too, never an import error at start-up.
"""

from __future__ import annotations

from typing import Callable

from lorasmith.errors import ToolError

ERROR_MARK = "⚠️ "


def error_line(error: Exception | str) -> str:
    """A user's mistake as one readable line (never a traceback)."""
    return f"{ERROR_MARK}{error}"


def is_error(status: str) -> bool:
    return status.startswith(ERROR_MARK)


def toast_if_error(status: str) -> str:
    """Also pop the mistake up as a Gradio warning (inside an event handler); returns `status`."""
    if is_error(status):
        import gradio as gr

        gr.Warning(status.removeprefix(ERROR_MARK))
    return status


def api_function(name: str) -> Callable:
    """`lorasmith.api.<name>`, or a ToolError saying this build does not have it."""
    from lorasmith import api

    function = getattr(api, name, None)
    if function is None:
        raise ToolError(f"this lorasmith build has no '{name}' tool yet; update lorasmith to use it")
    return function
