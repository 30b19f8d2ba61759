"""The safetensors reader holds files to the format's rules (the `safetensors` crate's), and opens only regular files.

Every refusal is one line naming the file. Files are written by hand here so that each breaks exactly one rule.
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap

import mlx.core as mx
import numpy as np
import pytest

from inference import CheckpointError
from inference.safetensors_reader import SafetensorsFile, open_regular_file, read_header

F32_2x2 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


def write_file(path, header, data=b"", raw_header: bytes | None = None):
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def refusal(path) -> str:
    with pytest.raises(CheckpointError) as info:
        read_header(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_a_valid_hand_written_file_loads_and_the_reference_reader_agrees(tmp_path):
    from safetensors.numpy import load_file

    values = np.arange(4, dtype=np.float32).reshape(2, 2)
    ints = np.array([7, -1], dtype=np.int32)
    header = {"__metadata__": {"format": "mlx"}, "w": F32_2x2,
              "b": {"dtype": "I32", "shape": [2], "data_offsets": [16, 24]},
              "empty": {"dtype": "F16", "shape": [0, 3], "data_offsets": [24, 24]}}
    path = write_file(tmp_path / "ok.safetensors", header, values.tobytes() + ints.tobytes())
    reference = load_file(str(path))
    weights = SafetensorsFile(path)
    assert set(weights.tensors) == set(reference) == {"w", "b", "empty"}
    assert np.array_equal(np.array(weights.load("w")), reference["w"])
    assert np.array_equal(np.array(weights.load("b")), ints)
    assert weights.load("empty").shape == (0, 3)


def test_mlx_written_files_still_load(tmp_path):
    path = tmp_path / "mlx.safetensors"
    arrays = {"a": mx.arange(6, dtype=mx.bfloat16).reshape(2, 3), "b": mx.ones((5,), dtype=mx.float16)}
    mx.save_safetensors(str(path), arrays)
    weights = SafetensorsFile(path)
    for name, array in arrays.items():
        assert weights.load(name).dtype == array.dtype and mx.array_equal(weights.load(name), array).item()


@pytest.mark.parametrize("dtype, numpy_dtype, mlx_dtype", [
    ("I64", np.int64, mx.int64), ("U8", np.uint8, mx.uint8),
    ("I8", np.int8, mx.int8), ("U32", np.uint32, mx.uint32), ("F16", np.float16, mx.float16),
])
def test_every_supported_dtype_loads(tmp_path, dtype, numpy_dtype, mlx_dtype):
    values = np.arange(-3, 3).astype(numpy_dtype)
    header = {"t": {"dtype": dtype, "shape": [2, 3], "data_offsets": [0, values.nbytes]}}
    loaded = SafetensorsFile(write_file(tmp_path / "t.safetensors", header, values.tobytes())).load("t")
    as_numpy = np.array(loaded)
    assert loaded.dtype == mlx_dtype and np.array_equal(as_numpy, values.reshape(2, 3).astype(as_numpy.dtype))


def test_a_file_swapped_after_validation_is_refused(tmp_path, monkeypatch):
    """MLX reads the data by name: the file it opens must be the one whose header was validated."""
    import inference.safetensors_reader as reader

    path = write_file(tmp_path / "model.safetensors", {"t": F32_2x2}, DATA_16)
    other = write_file(tmp_path / "other", {"t": F32_2x2}, bytes(range(16)))
    real_load = mx.load
    monkeypatch.setattr(reader.mx, "load", lambda name: (os.replace(other, path), real_load(name))[1])
    with pytest.raises(CheckpointError, match="file changed while it was being opened"):
        SafetensorsFile(path)


def test_a_loaded_tensor_is_not_kept_alive_by_the_file(tmp_path):
    """The engine casts bf16 weights to its compute dtype: the bf16 original must be freed, not held by the file."""
    path = tmp_path / "w.safetensors"
    mx.save_safetensors(str(path), {"w": mx.ones((1024, 1024), dtype=mx.bfloat16), "b": mx.zeros((8,))})
    weights = SafetensorsFile(path)
    before = mx.get_active_memory()
    cast = weights.load("w").astype(mx.float32)
    mx.eval(cast)
    assert mx.get_active_memory() - before < 4 * 2**20 + 2**20  # the float32 copy, not also the 2 MiB original
    again = weights.load("w")  # a second load reads the tensor again
    assert again.dtype == mx.bfloat16 and mx.array_equal(again, cast).item()
    with pytest.raises(KeyError):
        weights.load("nope")


DATA_16 = bytes(16)


@pytest.mark.parametrize("header, data, expected", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, bytes(20),
     "data bytes [8, 12) before tensor 'b' belong to no tensor"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, DATA_16,
     "tensor 'b' data [8, 16) overlaps tensor 'a'"),
    ({"a": F32_2x2, "b": F32_2x2}, DATA_16, "overlaps tensor"),  # two names, one piece of data
    ({"a": F32_2x2}, bytes(24), "8 bytes after the last tensor belong to no tensor"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, DATA_16, "data bytes [0, 8) before tensor 'a'"),
], ids=["hole", "overlap", "alias", "trailing", "leading-hole"])
def test_tensors_must_tile_the_data_exactly(tmp_path, header, data, expected):
    assert expected in refusal(write_file(tmp_path / "t.safetensors", header, data))


@pytest.mark.parametrize("entry, expected", [
    ({"dtype": "F32", "shape": [2.0, 2], "data_offsets": [0, 16]}, "shape must be a list of non-negative integers"),
    ({"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}, "shape must be a list of non-negative integers"),
    ({"dtype": "F32", "shape": ["2", "2"], "data_offsets": [0, 16]}, "shape must be a list of non-negative integers"),
    ({"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}, "shape must be a list of non-negative integers"),
    ({"dtype": "F32", "shape": "2x2", "data_offsets": [0, 16]}, "shape must be a list of non-negative integers"),
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": [0.0, 16.0]}, "data_offsets must be two non-negative integers"),
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": ["0", "16"]}, "data_offsets must be two non-negative integers"),
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8, 16]}, "data_offsets must be two non-negative integers"),
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": {"start": 0}}, "data_offsets must be two non-negative integers"),
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 0]}, "end before they start"),
    ({"dtype": 5, "shape": [2, 2], "data_offsets": [0, 16]}, "dtype must be a string, not a number"),
    ({"dtype": "F128", "shape": [2, 2], "data_offsets": [0, 16]}, "unsupported dtype 'F128'"),
    ({"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}, "unsupported dtype 'F64'"),  # as in mlx_lm: MLX has none
    ({"shape": [2, 2], "data_offsets": [0, 16]}, "header entry has no 'dtype'"),
    ([0, 16], "header entry must be an object, not a list"),
    # 2**32 * 2**32 elements wrap to 0 in int64: a tensor of zero bytes that says it holds 2**64 elements
    ({"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}, "more elements than an int64 can count"),
    ({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}, "has 12 bytes, its shape [2, 2] F32 needs 16"),
], ids=["float-shape", "bool-shape", "string-shape", "negative-shape", "shape-string", "float-offsets",
        "string-offsets", "three-offsets", "offsets-object", "reversed-offsets", "dtype-number", "dtype-unknown",
        "dtype-f64", "no-dtype", "entry-list", "int64-overflow", "size-mismatch"])
def test_entries_must_have_the_exact_types(tmp_path, entry, expected):
    data = bytes(16) if expected != "more elements than an int64 can count" else b""
    assert expected in refusal(write_file(tmp_path / "t.safetensors", {"t": entry}, data))


@pytest.mark.parametrize("raw, expected", [
    (b' {"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}', "must start with '{'"),
    ((b'{"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, '
      b'"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'), "has the key 't' twice"),
    (b'{"t": {"dtype": "F32", "dtype": "F16", "shape": [2, 2], "data_offsets": [0, 16]}}', "has the key 'dtype' twice"),
    (b'{"t": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 16]}}', "NaN is not JSON"),
    (b'{"t": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON"),
    (b'{"t": "\xff"}', "not UTF-8"),
    (b'{"__metadata__": {"format": 1}, "t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}',
     "'__metadata__' must map strings to strings"),
    (b'{"__metadata__": ["pt"], "t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}',
     "'__metadata__' must map strings to strings"),
], ids=["leading-space", "duplicate-tensor", "duplicate-field", "nan", "deep-nesting", "not-utf8", "metadata-int",
        "metadata-list"])
def test_header_json_rules(tmp_path, raw, expected):
    assert expected in refusal(write_file(tmp_path / "t.safetensors", None, DATA_16, raw_header=raw))


# --- special files and odd paths -------------------------------------------------------------------------------------

def isolated_refusal(reader: str, path, timeout: float = 60, prefix: tuple[str, ...] = ()
                     ) -> subprocess.CompletedProcess:
    """``reader(path)`` (a name of inference.safetensors_reader) in a fresh interpreter (from this worktree), printing
    the CheckpointError it raises: a read that blocks fails the test, not hangs it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"""
        from inference.safetensors_reader import {reader}
        from inference import CheckpointError
        try:
            {reader}({str(path)!r})
        except CheckpointError as e:
            print(e)
    """
    return subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd=root, env={**os.environ, "PYTHONPATH": root})


