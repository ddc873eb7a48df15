"""Progress events from long jobs (training, captioning, generation) to whoever listens.

The library never prints: it calls an `EventSink` with small dataclasses. The terminal
shell renders them with tqdm; the GUI's worker forwards them to the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Union


@dataclass(frozen=True)
class Message:
    """A line of information for the user (a plan, a saved file, advice)."""

    text: str
    level: str = "info"  # "info" | "warning"


@dataclass(frozen=True)
class Progress:
    """A unit of work finished: `done` of `total` in the job named `task`."""

    task: str
    done: int
    total: int
    metrics: dict = field(default_factory=dict)  # e.g. {"loss": 0.12, "lr": 1e-4, "epoch": 2}


@dataclass(frozen=True)
class FileWritten:
    """A file the user will want: a LoRA, a sample image, a grid, a state folder."""

    path: str
    kind: str  # "lora" | "sample" | "state" | "grid" | "caption" | "config" | ...


Event = Union[Message, Progress, FileWritten]


class EventSink(Protocol):
    def __call__(self, event: Event) -> None: ...


def ignore_events(event: Event) -> None:
    """The default sink: library calls work silently unless someone listens."""


def collect_events(into: list) -> Callable[[Event], None]:
    """A sink that appends events to a list (tests, the GUI's polling)."""
    return into.append
