"""What every model family shares: quantization settings, tensor specs, matrix layers (quantized or dense linears,
fused projections, runtime LoRA).

A family module (``inference/models/<model_type>.py``) provides ``ModelArgs`` (its config.json fields, on top of
``BaseModelArgs``), ``matrices(args)`` and ``tensor_spec(args, quant_of)`` (every tensor it is built from, with shape
and dtypes), ``sanitize(args, names)`` (checkpoint tensors it drops on purpose), ``LORA_KEYS`` (a block's projections
an adapter may name), ``EMBEDDINGS`` (matrix modules an adapter may not change) and ``Model``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import mlx.core as mx

from ..backends.cuda import gemv
from ..errors import ConfigError, InferenceError

FLOAT_DTYPES = ("F32", "F16", "BF16")  # safetensors dtypes a floating tensor may be stored in
QUANT_BITS = (2, 3, 4, 5, 6, 8)
QUANT_GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    group_size: int


def _quant_spec(path: Path, where: str, value) -> QuantSpec | None:
    if value is False or value is None:
        return None
    try:
        spec = QuantSpec(bits=int(value["bits"]), group_size=int(value["group_size"]))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(path, f"quantization entry {where!r} needs integer 'bits' and 'group_size'") from None
    if spec.bits not in QUANT_BITS or spec.group_size not in QUANT_GROUP_SIZES:
        raise ConfigError(path, f"quantization {where!r}: unsupported bits={spec.bits} group_size={spec.group_size}")
    return spec


def read_quantization(raw: dict, path: Path) -> tuple[QuantSpec | None, dict[str, QuantSpec | None]]:
    """config.json's ``quantization`` (or ``quantization_config``) as mlx_lm writes it: the default spec, and the
    per-module entries (``"model.layers.0.mlp.down_proj": {"bits": 8, ...}`` or ``false``)."""
    quant_raw = raw.get("quantization") or raw.get("quantization_config")
    if not isinstance(quant_raw, dict):
        return None, {}
    mode = quant_raw.get("mode", "affine")
    if mode != "affine":  # before the bits and group size, which only affine's rules judge
        raise ConfigError(path, f"quantization mode {mode!r} is not supported (only affine)")
    default = _quant_spec(path, "quantization", quant_raw)
    overrides = {
        key: _quant_spec(path, key, value)
        for key, value in quant_raw.items()
        if key not in ("bits", "group_size", "mode", "quant_method") and (isinstance(value, dict) or value is False)
    }
    return default, overrides


_REQUIRED = object()


class ConfigFields:
    """Strict reading of config.json values: a missing required key, a value of the wrong type (``256.9`` or
    ``"4"`` for an integer, ``"false"`` for a boolean) or out of range is a ConfigError naming the key; nothing is
    coerced."""

    def __init__(self, raw: dict, path: Path, error: type[InferenceError] = ConfigError):
        self.raw, self.path, self.error = raw, path, error

    def _get(self, key: str, default):
        if key in self.raw and self.raw[key] is not None:
            return self.raw[key]
        if default is _REQUIRED:
            raise self.error(self.path, f"missing required key {key!r}")
        return default

    def integer(self, key: str, default=_REQUIRED, low: int | None = 1) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(self.path, f"{key!r} must be an integer (got {value!r})")
        if low is not None and value < low:
            raise self.error(self.path, f"{key!r} must be at least {low} (got {value})")
        return value

    def number(self, key: str, default=_REQUIRED, value=_REQUIRED, positive: bool = False) -> float:
        value = self._get(key, default) if value is _REQUIRED else value
        wrong = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        if wrong or (positive and value <= 0):
            raise self.error(self.path, f"{key!r} must be a finite number{' > 0' if positive else ''} (got {value!r})")
        return float(value)

    def positive_number(self, key: str, default=_REQUIRED, value=_REQUIRED) -> float:
        return self.number(key, default, value, positive=True)

    def boolean(self, key: str, default=_REQUIRED) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(self.path, f"{key!r} must be true or false (got {value!r})")
        return value

    def strings(self, key: str, default=_REQUIRED) -> tuple[str, ...] | None:
        value = self._get(key, default)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(self.path, f"{key!r} must be a list of strings (got {value!r})")
        return tuple(value)


def eos_ids(value) -> tuple[int, ...]:
    """An ``eos_token_id`` entry (one id, a list, or absent) as a tuple."""
    return tuple(value if isinstance(value, list) else [value] if value is not None else [])


@dataclass(frozen=True, kw_only=True)
class BaseModelArgs:
    """The config.json fields every family reads the same way."""

    model_type: str
    vocab_size: int
    eos_token_ids: tuple[int, ...] = ()
    quantization: QuantSpec | None = None
    # Per-module overrides as mlx_lm writes them: "model.layers.0.mlp.down_proj": {"bits": 8, ...} or False.
    quantization_overrides: dict[str, QuantSpec | None] = field(default_factory=dict)
    path: Path | None = None  # the config.json read

    def quant_for(self, module_path: str, has_scales: bool = True) -> QuantSpec | None:
        """The quantization of one module, e.g. ``model.layers.3.mlp.down_proj``.

        Like mlx_lm: an explicit per-module entry wins; otherwise a module is quantized with the default spec when
        the checkpoint carries ``<module>.scales``.
        """
        if module_path in self.quantization_overrides:
            return self.quantization_overrides[module_path]
        return self.quantization if has_scales else None


@dataclass(frozen=True)
class TensorSpec:
    """One tensor a model is built from: its shape and the safetensors dtypes it may be stored in."""

    shape: tuple[int, ...]
    dtypes: tuple[str, ...] = FLOAT_DTYPES


def linear_tensors(module: str, out_features: int, in_features: int, spec: QuantSpec | None) -> dict[str, TensorSpec]:
    """The tensors of one matrix module: ``weight`` (out, in) when dense; packed ``weight`` (out, in * bits / 32)
    uint32 with per-group ``scales`` and ``biases`` when affine-quantized (mlx's layout)."""
    if spec is None:
        return {f"{module}.weight": TensorSpec((out_features, in_features))}
    groups = (out_features, in_features // spec.group_size)
    return {
        f"{module}.weight": TensorSpec((out_features, in_features * spec.bits // 32), ("U32",)),
        f"{module}.scales": TensorSpec(groups),
        f"{module}.biases": TensorSpec(groups),
    }


def matrix_tensors(matrices: dict[str, tuple[int, int]], quant_of: Callable[[str], QuantSpec | None]
                   ) -> dict[str, TensorSpec]:
    """``linear_tensors`` of every matrix module, each quantized as ``quant_of(module)`` says."""
    return {name: t for module, (out_f, in_f) in matrices.items()
            for name, t in linear_tensors(module, out_f, in_f, quant_of(module)).items()}


@dataclass
class Linear:
    """``y = x @ W.T``; W is either dense or affine-quantized (packed uint32 + per-group scales and biases)."""

    weight: mx.array  # dense: (out, in); quantized: (out, in * bits / 32) uint32
    scales: mx.array | None = None  # (out, in / group_size)
    biases: mx.array | None = None
    spec: QuantSpec | None = None

    @classmethod
    def from_weights(cls, weights: dict[str, mx.array], module: str, spec: QuantSpec | None) -> Linear:
        if spec is None:
            return cls(weights[f"{module}.weight"])
        return cls(weights[f"{module}.weight"], weights[f"{module}.scales"], weights[f"{module}.biases"], spec)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: mx.array, dequantized: bool = False) -> mx.array:
        """``dequantized``: a quantized weight is dequantized for this product, which then runs dense."""
        if self.spec is None:
            return x @ self.weight.T
        if dequantized:
            return x @ mx.dequantize(self.weight, self.scales, self.biases, group_size=self.spec.group_size,
                                     bits=self.spec.bits).T
        return mx.quantized_matmul(
            x, self.weight, self.scales, self.biases, transpose=True, group_size=self.spec.group_size,
            bits=self.spec.bits,
        )

    def apply(self, x: mx.array, lora: LoRA | list[tuple[LoRA, mx.array]] | None, residual: mx.array | None,
              kernel: bool, dequantized_rows: int = 0) -> mx.array:
        """``residual + x @ W.T + lora(x)``; with ``kernel``, as one CUDA kernel where it covers the shapes. ``lora``
        as a list: (update, row mask) pairs, rows of a batch running with different adapters (``RowAdapters``).
        ``dequantized_rows``: from this many rows of ``x`` on (0: never), a quantized weight multiplies dense."""
        one = lora is None or isinstance(lora, LoRA)
        spec = self.spec
        if kernel and one and spec is not None and gemv.covers(x, self.weight, spec.group_size, spec.bits):
            return gemv.quantized_gemv(x, self.weight, self.scales, self.biases, self.spec.group_size,
                                       lora=None if lora is None else (lora.a, lora.b), residual=residual)
        y = self(x, dequantized=0 < dequantized_rows <= x.size // x.shape[-1])
        if isinstance(lora, LoRA):
            y = y + lora.update(x)
        elif lora is not None:
            for update, mask in lora:
                y = y + mask * update.update(x)
        return y if residual is None else residual + y

    def embed(self, tokens: mx.array) -> mx.array:
        """Rows of the matrix: the embedding lookup (dequantizing only the rows needed)."""
        if self.spec is None:
            return self.weight[tokens]
        return mx.dequantize(
            self.weight[tokens], self.scales[tokens], self.biases[tokens], group_size=self.spec.group_size,
            bits=self.spec.bits,
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
    def build(cls, a: mx.array, b: mx.array, dtype: mx.Dtype) -> LoRA:
        """From the adapter's ``a`` (in, rank) and scaled ``b`` (rank, out)."""
        return cls(mx.contiguous(a.T.astype(dtype)), mx.contiguous(b.T.astype(dtype)))

    def update(self, x: mx.array) -> mx.array:
        return (x @ self.a.T) @ self.b.T


@dataclass(frozen=True)
class RowAdapters:
    """Rows of one batch running with different adapters: for each adapter some row uses, a (B, 1, 1) mask of the
    rows that use it (1.0) and the others (0.0). Each adapter's update is computed for the whole batch and masked,
    so the cost is one low-rank product per adapter in use; rows that agree take the plain path (no mask)."""

    masks: tuple[tuple[str, mx.array], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.masks)

    @classmethod
    def of(cls, names: tuple[str | None, ...], dtype: mx.Dtype) -> str | RowAdapters | None:
        """Per-row adapter names (None: the base model) -> the one name all rows share, or the masks."""
        if len(set(names)) == 1:
            return names[0]
        return cls(tuple((name, mx.array([name == n for n in names], dtype=dtype)[:, None, None])
                         for name in sorted({n for n in names if n is not None})))  # one trace per set


Adapter = str | RowAdapters | None  # what a forward pass runs with: the base model, one adapter, or one per row
AdapterChoice = bool | str | tuple[str | None, ...] | None  # what a caller passes (``Model.adapter_for``)


class Projection:
    """Linears that read the same input (q/k/v, or gate/up), run as one matmul when their quantization matches.

    Returns one output per member. Its LoRA, if any, is applied as one wide low-rank product too: the members'
    ``a`` matrices side by side and their ``b`` matrices block-diagonal, which gives each member exactly its own update.
    """

    def __init__(self, members: list[Linear], fuse: bool = True, kernel: bool = False, dequantized_rows: int = 0):
        self.kernel = kernel  # our CUDA matrix-vector kernel for few rows (backends/cuda/gemv.py)
        self.dequantized_rows = dequantized_rows  # EngineOptions.dequantized_rows
        self.sizes = [m.out_features for m in members]
        fused = (concatenate_linears(members) if fuse else None) if len(members) > 1 else members[0]
        self.linears = [fused] if fused is not None else members
        self.loras: dict[str, list[LoRA | None]] = {}  # adapter name -> one update (or None) per linear

    @property
    def fused(self) -> bool:
        return len(self.linears) == 1

    def set_lora(self, name: str, pairs: list[tuple[mx.array, mx.array] | None], scale: float, dtype: mx.Dtype
                 ) -> None:
        """Adapter ``name``'s update: ``pairs[i]`` is member i's (a, b) or None; ``scale`` multiplies the update, as
        mlx_lm's LoRALinear does. It is folded into ``b`` in float32 and only then cast to ``dtype``: an adapter
        stored in bf16 or fp16 keeps the product's precision instead of rounding it twice."""
        if all(p is None for p in pairs):
            self.loras[name] = [None] * len(self.linears)
            return
        if not self.fused:
            self.loras[name] = [None if p is None else LoRA.build(p[0], scale * p[1].astype(mx.float32), dtype)
                                for p in pairs]
            return
        in_features = next(p[0].shape[0] for p in pairs if p is not None)
        a_blocks, b_blocks, total_out = [], [], sum(self.sizes)
        col = 0
        for size, pair in zip(self.sizes, pairs, strict=True):
            if pair is not None:
                a, b = pair
                a_blocks.append(a)
                b_blocks.append(mx.pad(scale * b.astype(mx.float32), [(0, 0), (col, total_out - col - size)]))
            col += size
        a = mx.concatenate(a_blocks, axis=1) if a_blocks else mx.zeros((in_features, 0))
        self.loras[name] = [LoRA.build(a, mx.concatenate(b_blocks, axis=0), dtype)]

    def _updates(self, member: int, adapter: Adapter) -> LoRA | list[tuple[LoRA, mx.array]] | None:
        if adapter is None:
            return None
        if isinstance(adapter, str):
            return self.loras[adapter][member]
        return [(lora, mask) for name, mask in adapter.masks if (lora := self.loras[name][member]) is not None]

    def __call__(self, x: mx.array, adapter: Adapter, residual: mx.array | None = None, split: bool = True
                 ) -> list[mx.array]:
        """One output per member (``split=False``: a fused projection's single output, members side by side);
        ``residual`` (single-member projections only) is added to the output."""
        assert residual is None or len(self.sizes) == 1
        outs = [linear.apply(x, self._updates(i, adapter), residual, self.kernel, self.dequantized_rows)
                for i, linear in enumerate(self.linears)]
        if not self.fused or len(self.sizes) == 1 or not split:
            return outs
        return mx.split(outs[0], list(accumulate(self.sizes[:-1])), axis=-1)