def test_a_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "model.safetensors"
    os.mkfifo(path)
    result = isolated_refusal("SafetensorsFile", path, timeout=30)
    assert result.stdout.strip() == f"{path}: is a named pipe (FIFO), not a regular file", result.stderr


@pytest.mark.parametrize("make, kind", [
    (lambda p: p.mkdir(), "a directory"),
    (lambda p: p.symlink_to("/dev/zero"), "a character device"),
    (lambda p: socket.socket(socket.AF_UNIX).bind(str(p)), "a socket"),
], ids=["directory", "device", "socket"])
def test_special_files_are_refused(tmp_path, make, kind):
    path = tmp_path / "model.safetensors"
    make(path)
    assert refusal(path).endswith(f"is {kind}, not a regular file")
    with pytest.raises(CheckpointError, match="not a regular file"):
        SafetensorsFile(path)


def test_symlink_loop_and_missing_file(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.symlink_to(b)
    b.symlink_to(a)
    assert "symlink loop" in refusal(a)
    assert refusal(tmp_path / "nope.safetensors").endswith("file not found")
    assert "not a directory" in refusal(write_file(tmp_path / "f", {}) / "x.safetensors")


def test_a_symlinked_file_is_followed(tmp_path):
    """Hugging Face caches keep weights as symlinks to blobs: they must load."""
    target = write_file(tmp_path / "blob", {"t": F32_2x2}, DATA_16)
    (tmp_path / "model.safetensors").symlink_to(target)
    assert read_header(tmp_path / "model.safetensors")["t"].shape == (2, 2)


def test_an_unreadable_file_is_refused(tmp_path):
    path = write_file(tmp_path / "model.safetensors", {"t": F32_2x2}, DATA_16)
    path.chmod(0)
    # root reads any file: there, run without the capabilities that let it
    prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search") if os.geteuid() == 0 else ()
    if prefix and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    result = isolated_refusal("read_header", path, prefix=prefix)
    assert result.stdout.strip() == f"{path}: permission denied", result.stderr


def test_max_bytes_refuses_a_larger_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(b"{}" * 10)
    with open_regular_file(path, max_bytes=20) as f:
        assert f.read() == b"{}" * 10
    with pytest.raises(CheckpointError, match="is 20 bytes, more than the 19"):
        open_regular_file(path, max_bytes=19)
