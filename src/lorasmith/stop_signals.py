"""Turn the signals that end a run from outside into a clean stop, for the shells (CLI, GUI worker).

Ctrl-C (SIGINT), `kill`/`docker stop`/a scheduler's time limit/a cloud preemption (SIGTERM) and a closed
terminal (SIGHUP) all mean "stop": the first one sets the run's stop event, so the trainer saves the LoRA of
the step reached (and the state, with save_state) at the end of that step, and the process exits with
128 + the signal's number. A second one raises KeyboardInterrupt at once: the saves are atomic, so whatever
was being written is dropped and the files written before stay intact.

The handler only sets an event or raises: printing from a signal handler can break a write in progress.
The library never installs this itself; a shell does, around `api.train`.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopOnSignals:
    """Context manager: the first stop signal sets `stop`, a second raises KeyboardInterrupt."""

    def __init__(self, stop) -> None:
        self.stop = stop
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.stop.set()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def interrupt_on_signals() -> None:
    """For a process with no run of its own (the GUI server): SIGTERM and SIGHUP end it as Ctrl-C does,
    through KeyboardInterrupt, so that its `finally` blocks (stopping a run cleanly) still run."""
    for signum in STOP_SIGNALS:
        if signum != signal.SIGINT:
            signal.signal(signum, signal.default_int_handler)
