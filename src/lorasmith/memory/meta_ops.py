"""Run meta operators fast: remember each operator's outputs for the shapes it was given.

Many meta kernels are written in Python (torch/_meta_registrations.py, torch/_refs): an `add`, a
group norm or a layer norm takes a millisecond on meta tensors, longer than on real small ones. A
UNet repeats the same operators on the same shapes hundreds of times (SDXL has seventy alike
transformer blocks, and gradient checkpointing runs every forward twice), so the outputs' shapes,
strides and dtypes are worked out once per signature and then made directly (`torch.empty_strided`,
a C++ call). FakeTensorMode caches its dispatch the same way.

Only what is safe to remember is: functional operators (no in-place or out= writes, no outputs that
are views of an input) on meta tensors, whose outputs are fresh tensors of their own storage.
"""

from __future__ import annotations

import torch

from lorasmith.memory.tracking import tensors_in

_SKIP = object()  # an argument that makes a call unsafe to remember
_PLAIN = (bool, int, float, str, torch.dtype, torch.device, torch.layout, torch.memory_format)


def _key_of(values):
    """A hashable key of an operator's arguments (a tuple or list), or _SKIP. One pass: it runs per operator."""
    keys = []
    for value in values:
        kind = type(value)
        if kind is int or kind is float or kind is bool or value is None:
            keys.append(value)
        elif isinstance(value, torch.Tensor):
            if value.device.type != "meta":
                return _SKIP
            keys.append((tuple(value.shape), value.stride(), value.dtype, value.storage_offset()))
        elif kind is list or kind is tuple:
            inner = _key_of(value)
            if inner is _SKIP:
                return _SKIP
            keys.append((kind, inner))
        elif isinstance(value, _PLAIN):
            keys.append(value)
        else:
            return _SKIP
    return tuple(keys)


def _remembered(func) -> bool:
    schema = func._schema
    return not schema.is_mutable and all(ret.alias_info is None for ret in schema.returns)


class MetaOpCache:
    """`cache(func, args, kwargs)` runs `func`, from memory when it has seen the same signature."""

    def __init__(self) -> None:
        self._outputs: dict = {}  # signature -> (kind of result, per output (shape, stride, dtype) or None)
        self._safe: dict = {}  # func -> whether its calls may be remembered

    def __call__(self, func, args, kwargs):
        key = self._signature(func, args, kwargs)
        if key is None:
            return func(*args, **kwargs)
        known = self._outputs.get(key)
        if known is not None:
            kind, metas = known
            made = [None if m is None else torch.empty_strided(m[0], m[1], dtype=m[2], device="meta") for m in metas]
            return made[0] if kind is torch.Tensor else kind(made)
        out = func(*args, **kwargs)
        self._remember(func, key, out, args, kwargs)
        return out

    def _signature(self, func, args, kwargs):
        safe = self._safe.get(func)
        if safe is None:
            safe = self._safe[func] = _remembered(func)
        if not safe:
            return None
        key = _key_of(args)
        if key is _SKIP:
            return None
        if kwargs:
            extra = _key_of(tuple(item for pair in kwargs.items() for item in pair))
            if extra is _SKIP:
                return None
            key = (key, extra)
        return func, key

    def _remember(self, func, key, out, args, kwargs) -> None:
        kind = torch.Tensor if isinstance(out, torch.Tensor) else type(out)
        results = [out] if kind is torch.Tensor else out
        if kind not in (torch.Tensor, tuple, list):
            return
        inputs = {t.untyped_storage()._cdata for t in tensors_in(args, kwargs)}
        metas, storages = [], set()
        for result in results:
            if result is None:
                metas.append(None)
                continue
            if not isinstance(result, torch.Tensor) or result.device.type != "meta" or result.storage_offset():
                return
            storage = result.untyped_storage()
            if storage._cdata in inputs:  # a view its schema does not declare (_unsafe_view): never remembered
                self._safe[func] = False
                return
            if storage._cdata in storages or storage.nbytes() != _dense_bytes(result):
                return  # outputs sharing storage, or a storage larger than its tensor: made as PyTorch makes them
            storages.add(storage._cdata)
            metas.append((tuple(result.shape), result.stride(), result.dtype))
        self._outputs[key] = (kind, metas)


def _dense_bytes(tensor: torch.Tensor) -> int:
    """The storage `torch.empty_strided` makes for this shape and stride."""
    if tensor.numel() == 0:
        return 0
    extent = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    return extent * tensor.element_size()
