"""Keep transformers' and diffusers' own progress bars ("Loading weights: 100%|...") out of our output.

Their bars write to the terminal past our events and interleave with our own bar; the loading they time
is reported through our events instead. The switches are process-wide, so they are restored afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def no_library_progress_bars():
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    switches = [(module, module.is_progress_bar_enabled()) for module in (transformers_logging, diffusers_logging)]
    for module, _ in switches:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, enabled in switches:
            if enabled:
                module.enable_progress_bar()
