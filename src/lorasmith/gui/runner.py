"""The GUI's training worker: one run at a time in a separate process, state kept on the server.

Why a `multiprocessing` *spawn* process rather than a `lorasmith train` subprocess: the worker
calls `api.train` directly and sends the library's own event dataclasses back through a queue,
so there is no second, JSON-lines protocol to keep in step with the CLI's output; Stop is a
shared `Event` that the trainer polls like a `threading.Event` (it saves and returns, no
signals, the same on Windows); Pause is a second `Event` (stop with the state saved); a user's
mistake comes back as its one-line message. The worker also stops cleanly, saving, when it gets
SIGTERM/SIGHUP/SIGINT itself or when the GUI process dies under it (killed, crashed). Spawn (not
fork) gives the run a fresh interpreter: no Gradio threads or locks copied into it, and the
memory of torch and the model is handed back when the run ends.

The page never owns the run: `TrainingRunner` keeps a `RunState` that a thread fills from the
queue, and every page (a reload, a second tab) polls `snapshot()`.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import queue as queue_module
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable

from lorasmith.config.schema import TrainConfig
from lorasmith.errors import LorasmithError, TrainingError
from lorasmith.events import FileWritten, Message, Progress

_MAX_MESSAGES = 200


@dataclass
class RunState:
    """What the page shows about the current (or last) run. `version` changes with every update."""

    status: str = "idle"  # idle | running | stopping | pausing | finished | stopped | paused | failed
    detail: str = "No training has run since the GUI started."
    task: str = ""
    done: int = 0
    total: int = 0
    losses: list = field(default_factory=list)  # (step, loss)
    validation_losses: list = field(default_factory=list)  # (step, validation loss), with held-out images
    samples: list = field(default_factory=list)  # image paths, oldest first
    files: list = field(default_factory=list)  # (kind, path)
    messages: list = field(default_factory=list)
    version: int = 0

    @property
    def active(self) -> bool:
        return self.status in ("running", "stopping", "pausing")


def train_in_worker(config: TrainConfig, events, stop, pause) -> None:
    """The default worker job: `api.train` with the queue as its event sink."""
    from lorasmith import api

    api.train(config, events=events, stop=stop, pause=pause)


def _stop_when_parent_dies(stop) -> None:
    """A GUI killed outright (SIGKILL, a crash) cannot ask for a stop: the worker notices and stops itself."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns once the parent process is gone
        stop.set()

    threading.Thread(target=watch, daemon=True, name="lorasmith-parent-watch").start()


def _worker_main(job: Callable, config: TrainConfig, out, stop, pause) -> None:
    """Runs in the spawned process: every outcome becomes one message on `out`."""
    from lorasmith.stop_signals import StopOnSignals

    _stop_when_parent_dies(stop)
    try:
        with StopOnSignals(stop):  # Ctrl-C in the GUI's terminal, a closed terminal, `kill`: save and end
            job(config, out.put, stop, pause)
    except LorasmithError as error:
        out.put(("error", str(error)))
    except KeyboardInterrupt:  # a second signal: ended at once
        out.put(("error", "ended at once by a second signal; the files written before are intact"))
    except BaseException as error:  # a bug: the page gets one line, the terminal the traceback
        traceback.print_exc()
        out.put(("error", f"training crashed ({type(error).__name__}: {error}); the terminal shows the details"))
    else:
        out.put(("done", ""))


