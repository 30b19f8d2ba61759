"""A 4-bit matrix-vector product of our own on the tensor cores (``gemv.cu``) for the few rows decoding multiplies.

MLX's own 4-bit product for one row reads the weights at a quarter to a third of the card's bandwidth, and for 4 rows
takes several times as long as for one (``docs/performance.md``). Decoding is memory-bound, so that is where a token's
time goes. This kernel reads each weight once for up to ``MAX_ROWS`` input rows (drafts decoding together) and folds
in what follows the product in a decoder block: the LoRA update's second factor and the residual sum, which would
each be one more MLX op (a few microseconds of host time each on CUDA, whatever their size).

The arithmetic runs on the tensor cores (``mma.sync`` m16n8k16: 16 outputs x 16 inputs times 16 inputs x 8 input
rows), so its cost per weight does not grow with the rows. ``gemv.cu`` explains the layout and the sums. The LoRA's
first product, t = x A^T (R outputs), runs through a small float kernel with dense weights (``dense_gemv``).

For float32 activations and shapes the kernel does not cover, the engine runs ``reference``: MLX's ops.
"""

from __future__ import annotations

import mlx.core as mx

from . import KernelSource, call, read_source

# Input rows per call: up to 4 tiles of the mma's 8 columns, each weight fragment multiplied with every tile (a
# server's batch of 32 streams reads the weights once a step). Prompts go through mx.quantized_matmul.
COLUMNS = 8
TILES = (1, 2, 4)
MAX_ROWS = COLUMNS * TILES[-1]
BITS = 4
GROUP_SIZES = (32, 64, 128)  # a quad's 4 lanes take 1, 2 or 4 words of a group each
TILE = 16  # outputs per warp: the mma's rows
# Warps in flight over the whole product: each block's warps split K until there are about this many, so enough loads
# are in flight to cover memory latency for small products too (o_proj: 256 tiles, 8 warps each). Chosen with
# ``python -m tools.bench.kernels --sweep``.
TARGET_WARPS = 2048
MAX_WARPS = 8  # 256 threads: launchable at any register count (a block may hold 64K registers)
DENSE_THREADS = 128  # the LoRA's first product: one block per output, its warps splitting K


def covers(x: mx.array, w: mx.array, group_size: int, bits: int) -> bool:
    """Whether the kernel computes ``x @ dequantize(w).T``: few rows of 16-bit floats, 4 bits, whole groups and
    tiles."""
    return (
        bits == BITS
        and x.size // x.shape[-1] <= MAX_ROWS
        and group_size in GROUP_SIZES
        and x.shape[-1] % group_size == 0
        and w.shape[0] % TILE == 0
        and x.dtype in (mx.bfloat16, mx.float16)
    )


def reference(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, group_size: int,
              lora: tuple[mx.array, mx.array] | None = None, residual: mx.array | None = None) -> mx.array:
    """What ``quantized_gemv`` computes, as MLX's ops (what the engine runs without the kernel): the 4-bit product,
    the LoRA update as two products, the residual sum."""
    y = mx.quantized_matmul(x, w, scales, biases, transpose=True, group_size=group_size, bits=BITS)
    if lora is not None:
        a, b = lora
        y = y + (x @ a.T) @ b.T
    return y if residual is None else residual + y


def quantized_source(lora: bool, residual: bool) -> KernelSource:
    """The kernel for one combination of what its epilogue adds (``quantized_gemv`` of ``gemv.cu``)."""
    epilogue_inputs = (("lora_t", "lora_b") if lora else ()) + (("residual",) if residual else ())
    inputs = ("x", "w", "scales", "biases", *epilogue_inputs)
    arguments = ("x", "w", "scales", "biases", *(("lora_t", "lora_b") if lora else ("nullptr", "nullptr")),
                 "residual" if residual else "nullptr", "y", "x_shape[0]", "x_shape[1]", "w_shape[0]",
                 "lora_b_shape[1]" if lora else "0")
    body = call("quantized_gemv", ("T", "BF16", "GROUP", "MAX_WARPS", "COLS", "LORA", "RESIDUAL"), arguments)
    return KernelSource("bobby_gemv_quantized", inputs, ("y",), read_source("gemv.cu"), body)


