"""Work that runs beside the main thread while a run starts, its result a Future.

A training run starts with seconds of single-threaded work (Python imports, building modules,
reading tensors) that leave a core idle. Jobs started here use it: the checkpoint's hash, the
latents. Each runs in a daemon thread, so a run that fails or is stopped never waits for one;
its error is raised where its result is asked for.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


def run_in_background(function: Callable[..., Any], *args: Any, name: str, lowest_priority: bool = False,
                      **kwargs: Any) -> Future:
    """`function(*args, **kwargs)` in a daemon thread; `lowest_priority` for work nothing waits on soon."""
    future: Future = Future()

    def work() -> None:
        if lowest_priority:
            _lowest_priority()
        try:
            future.set_result(function(*args, **kwargs))
        except BaseException as error:  # handed to whoever asks for the result
            future.set_exception(error)

    threading.Thread(target=work, name=f"lorasmith-{name}", daemon=True).start()
    return future


def _lowest_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # Linux: a thread's own nice value
    except (AttributeError, OSError):  # other systems: run at normal priority
        pass