class TrainingRunner:
    """Starts, stops and watches one training process at a time."""

    def __init__(self, job: Callable = train_in_worker) -> None:
        self._job = job
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._state = RunState()
        self._process = None
        self._stop = None
        self._pause = None

    # ---- commands from the page -------------------------------------------------------------

    def start(self, config: TrainConfig) -> None:
        """Start a run; raises TrainingError while another one is active."""
        with self._lock:
            if self._state.active:
                raise TrainingError("a training run is already going; stop it (or wait) before starting another")
            self._state = RunState(status="running", detail="Starting the training process...",
                                   version=self._state.version + 1)
            out = self._context.Queue()
            self._stop, self._pause = self._context.Event(), self._context.Event()
            self._process = self._context.Process(
                target=_worker_main, args=(self._job, config, out, self._stop, self._pause),
                name="lorasmith-train", daemon=True)
            self._process.start()
        threading.Thread(target=self._watch, args=(self._process, out), daemon=True,
                         name="lorasmith-train-watch").start()

    def stop(self) -> str:
        """Ask the trainer to save and end; returns a line for the page."""
        return self._ask(self._stop, "stopping", "Stopping: the trainer saves the LoRA, then ends.",
                         "Stop requested: the trainer saves the LoRA, then ends.")

    def pause(self) -> str:
        """Ask the trainer to stop at the next step with its state saved, for Resume to go on exactly."""
        return self._ask(self._pause, "pausing", "Pausing: the trainer saves the LoRA and its state, then ends.",
                         "Pause requested: the trainer saves the LoRA and its state at the next step; Resume "
                         "goes on from there.")

    def _ask(self, event, status: str, detail: str, reply: str) -> str:
        with self._lock:
            if self._state.status in ("stopping", "pausing"):
                return "Already stopping: the trainer is saving the LoRA."
            if not self._state.active:
                return "No training is running."
            event.set()
            self._update(status=status, detail=detail)
        return reply

    def snapshot(self) -> RunState:
        with self._lock:
            state = self._state
            return dataclasses.replace(state, losses=list(state.losses), samples=list(state.samples),
                                       validation_losses=list(state.validation_losses),
                                       files=list(state.files), messages=list(state.messages))

    def shutdown(self, timeout: float = 120.0) -> None:
        """When the GUI exits: ask a running trainer to save and end, and give it `timeout` seconds."""
        if self._stop is not None and self._state.active:
            self._stop.set()
        self.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker process has ended (tests, shutdown); True when it has."""
        process = self._process
        if process is None:
            return True
        process.join(timeout)
        return not process.is_alive()

    # ---- the watcher thread -----------------------------------------------------------------

    def _watch(self, process, out) -> None:
        outcome = None
        while outcome is None:
            try:
                item = out.get(timeout=0.25)
            except queue_module.Empty:
                if not process.is_alive():
                    outcome = self._drain(out) or ("error", "the training process ended unexpectedly "
                                                   f"(exit code {process.exitcode}); the terminal shows why")
                continue
            outcome = self._take(item)
        process.join(5)
        self._finish(*outcome)

    def _drain(self, out) -> tuple | None:
        """Items still queued after the process ended (the queue's feeder thread may lag)."""
        while True:
            try:
                outcome = self._take(out.get(timeout=0.5))
            except queue_module.Empty:
                return None
            if outcome is not None:
                return outcome

    def _take(self, item) -> tuple | None:
        """Apply one queued item; returns (kind, text) when it ends the run."""
        if isinstance(item, tuple):
            return item
        with self._lock:
            self._apply_event(item)
        return None

    def _apply_event(self, event) -> None:
        state = self._state
        if isinstance(event, Progress) and "validation_loss" in event.metrics:  # a point, not a task to show
            state.validation_losses.append((event.done, float(event.metrics["validation_loss"])))
        elif isinstance(event, Progress):
            state.task, state.done, state.total = event.task, event.done, event.total
            loss = event.metrics.get("loss")
            if loss is not None:
                state.losses.append((event.done, float(loss)))
        elif isinstance(event, FileWritten):
            state.files.append((event.kind, event.path))
            if event.kind == "sample":
                state.samples.append(event.path)
        elif isinstance(event, Message):
            prefix = "warning: " if event.level == "warning" else ""
            state.messages = (state.messages + [prefix + event.text])[-_MAX_MESSAGES:]
        state.version += 1

    def _finish(self, kind: str, text: str) -> None:
        with self._lock:
            if kind == "error":
                self._update(status="failed", detail=f"Training failed: {text}")
            elif self._pause is not None and self._pause.is_set():
                saved = any(kind == "state" for kind, _ in self._state.files)
                self._update(status="paused", detail="Paused: the LoRA and the training state were saved; Resume "
                             "goes on from there." if saved else "Paused before the first step ended: nothing "
                             "was trained, so nothing was saved; Start begins the run.")
            elif self._stop is not None and self._stop.is_set():
                self._update(status="stopped", detail="Stopped: the LoRA was saved where training had got to.")
            else:
                self._update(status="finished", detail="Training finished.")

    def _update(self, **changes) -> None:
        """Change the state (caller holds the lock) and bump its version."""
        for name, value in changes.items():
            setattr(self._state, name, value)
        self._state.version += 1
