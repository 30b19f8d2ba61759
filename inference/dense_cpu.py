"""On the CPU, run the projections as dense float32 matmuls: dequantized once at load, stored as (in, out).

MLX's CPU wheel for Linux links the netlib *reference* BLAS, and its 4-bit ``quantized_matmul`` is no faster: on a
2-core AMD EPYC, a 1024->4096 product of one row took 4.9 ms in 4 bits, 6.4 ms as ``x @ W.T`` on the dense (out, in)
matrix, and 3.3 ms as ``x @ Wt`` on the same matrix stored (in, out) contiguous; the 151936-row head took 174, 176
and 82 ms. So each quantized projection is dequantized to float32 and kept transposed, as ``Linear(weight=Wt.T)``:
``Linear.__call__``'s ``x @ self.weight.T`` then multiplies by the contiguous (in, out) matrix, with no copy.
Qwen3-0.6B shape, 4-bit g64, 16 greedy tokens on that CPU: 2.40 tok/s against 1.50 with ``cpu_dense=False``
(median of 3, one process); ``python -m inference.bench``: 2.3-2.8 tok/s against mlx_lm's 1.5-1.6.

Memory: 4 bytes per weight instead of 0.625 (4 bits, and a float32 scale and bias per 64); Qwen3-0.6B holds 2.48 GB
instead of 0.37 GB, and loads in ~10 s instead of ~1 s (the conversion, and first touches of 2.4 GB of fresh memory).
Taken only when that fits ``RAM_FRACTION`` of physical memory; ``EngineOptions(cpu_dense=False)`` turns it off.
The embedding table stays as it is (a row lookup dequantizes only the rows it reads); a tied head gets its own dense
copy, since the head's product over the whole vocabulary is the largest single matmul of a small model's step.
"""

from __future__ import annotations

import logging
import os
import sys

import mlx.core as mx

from .models.base import Linear

RAM_FRACTION = 0.25  # the dense projections may take at most this share of physical memory

log = logging.getLogger(__name__)


def physical_memory_bytes() -> int | None:
    """Physical RAM, or None where the platform does not say."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def _projection_slots(model):
    """(list, index) of every Linear that a matmul reads: each block's projections and the head."""
    for layer in model.layers:
        for projection in layer.projections.values():
            for i in range(len(projection.linears)):
                yield projection.linears, i
    for i in range(len(model.lm_head.linears)):
        yield model.lm_head.linears, i


def dense_bytes(model) -> int:
    """Bytes the projections take as dense float32 (the head counted once more when it is the embedding table)."""
    return sum(4 * linear.out_features * linear.scales.shape[-1] * linear.spec.group_size if linear.spec is not None
               else 4 * linear.weight.size
               for linears, i in _projection_slots(model) for linear in [linears[i]])


def _dense_transposed(linear: Linear) -> mx.array:
    """``dequantize(W).T`` as a contiguous float32 (in, out) matrix.

    The strided copy of a transpose is what costs on the CPU, so for 2, 4 or 8 bits the packed words are read as
    bytes (little-endian: the first value in the low bits) and the byte matrix is transposed, a quarter to an eighth
    of the elements; the values are then unpacked and scaled in (in, out) order. The same numbers as
    ``mx.dequantize``; for Qwen3-0.6B's 151936x1024 head 1.3 s instead of 6.9 s for dequantize-then-transpose.
    """
    spec = linear.spec
    if spec is None:
        return mx.contiguous(linear.weight.astype(mx.float32).T)
    if 8 % spec.bits != 0 or sys.byteorder != "little":
        w = mx.dequantize(linear.weight, linear.scales, linear.biases, group_size=spec.group_size, bits=spec.bits)
        return mx.contiguous(w.astype(mx.float32).T)
    out_features, per_byte, mask = linear.out_features, 8 // spec.bits, (1 << spec.bits) - 1
    packed = mx.contiguous(mx.view(linear.weight, mx.uint8).T)  # (in / per_byte, out)
    if per_byte == 1:
        values = packed
    else:
        values = mx.stack([(packed >> (spec.bits * k)) & mask for k in range(per_byte)], axis=1)
    scales = mx.contiguous(linear.scales.astype(mx.float32).T)[:, None, :]  # (groups, 1, out)
    biases = mx.contiguous(linear.biases.astype(mx.float32).T)[:, None, :]
    w = values.reshape(-1, spec.group_size, out_features).astype(mx.float32) * scales + biases
    return w.reshape(-1, out_features)


def _dense(linear: Linear) -> Linear:
    """The same product with a dense float32 matrix stored (in, out): ``x @ weight.T`` reads it contiguously."""
    transposed = _dense_transposed(linear)
    mx.eval(transposed)
    return Linear(transposed.T)


def use_dense_cpu(model, budget_bytes: int | None = None) -> bool:
    """Replace the model's projections by dense float32 ones in (in, out) layout, where it pays: on the CPU, in a
    float32 model, when they fit ``budget_bytes`` (default ``RAM_FRACTION`` of physical memory; unknown: no).
    Returns whether it did. The embedding table (even a tied one) stays as loaded."""
    if mx.default_device().type != mx.DeviceType.cpu or model.dtype != mx.float32:
        return False
    if budget_bytes is None:
        ram = physical_memory_bytes()
        if ram is None:
            return False
        budget_bytes = int(ram * RAM_FRACTION)
    needed = dense_bytes(model)
    if needed > budget_bytes:
        log.info("CPU: keeping quantized projections (dense float32 would take %.2f GB, budget %.2f GB)",
                 needed / 1e9, budget_bytes / 1e9)
        return False
    for linears, i in _projection_slots(model):
        linears[i] = _dense(linears[i])  # a new Linear: a tied head's table stays the quantized embedding
    for layer in model.layers:
        layer.forget_traces()
    log.info("CPU: projections as dense float32 matmuls, %.2f GB of weights", needed / 1e9)
    return True
