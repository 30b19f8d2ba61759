"""A validating, memory-mapped safetensors reader.

The file is mapped with numpy, never read into Python bytes; each tensor is copied once, straight into an MLX array.
Layout: 8-byte little-endian header length N, N bytes of JSON header, then the data block that header offsets point into.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from .errors import CheckpointError

# safetensors dtype -> (numpy dtype used to map the bytes, MLX dtype to view them as, bytes per element)
_DTYPES = {
    "F32": (np.float32, mx.float32, 4),
    "F16": (np.float16, mx.float16, 2),
    "BF16": (np.uint16, mx.bfloat16, 2),  # numpy has no bfloat16: map as uint16, reinterpret in MLX
    "U32": (np.uint32, mx.uint32, 4),
    "I32": (np.int32, mx.int32, 4),
    "U8": (np.uint8, mx.uint8, 1),
    "I8": (np.int8, mx.int8, 1),
    "I64": (np.int64, mx.int64, 8),
    "F64": (np.float64, mx.float32, 8),
}

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte offsets inside the data block
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path | str) -> dict[str, TensorInfo]:
    """Parse and validate the header of a safetensors file without touching its data."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(path, f"file is {size} bytes, too short for a safetensors header")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise CheckpointError(path, f"header length {header_len} is past the end of the file ({size} bytes)")
            if header_len > _MAX_HEADER:
                raise CheckpointError(path, f"header length {header_len} is implausibly large")
            raw = f.read(header_len)
    except FileNotFoundError:
        raise CheckpointError(path, "file not found") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a directory, expected a safetensors file") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is not a JSON object")
    data_size = size - 8 - header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor_info(path, name, entry, data_size)
    return tensors


def _tensor_info(path: Path, name: str, entry, data_size: int) -> TensorInfo:
    try:
        dtype, shape, (start, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(path, f"tensor {name!r} has a malformed header entry") from None
    if dtype not in _DTYPES:
        raise CheckpointError(path, f"tensor {name!r} has unsupported dtype {dtype}")
    if not (0 <= start <= end <= data_size):
        raise CheckpointError(path, f"tensor {name!r} data offsets [{start}, {end}] are past the end of the data ({data_size} bytes)")
    expected = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype][2]
    if end - start != expected:
        raise CheckpointError(path, f"tensor {name!r} has {end - start} bytes, its shape {list(shape)} {dtype} needs {expected}")
    return TensorInfo(dtype, shape, int(start), int(end))


class SafetensorsFile:
    """One mapped safetensors file: ``tensors`` from the validated header, ``load(name)`` gives an MLX array."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.tensors = read_header(self.path)
        with open(self.path, "rb") as f:
            header_len = struct.unpack("<Q", f.read(8))[0]
        self._data_start = 8 + header_len
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if self.path.stat().st_size else None

    def load(self, name: str) -> mx.array:
        info = self.tensors[name]
        np_dtype, mx_dtype, _ = _DTYPES[info.dtype]
        raw = self._map[self._data_start + info.start : self._data_start + info.end]
        host = raw.view(np_dtype).reshape(info.shape)
        if info.dtype == "F64":
            host = host.astype(np.float32)
        array = mx.array(host)
        return array.view(mx_dtype) if info.dtype == "BF16" else array
