"""Load time of a safetensors checkpoint: our reader (header validation + ``mx.load``), the numpy memory-map reader
it replaced, ``mx.load`` alone, and the ``safetensors`` package, on the CPU.

    python tools/bench/safetensors_load.py make /tmp/q8b.safetensors         # an 8B-shaped 4-bit file (~4.6 GB)
    python tools/bench/safetensors_load.py make /tmp/q.safetensors --layers 12   # a smaller one
    python tools/bench/safetensors_load.py time /tmp/q8b.safetensors --repeats 3

``make`` writes a file with Qwen3-8B's tensor names and shapes in mlx-community's 4-bit g64 layout (uint32 packed
weights, bf16 scales, biases and norms); the bytes are a repeated random block, written in chunks, so making it needs
little memory. ``time`` runs each way in a fresh interpreter, materialises every tensor (``mx.eval``) and reports
the wall time and the process's peak RSS; the first run reads the file into the page cache and is reported apart.
The ``safetensors`` package loads through numpy, which has no bfloat16: it loads the non-bf16 tensors only, and says
how many it could not load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Qwen3-8B (config.json of Qwen/Qwen3-8B)
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 4096, 12288, 36, 32, 8, 128, 151936
BITS, GROUP = 4, 64


def tensor_specs(layers: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of every tensor of the 4-bit checkpoint, as mlx_lm's quantization names and packs them."""
    specs = []

    def quantized(module: str, out_features: int, in_features: int) -> None:
        specs.append((f"{module}.weight", "U32", (out_features, in_features * BITS // 32)))
        specs.append((f"{module}.scales", "BF16", (out_features, in_features // GROUP)))
        specs.append((f"{module}.biases", "BF16", (out_features, in_features // GROUP)))

    quantized("model.embed_tokens", VOCAB, HIDDEN)
    for i in range(layers):
        p = f"model.layers.{i}"
        quantized(f"{p}.self_attn.q_proj", HEADS * HEAD_DIM, HIDDEN)
        quantized(f"{p}.self_attn.k_proj", KV_HEADS * HEAD_DIM, HIDDEN)
        quantized(f"{p}.self_attn.v_proj", KV_HEADS * HEAD_DIM, HIDDEN)
        quantized(f"{p}.self_attn.o_proj", HIDDEN, HEADS * HEAD_DIM)
        quantized(f"{p}.mlp.gate_proj", INTERMEDIATE, HIDDEN)
        quantized(f"{p}.mlp.up_proj", INTERMEDIATE, HIDDEN)
        quantized(f"{p}.mlp.down_proj", HIDDEN, INTERMEDIATE)
        for norm, size in (("input_layernorm", HIDDEN), ("post_attention_layernorm", HIDDEN),
                           ("self_attn.q_norm", HEAD_DIM), ("self_attn.k_norm", HEAD_DIM)):
            specs.append((f"{p}.{norm}.weight", "BF16", (size,)))
    specs.append(("model.norm.weight", "BF16", (HIDDEN,)))
    quantized("lm_head", VOCAB, HIDDEN)  # Qwen3-8B does not tie its embeddings
    return specs


def make(path: Path, layers: int) -> None:
    import numpy as np

    itemsize = {"U32": 4, "BF16": 2}
    header, offset = {"__metadata__": {"format": "mlx"}}, 0
    for name, dtype, shape in tensor_specs(layers):
        size = int(np.prod(shape)) * itemsize[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    block = np.random.default_rng(0).integers(0, 256, 1 << 24, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body)) + body)
        left = offset
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    print(f"{path}: {len(header) - 1} tensors, {offset / 1e9:.2f} GB of data")


# Each way runs in its own interpreter: the snippets print "<seconds> <tensors loaded> <tensors not loaded>".
WAYS = {
    "numpy memmap, one copy per tensor (our reader before)": """
import numpy as np
from inference.safetensors_reader import read_header
tensors = read_header(PATH)
with open(PATH, "rb") as f:
    data_start = 8 + int.from_bytes(f.read(8), "little")
mapped = np.memmap(PATH, dtype=np.uint8, mode="r")
views = {"U32": (np.uint32, None), "BF16": (np.uint16, mx.bfloat16)}
arrays = []
for info in tensors.values():
    np_dtype, mx_view = views[info.dtype]
    host = mapped[data_start + info.start : data_start + info.end].view(np_dtype).reshape(info.shape)
    array = mx.array(host)
    arrays.append(array.view(mx_view) if mx_view is not None else array)
mx.eval(arrays)
result = (len(arrays), 0)
""",
    "ours: header validation + mx.load (SafetensorsFile)": """
from inference.safetensors_reader import SafetensorsFile
f = SafetensorsFile(PATH)
arrays = [f.load(name) for name in f.tensors]
mx.eval(arrays)
result = (len(arrays), 0)
""",
    "mx.load alone (no validation)": """
arrays = mx.load(PATH)
mx.eval(list(arrays.values()))
result = (len(arrays), 0)
""",
    "header validation alone (read_header)": """
from inference.safetensors_reader import read_header
result = (len(read_header(PATH)), 0)
""",
    "safetensors package (framework=mlx)": """
from safetensors import safe_open
loaded, failed = [], 0
with safe_open(PATH, framework="mlx") as f:
    for name in f.keys():
        try:
            loaded.append(f.get_tensor(name))
        except TypeError:  # numpy has no bfloat16: the package cannot give these to MLX
            failed += 1
mx.eval(loaded)
result = (len(loaded), failed)
""",
}

RUNNER = """
import resource, sys, time
import mlx.core as mx
mx.set_default_device(mx.cpu)
PATH = sys.argv[1]
start = time.perf_counter()
{body}
seconds = time.perf_counter() - start
print(seconds, *result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_way(body: str, path: Path) -> tuple[float, int, int, int]:
    out = subprocess.run([sys.executable, "-c", RUNNER.format(body=body), str(path)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2]), int(out[3])


def time_ways(path: Path, repeats: int) -> None:
    size = path.stat().st_size
    first = run_way(WAYS["mx.load alone (no validation)"], path)
    print(f"{path}: {size / 1e9:.2f} GB; first read (page cache cold or not): {first[0]:.2f} s")
    results = {way: [] for way in WAYS}
    for _ in range(repeats):  # interleaved, so that a busy machine weighs on every way alike
        for way, body in WAYS.items():
            results[way].append(run_way(body, path))
    print("| way | median s | min s | GB/s (median) | tensors loaded | not loaded | peak RSS GB |")
    print("|---|---|---|---|---|---|---|")
    for way, runs in results.items():
        seconds = [r[0] for r in runs]
        median = statistics.median(seconds)
        print(f"| {way} | {median:.2f} | {min(seconds):.2f} | {size / 1e9 / median:.2f} | {runs[0][1]} | {runs[0][2]} "
              f"| {max(r[3] for r in runs) / 2**20:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make_parser = sub.add_parser("make", help="write an 8B-shaped 4-bit safetensors file")
    make_parser.add_argument("path", type=Path)
    make_parser.add_argument("--layers", type=int, default=LAYERS)
    time_parser = sub.add_parser("time", help="time the three ways of loading a file")
    time_parser.add_argument("path", type=Path)
    time_parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.command == "make":
        make(args.path, args.layers)
    else:
        time_ways(args.path, args.repeats)


if __name__ == "__main__":
    main()
