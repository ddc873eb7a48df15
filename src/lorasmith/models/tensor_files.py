"""Reading and writing checkpoint files without holding a second copy of the model.

- `SafetensorsFile` opens a .safetensors file, exposes its names, shapes and metadata from the
  header alone, and reads tensors one at a time by plain reads (no memory map, so pages of the
  file do not stay resident after their tensor has been cast to the target dtype).
- `load_pickle` reads .ckpt/.pt files, weights-only first (a pickle can run code).
- `write_safetensors` streams tensors to disk one by one, casting each on the way: safetensors'
  own `save_file` needs every tensor in memory at once, in the saved dtype.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from lorasmith.errors import ModelError

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Floating-point tensors in `dtype`; integer tensors (ids, markers) as they are."""
    if dtype is None or not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor
    return tensor.to(dtype)


_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
_HEADER_LIMIT = 100 << 20  # safetensors' own limit on the JSON header


class SafetensorsFile(Mapping):
    """A lazy, read-only mapping name -> tensor over a .safetensors file, cast to `dtype` on access.

    safetensors validates the file when it is opened; the tensors are then read by offset, each
    straight into its final tensor (same dtype) or through one reused staging buffer (cast), which
    avoids the intermediate copy per tensor that `safe_open(...).get_tensor` makes and keeps no
    page of the file mapped. Use it as a context manager.
    """

    def __init__(self, path: str | Path, dtype: torch.dtype | None = None):
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        self.dtype = dtype
        try:
            with safe_open(str(self.path), framework="pt") as handle:  # validates header and sizes
                self._metadata = dict(handle.metadata() or {})
        except SafetensorError as error:
            raise ModelError(
                f"{self.path} is not a readable .safetensors file ({error}); download it again, it may be truncated"
            ) from None
        self._file = open(self.path, "rb", buffering=0)
        (size,) = struct.unpack("<Q", self._file.read(8))
        header = json.loads(self._file.read(min(size, _HEADER_LIMIT)))
        header.pop("__metadata__", None)
        self._header: dict[str, dict] = header
        self._data_start = 8 + size
        self._staging = bytearray()

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v["shape"]) for k, v in self._header.items()}

    def layout(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """(name, shape, dtype) of every tensor, in the order of their bytes in the file."""
        ordered = sorted(self._header.items(), key=lambda item: item[1]["data_offsets"][0])
        return [(name, tuple(info["shape"]), _DTYPES[info["dtype"]]) for name, info in ordered]

    def __getitem__(self, key: str) -> torch.Tensor:
        info = self._header[key]
        dtype = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        target = self.dtype if self.dtype is not None and dtype.is_floating_point else dtype
        if target == dtype or start == end:
            tensor = torch.empty(info["shape"], dtype=dtype)
            self._read(start, memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
            return tensor.to(target)
        if len(self._staging) < end - start:
            self._staging = bytearray(end - start)
        self._read(start, memoryview(self._staging)[: end - start])
        source = torch.frombuffer(self._staging, dtype=dtype, count=(end - start) // dtype.itemsize)
        return source.reshape(info["shape"]).to(target)

    def _read(self, offset: int, buffer: memoryview) -> None:
        self._file.seek(self._data_start + offset)
        done = 0
        while done < len(buffer):
            count = self._file.readinto(buffer[done:])
            if not count:
                raise ModelError(f"{self.path} ended early; download it again, it is truncated")
            done += count

    def __iter__(self) -> Iterator[str]:
        return iter(self._header)

    def __len__(self) -> int:
        return len(self._header)

    def __contains__(self, key: object) -> bool:
        return key in self._header

    def close(self) -> None:
        self._file.close()
        self._staging = bytearray()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CastingDict(Mapping):
    """A mapping over an in-memory state dict that casts each tensor to `dtype` when asked for it."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None):
        self._tensors = tensors
        self.dtype = dtype

    def __getitem__(self, key: str) -> torch.Tensor:
        return _cast(self._tensors[key], self.dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, key: object) -> bool:
        return key in self._tensors


def load_pickle(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The state dict in a .ckpt/.pt file; refuses unless `allow_pickle` (a pickle can run code)."""
    refuse_pickle(path, allow_pickle)
    import pickle

    try:
        data = _torch_load(path, weights_only=True)
    except pickle.UnpicklingError:
        # Old checkpoints pickle training state (callbacks, optimizer classes) next to the
        # weights; the user has allowed pickles, so read them in full.
        data = _torch_load(path, weights_only=False)
    except (RuntimeError, EOFError, OSError) as error:
        raise ModelError(f"cannot read {path} ({error}); download it again, it may be truncated") from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise ModelError(f"{path} does not hold a state dict; give a Stable Diffusion checkpoint")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def refuse_pickle(path: Path, allow_pickle: bool) -> None:
    """Raise the one-line refusal for a pickle unless the user allowed pickles."""
    if not allow_pickle:
        raise ModelError(
            f"{path.name} is a pickle, and loading a pickle can run any code it contains; "
            "convert it to .safetensors, or pass --allow_pickle if you trust its source"
        )


def _torch_load(path: Path, weights_only: bool):
    try:  # mmap keeps only one copy of the weights in memory (zip-format files only)
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def write_safetensors(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write `tensors` as a .safetensors file, casting floating-point ones to `dtype` one at a time.

    Tensors are laid out largest element size first (then by name) so every tensor stays aligned
    to its element size, as safetensors itself does.
    """
    entries = []
    for name, tensor in tensors.items():
        out_dtype = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        entries.append((name, tuple(tensor.shape), out_dtype))
    entries.sort(key=lambda e: (-torch.empty((), dtype=e[2]).element_size(), e[0]))
    header: dict[str, object] = {}
    offset = 0
    for name, shape, out_dtype in entries:
        size = torch.Size(shape).numel() * torch.empty((), dtype=out_dtype).element_size()
        header[name] = {"dtype": _DTYPE_NAMES[out_dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-(8 + len(encoded)) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for name, _, out_dtype in entries:
            data = tensors[name].detach().to("cpu", out_dtype).contiguous()
            file.write(data.reshape(-1).view(torch.uint8).numpy().data)



class SafetensorsWriter:
    """Writes a .safetensors file tensor by tensor: the header first, from names, shapes and dtypes
    known up front, then each tensor's bytes, so a caller streaming a checkpoint holds one tensor.

    Write the tensors in `order`: largest element size first (the given order otherwise), which
    keeps every tensor aligned to its element size, as safetensors itself lays files out.
    """

    def __init__(self, path: str | Path, entries: list[tuple[str, tuple[int, ...], torch.dtype]],
                 metadata: Mapping[str, str] | None = None):
        ordered = sorted(entries, key=lambda entry: -entry[2].itemsize)  # stable: keeps the given order
        self.order = [name for name, _, _ in ordered]
        self._expected = {name: (tuple(shape), dtype) for name, shape, dtype in ordered}
        header: dict[str, object] = {}
        offset = 0
        for name, shape, dtype in ordered:
            size = torch.Size(shape).numel() * dtype.itemsize
            header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-(8 + len(encoded)) % 8)
        self._file = open(path, "wb")
        self._file.write(struct.pack("<Q", len(encoded)))
        self._file.write(encoded)
        self._written = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """The next tensor of `order`, in the shape and dtype the header gave it."""
        expected = self.order[self._written] if self._written < len(self.order) else None
        if name != expected:
            raise ValueError(f"wrote '{name}' where '{expected}' comes next")
        shape, dtype = self._expected[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"'{name}' is {tuple(tensor.shape)} {tensor.dtype}, the header says {shape} {dtype}")
        data = tensor.detach().to("cpu").contiguous()
        self._file.write(data.reshape(-1).view(torch.uint8).numpy().data)
        self._written += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, error_type, *exc) -> None:
        self.close()
        if error_type is None and self._written != len(self.order):
            raise ValueError(f"only {self._written} of {len(self.order)} tensors were written")
