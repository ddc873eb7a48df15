"""feedback.run_tool: every tool call ends in a readable line, never a traceback."""

from __future__ import annotations

import pytest

from lorasmith import api
from lorasmith.errors import ToolError
from lorasmith.events import FileWritten, Message, Progress
from lorasmith.gui.feedback import run_tool

# The handlers also pop their mistakes up as Gradio toasts, which outside a page are UserWarnings.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")


def test_messages_and_progress_are_passed_on(monkeypatch):
    def tool(folder, events, scale=1):
        events(Progress("caption", 1, 2))
        events(Message(f"captioned {folder}"))
        events(Message("2 images had no faces", "warning"))
        events(FileWritten("/img/a.txt", "caption"))
        return scale * 2

    monkeypatch.setattr(api, "fake_tool", tool, raising=False)
    seen = []
    outcome = run_tool("fake_tool", "/img", scale=3, progress=lambda fraction, desc: seen.append((fraction, desc)))
    assert outcome.result == 6
    assert outcome.status == "captioned /img  \nwarning: 2 images had no faces"
    assert seen == [((1, 2), "caption")]


def test_a_tool_without_events_and_a_user_mistake(monkeypatch):
    monkeypatch.setattr(api, "fake_quiet", lambda folder: {"a": 1}, raising=False)
    assert run_tool("fake_quiet", "/img").result == {"a": 1}

    def refuses(folder):
        raise ToolError(f"'{folder}' holds no images")

    monkeypatch.setattr(api, "fake_refuses", refuses, raising=False)
    outcome = run_tool("fake_refuses", "/empty")
    assert outcome.result is None and outcome.status == "⚠️ '/empty' holds no images"
