"""Errors a user can cause and fix. Each message is one line that says what to do.

The library raises these; only the command line turns them into an exit code, and the GUI
shows their text. Anything else that escapes is a bug in lorasmith and keeps its traceback.
"""

from __future__ import annotations


class LorasmithError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(LorasmithError):
    """A configuration key or value is wrong."""


class DatasetError(LorasmithError):
    """The image folders are not laid out as expected or hold unreadable files."""


class ModelError(LorasmithError):
    """A base model or LoRA file is missing, truncated, unsafe or of an unknown kind."""


class TrainingError(LorasmithError):
    """Training cannot go on (NaN loss, a run folder that would be overwritten, ...)."""


class ToolError(LorasmithError):
    """A dataset or testing tool was given something it cannot work with."""
