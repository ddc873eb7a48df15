"""How the page reports outcomes: one readable status line, and a toast for mistakes.

A `LorasmithError` is the user's to fix: its one-line message goes on the page; anything
else is a bug in lorasmith and keeps its traceback (Gradio shows "Error", the terminal why).
"""

from __future__ import annotations

import html
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lorasmith.errors import LorasmithError
from lorasmith.events import Message, Progress

ERROR_MARK = "⚠️ "


def error_line(error: Exception | str) -> str:
    """A user's mistake as one readable line (never a traceback).

    Escaped for HTML: Markdown and Gradio's toasts would take '<repeats>_<name>' in a message for
    tags and drop it, cutting the line where the user needs it most.
    """
    return f"{ERROR_MARK}{html.escape(str(error), quote=False)}"


def is_error(status: str) -> bool:
    return status.startswith(ERROR_MARK)


def toast_if_error(status: str) -> str:
    """Also pop the mistake up as a Gradio warning (inside an event handler); returns `status`."""
    if is_error(status):
        import gradio as gr

        gr.Warning(status.removeprefix(ERROR_MARK))
    return status


@dataclass
class ToolOutcome:
    """What a tool call gave back: its result (None when it failed) and a status line."""

    result: Any
    status: str

    @property
    def report(self) -> str:
        """The result's report (its `.lines()`) or, when the call failed, the line saying why."""
        return self.status if self.result is None else report_markdown(self.result)


def run_tool(name: str, *args, progress: Callable | None = None, **kwargs) -> ToolOutcome:
    """Call `lorasmith.api.<name>`; its messages become the status, its Progress drives `progress`
    (a `gr.Progress`), a LorasmithError becomes one readable line."""
    from lorasmith import api

    messages: list[str] = []

    def sink(event) -> None:
        if isinstance(event, Progress) and progress is not None and event.total:
            progress((event.done, event.total), desc=event.task)
        elif isinstance(event, Message):
            messages.append(("warning: " if event.level == "warning" else "") + event.text)

    try:
        function = getattr(api, name)
        if "events" in inspect.signature(function).parameters:
            kwargs["events"] = sink
        result = function(*args, **kwargs)
    except LorasmithError as error:
        return ToolOutcome(None, toast_if_error(error_line(error)))
    return ToolOutcome(result, "  \n".join(html.escape(m, quote=False) for m in messages[-12:]) or "Done.")


def text_block(lines: list[str]) -> str:
    """Lines shown as a fixed-width block in a Markdown component."""
    return "```text\n" + "\n".join(lines) + "\n```"


def report_markdown(report) -> str:
    """A tool's report (anything with `.lines()`, else its text) as a fixed-width block."""
    return text_block(report.lines() if hasattr(report, "lines") else str(report).splitlines())


def load_pictures(paths) -> list:
    """Image files as (picture, file name) for a Gallery. Pictures, not paths, so that Gradio may
    show them from any folder (it serves paths only from its own allowed places); a file that
    cannot be read (yet) is left out."""
    from PIL import Image

    shown = []
    for path in paths:
        try:
            with Image.open(path) as image:
                shown.append((image.copy(), Path(path).name))
        except OSError:
            continue
    return shown
