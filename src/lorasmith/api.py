"""The one library API that the command line and the GUI both call.

Each function takes typed arguments (a `TrainConfig`, paths, numbers), reports progress
through an `events.EventSink`, returns plain results and raises `LorasmithError` for user
mistakes. Heavy imports (torch, diffusers, onnxruntime) happen inside the functions so that
importing this module stays fast.
"""

from __future__ import annotations
