"""A validating safetensors reader, and the one way the engine opens the files it reads.

The data is read by MLX, once the header has been validated here; it never passes through Python bytes.
Layout: 8-byte little-endian header length N, N bytes of JSON header, then the data block that header offsets point
into.
The header is held to the rules of the reference implementation (the ``safetensors`` crate's ``Metadata::validate``):
it is a JSON object starting with ``{``, without duplicate keys; every tensor has a known dtype, a shape and two offsets
of non-negative integers, as many bytes as its shape needs, and the tensors tile the data block exactly, with no
hole, no overlap and nothing after the last one.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import mlx.core as mx

from .errors import CheckpointError

# safetensors dtype -> bytes per element: the dtypes MLX reads (not F64: MLX, and so mlx_lm, has no float64 reader)
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "U8": 1, "I8": 1, "I64": 8}

_MAX_HEADER = 100_000_000  # the crate's limit
_INT64_MAX = 2**63 - 1

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)

_OS_PROBLEMS = {
    errno.ENOENT: "file not found",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?)",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.ENAMETOOLONG: "the path is too long",
}


def open_regular_file(
    path: Path | str, error: Callable[[Path, str], Exception] = CheckpointError, max_bytes: int | None = None
) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file; otherwise raise ``error`` with one line saying why.

    Opening a FIFO blocks until a writer appears and reading a device may never end, so anything but a regular file is
    refused before it is opened; the open itself is non-blocking and checked again, so a path swapped for a FIFO
    between the two checks cannot block either. Symlinks are followed (Hugging Face caches are made of them); a loop
    of them, a missing or unreadable file each get their own message, raised as ``error(path, problem)`` (an
    ``InferenceError`` subclass, or any exception built the same way). ``max_bytes`` refuses a larger file (for files
    read whole into memory). Tokenizer and config readers use this too.
    """
    path = Path(path)
    try:
        _require_regular(path, os.stat(path).st_mode, error)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise error(path, _OS_PROBLEMS.get(e.errno) or f"cannot be opened ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        _require_regular(path, info.st_mode, error)
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(path, f"is {info.st_size} bytes, more than the {max_bytes} such a file may have")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _require_regular(path: Path, mode: int, error: Callable[[Path, str], Exception]) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for is_kind, name in _FILE_KINDS if is_kind(mode)), "a special file")
    raise error(path, f"is {kind}, not a regular file")


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
    with open_regular_file(path) as f:
        return _read_header(f, path)


