"""How the page reports outcomes: one readable status line, and a toast for mistakes.

A `LorasmithError` is the user's to fix: its one-line message goes on the page. Tools that
other modules are still adding to `lorasmith.api` are looked up by name at click time, so a
missing one is a readable line too, never an import error at start-up.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

from lorasmith.errors import LorasmithError, ToolError
from lorasmith.events import FileWritten, Message, Progress

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


@dataclass
class ToolOutcome:
    """What a tool call gave back: its result (None when it failed), a status line, files written."""

    result: Any
    status: str
    files: list = field(default_factory=list)

    @property
    def report(self) -> str:
        """The result's report (its `.lines()`) or, when the call failed, the line saying why."""
        return self.status if self.result is None else report_markdown(self.result)


def run_tool(name: str, *args, progress: Callable | None = None, **kwargs) -> ToolOutcome:
    """Call `lorasmith.api.<name>`; its messages become the status, its Progress drives `progress`
    (a `gr.Progress`), a LorasmithError becomes one readable line."""
    messages: list[str] = []
    files: list[str] = []

    def sink(event) -> None:
        if isinstance(event, Progress) and progress is not None and event.total:
            progress((event.done, event.total), desc=event.task)
        elif isinstance(event, Message):
            messages.append(("warning: " if event.level == "warning" else "") + event.text)
        elif isinstance(event, FileWritten):
            files.append(event.path)

    try:
        function = api_function(name)
        if "events" in inspect.signature(function).parameters:
            kwargs["events"] = sink
        result = function(*args, **kwargs)
    except LorasmithError as error:
        return ToolOutcome(None, toast_if_error(error_line(error)), files)
    return ToolOutcome(result, "  \n".join(messages[-12:]) or "Done.", files)


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