def dense_source() -> KernelSource:
    """The LoRA's first product (``dense_gemv`` of ``gemv.cu``)."""
    body = call("dense_gemv", ("T", "MAX_ROWS", "THREADS"), ("x", "w", "y", "x_shape[0]", "x_shape[1]", "w_shape[0]"))
    return KernelSource("bobby_gemv_dense", ("x", "w"), ("y",), read_source("gemv.cu"), body)


_kernels: dict[tuple[bool, bool] | None, object] = {}  # (lora, residual) -> quantized kernel; None -> dense


def _kernel(key: tuple[bool, bool] | None):
    if key not in _kernels:
        _kernels[key] = (dense_source() if key is None else quantized_source(*key)).build()
    return _kernels[key]


def warps_per_tile(n: int, groups: int, target_warps: int = TARGET_WARPS) -> int:
    """Warps splitting each 16-output tile's groups: doubled while the product has fewer than ``target_warps``."""
    warps = 1
    while warps < MAX_WARPS and n // TILE * warps < target_warps and groups % (2 * warps) == 0:
        warps *= 2
    return warps


def column_tiles(rows: int) -> int:
    """The tiles of 8 input rows a kernel is compiled for: the fewest that hold ``rows``."""
    return next(tiles for tiles in TILES if rows <= COLUMNS * tiles)


def _dense_product(x: mx.array, a: mx.array) -> mx.array:
    """x (M, K) @ a.T for a dense a (R, K): the LoRA's first factor."""
    rows, k = x.shape
    (t,) = _kernel(None)(
        inputs=[x, a],
        template=[("T", x.dtype), ("MAX_ROWS", COLUMNS * column_tiles(rows)), ("THREADS", DENSE_THREADS)],
        grid=(a.shape[0] * DENSE_THREADS, 1, 1),
        threadgroup=(DENSE_THREADS, 1, 1),
        output_shapes=[(rows, a.shape[0])],
        output_dtypes=[x.dtype],
    )
    return t


def quantized_gemv(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, group_size: int,
                   lora: tuple[mx.array, mx.array] | None = None, residual: mx.array | None = None,
                   target_warps: int = TARGET_WARPS) -> mx.array:
    """``x @ dequantize(w).T`` (+ ``(x @ a.T) @ b.T`` for ``lora = (a, b)``, + ``residual``), x (..., K) -> (..., N).

    ``a`` is the LoRA's first factor stored (R, K), ``b`` its scaled second factor stored (N, R). ``target_warps``:
    see ``TARGET_WARPS`` (a parameter for the kernel benchmark's sweep).
    """
    lead, k, n = x.shape[:-1], x.shape[-1], w.shape[0]
    rows = x.size // k
    x = x.reshape(rows, k)
    warps = warps_per_tile(n, k // group_size, target_warps)
    inputs = [x, w, scales, biases]
    if lora is not None:
        a, b = lora
        inputs += [_dense_product(x, a), b]
    if residual is not None:
        inputs.append(residual.reshape(rows, n))
    (y,) = _kernel((lora is not None, residual is not None))(
        inputs=inputs,
        template=[("T", x.dtype), ("BF16", x.dtype == mx.bfloat16), ("GROUP", group_size), ("MAX_WARPS", MAX_WARPS),
                  ("COLS", column_tiles(rows)), ("LORA", lora is not None), ("RESIDUAL", residual is not None)],
        grid=(n // TILE * warps * 32, 1, 1),
        threadgroup=(warps * 32, 1, 1),
        output_shapes=[(rows, n)],
        output_dtypes=[x.dtype],
    )
    return y.reshape(*lead, n)