def _read_header(f: BinaryIO, path: Path) -> dict[str, TensorInfo]:
    """The validated tensors of the open file ``f``."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8:
        raise CheckpointError(path, f"file is {size} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > size - 8:
        raise CheckpointError(path, f"header length {header_len} is past the end of the file ({size} bytes)")
    if header_len > _MAX_HEADER:
        raise CheckpointError(path, f"header length {header_len} is implausibly large (over {_MAX_HEADER} bytes)")
    raw = f.read(header_len)
    if len(raw) != header_len:
        raise CheckpointError(path, "file shrank while its header was read")
    header = _parse_header_json(path, raw)
    data_size = size - 8 - header_len
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CheckpointError(path, "header '__metadata__' must map strings to strings")
    tensors = {name: _tensor_info(path, name, entry, data_size) for name, entry in header.items()}
    _check_tiling(path, tensors, data_size)
    return tensors


class _DuplicateKey(Exception):
    pass


def _unique_object(pairs: list[tuple[str, object]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _parse_header_json(path: Path, raw: bytes) -> dict:
    if not raw.startswith(b"{"):
        raise CheckpointError(path, "header is not valid JSON (it must start with '{')")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(path, "header is not valid JSON (not UTF-8)") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_object, parse_constant=_refuse_constant)
    except _DuplicateKey as e:
        raise CheckpointError(path, f"header has the key {e.args[0]!r} twice") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"header is not valid JSON ({e.msg} at byte {e.pos})") from None
    except (ValueError, RecursionError) as e:  # NaN/Infinity, over-long integers, nesting deeper than Python's stack
        raise CheckpointError(path, f"header is not valid JSON ({e})") from None


def _is_count(value) -> bool:
    return type(value) is int and value >= 0  # not bool, not float: a shape of 2.0 is an error, not a 2


def _tensor_info(path: Path, name: str, entry, data_size: int) -> TensorInfo:
    where = f"tensor {name!r}"
    if not isinstance(entry, dict):
        raise CheckpointError(path, f"{where}: header entry must be an object, not {json_type_name(entry)}")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in entry]
    if missing:
        raise CheckpointError(path, f"{where}: header entry has no {', '.join(map(repr, missing))}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise CheckpointError(path, f"{where}: dtype must be a string, not {json_type_name(dtype)}")
    if dtype not in _DTYPE_BYTES:
        raise CheckpointError(path, f"{where} has unsupported dtype {dtype!r} (supported: {', '.join(_DTYPE_BYTES)})")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise CheckpointError(path, f"{where}: shape must be a list of non-negative integers, not {_short(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise CheckpointError(
            path, f"{where}: data_offsets must be two non-negative integers [start, end], not {_short(offsets)}"
        )
    start, end = offsets
    if end > data_size:
        raise CheckpointError(
            path, f"{where} data offsets [{start}, {end}] are past the end of the data ({data_size} bytes)"
        )
    if start > end:
        raise CheckpointError(path, f"{where} data offsets [{start}, {end}] end before they start")
    elements = 1
    for d in shape:  # Python integers: a product that overflows int64 is seen, not wrapped
        elements *= d
    if elements > _INT64_MAX:
        raise CheckpointError(path, f"{where}: shape {shape} has more elements than an int64 can count")
    expected = elements * _DTYPE_BYTES[dtype]
    if end - start != expected:
        raise CheckpointError(path, f"{where} has {end - start} bytes, its shape {shape} {dtype} needs {expected}")
    return TensorInfo(dtype, tuple(shape), start, end)


def _check_tiling(path: Path, tensors: dict[str, TensorInfo], data_size: int) -> None:
    """The tensors, sorted by offset, must cover the data block exactly once."""
    position, previous = 0, None
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end)):
        if info.start > position:
            raise CheckpointError(
                path, f"data bytes [{position}, {info.start}) before tensor {name!r} belong to no tensor"
            )
        if info.start < position:
            raise CheckpointError(path, f"tensor {name!r} data [{info.start}, {info.end}) overlaps tensor {previous!r}")
        position, previous = info.end, name
    if position != data_size:
        raise CheckpointError(path, f"{data_size - position} bytes after the last tensor belong to no tensor")


def json_type_name(value) -> str:
    """The JSON type of a parsed value, in words, for messages: "a list", "a number"."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class SafetensorsFile:
    """One safetensors file: ``tensors`` from the validated header, ``load(name)`` gives an MLX array.

    The data is read by MLX (``mx.load``: lazy, each tensor read when it is first evaluated, straight into its array):
    on an 8B-shaped 4-bit file that is faster than copying out of a numpy memory map and needs half the peak memory
    (docs/engine.md, "Reading safetensors"). MLX opens the file by name once the header is validated; the file it
    opened must be the one validated (same inode, size and modification time), or loading stops.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        with open_regular_file(self.path) as f:
            self.tensors = _read_header(f, self.path)
            self._validated = os.fstat(f.fileno())
        self._arrays = self._read_lazily()

    def _read_lazily(self) -> dict[str, mx.array]:
        """Every tensor as a lazy MLX array (nothing read yet), from the file whose header was validated."""
        try:
            arrays = mx.load(str(self.path)) if self.tensors else {}
        except (RuntimeError, ValueError, OSError) as e:
            raise CheckpointError(self.path, f"MLX cannot read it ({e})") from None
        now, then = os.stat(self.path), self._validated
        if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) != (
                then.st_dev, then.st_ino, then.st_size, then.st_mtime_ns):
            raise CheckpointError(self.path, "file changed while it was being opened")
        if set(arrays) != set(self.tensors):
            raise CheckpointError(self.path, "MLX reads other tensors than the header names")
        return arrays

    def load(self, name: str) -> mx.array:
        """The tensor ``name``. Each lazy array is handed out once, so that this object does not keep its data alive
        once the caller has cast or dropped it; loading the same tensor again reads it again."""
        if name not in self.tensors:
            raise KeyError(name)
        if name not in self._arrays:
            self._arrays = self._read_lazily()
        return self._arrays.pop(name)
