"""Modules built on the meta device (no memory, no random initialisation), safe to use from several threads.

accelerate's `init_empty_weights` does this by patching `nn.Module.register_parameter` for the whole process
while it runs: a model built for real in another thread meanwhile gets empty weights, and two threads inside it
at once (the GUI's step plan and memory estimate) can leave the patch in place for good. Here the patch is put
in once and does nothing unless the calling thread is inside `empty_weights()`; what it does inside is what
accelerate does (parameters moved to meta, keeping their class and requires_grad; buffers stay where they are).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_THREAD = threading.local()
_INSTALL = threading.Lock()
_original_register = None


def _register_parameter(module, name, param) -> None:
    _original_register(module, name, param)
    if param is not None and getattr(_THREAD, "depth", 0):
        import torch

        registered = module._parameters[name]
        kwargs = dict(registered.__dict__, requires_grad=param.requires_grad)
        module._parameters[name] = type(registered)(registered.to(torch.device("meta")), **kwargs)


def _install() -> None:
    global _original_register
    with _INSTALL:
        if _original_register is None:
            import torch

            _original_register = torch.nn.Module.register_parameter
            torch.nn.Module.register_parameter = _register_parameter


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Within the block, parameters this thread creates live on the meta device."""
    _install()
    _THREAD.depth = getattr(_THREAD, "depth", 0) + 1
    try:
        yield
    finally:
        _THREAD.depth -= 1
