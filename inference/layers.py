"""Matrix layers: quantized or dense linears, fused projections, runtime LoRA."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import mlx.core as mx

from .backends.cuda import gemv
from .config import QuantSpec


@dataclass
class Linear:
    """``y = x @ W.T``; W is either dense or affine-quantized (packed uint32 + per-group scales and biases)."""

    weight: mx.array  # dense: (out, in); quantized: (out, in * bits / 32) uint32
    scales: mx.array | None = None  # (out, in / group_size)
    biases: mx.array | None = None
    spec: QuantSpec | None = None

    @classmethod
    def from_weights(cls, weights: dict[str, mx.array], module: str, spec: QuantSpec | None) -> "Linear":
        if spec is None:
            return cls(weights[f"{module}.weight"])
        return cls(weights[f"{module}.weight"], weights[f"{module}.scales"], weights[f"{module}.biases"], spec)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: mx.array) -> mx.array:
        if self.spec is None:
            return x @ self.weight.T
        return mx.quantized_matmul(
            x, self.weight, self.scales, self.biases, transpose=True, group_size=self.spec.group_size, bits=self.spec.bits
        )

    def apply(self, x: mx.array, lora: "LoRA | None", residual: mx.array | None, kernel: bool) -> mx.array:
        """``residual + x @ W.T + lora(x)``; with ``kernel``, as one CUDA kernel where it covers the shapes."""
        if kernel and self.spec is not None and gemv.covers(x, self.weight, self.spec.group_size, self.spec.bits):
            return gemv.quantized_gemv(x, self.weight, self.scales, self.biases, self.spec.group_size,
                                       lora=None if lora is None else (lora.a, lora.b), residual=residual)
        y = self(x)
        if lora is not None:
            y = lora.add_to(y, x)
        return y if residual is None else residual + y

    def embed(self, tokens: mx.array) -> mx.array:
        """Rows of the matrix: the embedding lookup (dequantizing only the rows needed)."""
        if self.spec is None:
            return self.weight[tokens]
        return mx.dequantize(
            self.weight[tokens], self.scales[tokens], self.biases[tokens], group_size=self.spec.group_size, bits=self.spec.bits
        )


def concatenate_linears(linears: list[Linear]) -> Linear | None:
    """Stack linears that share an input into one (rows concatenated); None when their formats differ."""
    if len({(lin.spec, lin.weight.dtype) for lin in linears}) != 1:
        return None
    first = linears[0]
    stack = lambda name: mx.concatenate([getattr(lin, name) for lin in linears], axis=0)  # noqa: E731
    if first.spec is None:
        return Linear(stack("weight"))
    return Linear(stack("weight"), stack("scales"), stack("biases"), first.spec)


@dataclass
class LoRA:
    """Low-rank update ``(x @ A) @ B``; the adapter's scale is folded into B at load.

    Both factors are stored transposed and used as ``(x @ a.T) @ b.T``: with a one-row ``x`` (one draft decoding)
    MLX on CUDA then runs matrix-vector kernels, 8 us each on an H100, where the adapter's own layouts take a general
    GEMM of 20-25 us; ``addmm`` for the second product and the sum took 21-26 us against 8.5 + 7 us for the two.
    """

    a: mx.array  # A transposed: (rank, in), contiguous
    b: mx.array  # B transposed and scaled: (out, rank), contiguous

    @classmethod
    def build(cls, a: mx.array, b: mx.array, dtype: mx.Dtype) -> "LoRA":
        """From the adapter's ``a`` (in, rank) and scaled ``b`` (rank, out)."""
        return cls(mx.contiguous(a.T.astype(dtype)), mx.contiguous(b.T.astype(dtype)))

    def add_to(self, y: mx.array, x: mx.array) -> mx.array:
        return y + (x @ self.a.T) @ self.b.T


class Projection:
    """Linears that read the same input (q/k/v, or gate/up), run as one matmul when their quantization matches.

    Returns one output per member. Its LoRA, if any, is applied as one wide low-rank product too: the members'
    ``a`` matrices side by side and their ``b`` matrices block-diagonal, which gives each member exactly its own update.
    """

    def __init__(self, members: list[Linear], fuse: bool = True, kernel: bool = False):
        self.kernel = kernel  # our CUDA matrix-vector kernel for few rows (backends/cuda/gemv.py)
        self.sizes = [m.out_features for m in members]
        fused = (concatenate_linears(members) if fuse else None) if len(members) > 1 else members[0]
        self.linears = [fused] if fused is not None else members
        self.loras: list[LoRA | None] = [None] * len(self.linears)

    @property
    def fused(self) -> bool:
        return len(self.linears) == 1

    def set_lora(self, pairs: list[tuple[mx.array, mx.array] | None], scale: float, dtype: mx.Dtype) -> None:
        """``pairs[i]`` is member i's (a, b) or None; ``scale`` multiplies the update, as mlx_lm's LoRALinear does."""
        if all(p is None for p in pairs):
            self.loras = [None] * len(self.linears)
            return
        if not self.fused:
            self.loras = [None if p is None else LoRA.build(p[0], scale * p[1], dtype) for p in pairs]
            return
        in_features = next(p[0].shape[0] for p in pairs if p is not None)
        a_blocks, b_blocks, total_out = [], [], sum(self.sizes)
        col = 0
        for size, pair in zip(self.sizes, pairs):
            if pair is not None:
                a, b = pair
                a_blocks.append(a)
                b_blocks.append(mx.pad(scale * b, [(0, 0), (col, total_out - col - size)]))
            col += size
        a = mx.concatenate(a_blocks, axis=1) if a_blocks else mx.zeros((in_features, 0))
        self.loras = [LoRA.build(a, mx.concatenate(b_blocks, axis=0), dtype)]

    def __call__(self, x: mx.array, use_lora: bool, residual: mx.array | None = None, split: bool = True) -> list[mx.array]:
        """One output per member (``split=False``: a fused projection's single output, members side by side);
        ``residual`` (single-member projections only) is added to the output."""
        assert residual is None or len(self.sizes) == 1
        outs = [linear.apply(x, lora if use_lora else None, residual, self.kernel)
                for linear, lora in zip(self.linears, self.loras)]
        if not self.fused or len(self.sizes) == 1 or not split:
            return outs
        return mx.split(outs[0], list(accumulate(self.sizes[:-1])), axis=-1)
