"""Count the bytes a piece of PyTorch code allocates, as a GPU's caching allocator would see them.

`LiveBytes` is a dispatch mode: every tensor an operator creates is noted with the size of its storage,
and a weak reference to that storage takes the bytes off again when the storage is freed. The peak of
that running sum is what `torch.cuda.max_memory_allocated` measures for the same code, less what was
already allocated before the mode began (the weights). It works the same for real tensors and for
meta tensors (no data, no time), which is what lets the planner run a full training step of SDXL on a
CPU in seconds.

Two details make it the allocator's count rather than Python's: a view or an in-place result shares its
input's storage and adds nothing, and every block is rounded up to 512 bytes, the CUDA caching
allocator's smallest unit (`kMinBlockSize` in c10/cuda/CUDACachingAllocator.cpp).
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

CUDA_BLOCK_BYTES = 512


def allocator_bytes(nbytes: int, block: int = CUDA_BLOCK_BYTES) -> int:
    """`nbytes` as the caching allocator books it (0 stays 0: CUDA allocates nothing for it)."""
    return -(-nbytes // block) * block if nbytes else 0


def tensors_in(*values) -> list[torch.Tensor]:
    """The tensors among operator arguments or results: tensors, in lists and tuples, and in dicts' values.

    (torch.utils._pytree does this for any structure, at several times the cost per operator.)"""
    found: list[torch.Tensor] = []
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
    return found


def _storage_key(tensor: torch.Tensor) -> int | None:
    try:
        return tensor.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # no storage (a sparse or wrapper tensor): not ours to count
        return None


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created under this mode that are still alive (`live`), and their `peak`."""

    def __init__(self, block: int = CUDA_BLOCK_BYTES, run=None, classes=None) -> None:
        super().__init__()
        self.block = block
        self._run = run or (lambda func, args, kwargs: func(*args, **kwargs))  # e.g. a MetaOpCache
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # storage key -> bytes booked
        # storages may be freed from an autograd worker thread, or by a garbage collection that starts while this
        # thread holds the lock (a finalizer runs at once): reentrant
        self._lock = threading.RLock()
        self.classes = classes  # a scaling.SizeClasses: the live bytes also split by how they grow
        self._class_of: dict[int, tuple[int, int, int]] = {}  # storage key -> (column, raw bytes, rounding)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = self._run(func, args, kwargs or {})
        inputs = None
        for tensor in tensors_in(out):
            key = _storage_key(tensor)
            if key is None or key in self._sizes:
                continue
            if inputs is None:  # made only when needed: most results are new storages or known ones
                inputs = {_storage_key(t) for t in tensors_in(args, kwargs)}
            if key not in inputs:
                self._add(key, tensor.untyped_storage())
        return out

    def _add(self, key: int, storage) -> None:
        raw = storage.nbytes()
        size = allocator_bytes(raw, self.block)
        powers = self.classes.powers(raw) if self.classes is not None else None
        with self._lock:
            self._sizes[key] = size
            self.live += size
            self.peak = max(self.peak, self.live)
            if powers is not None:
                booked = (self.classes.column(powers), raw, size - raw)
                self._class_of[key] = booked
                self.classes.add(*booked)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        with self._lock:
            self.live -= self._sizes.pop(key, 0)
            booked = self._class_of.pop(key, None)
            if booked is not None:
                self.classes.remove(*booked)

    def reset_peak(self) -> None:
        """Start a new phase: its peak is measured from what is alive now."""
        with self._lock:
            self.peak = self.live
