"""How the engine runs a model: every backend choice in one value, passed to ``Engine.load``. No MLX import.

Each field is a choice that changes speed or memory, never the numbers a model computes beyond rounding (the parity
tests run with the defaults; the bench compares the variants). ``EngineOptions.for_device()`` gives the defaults of
the device MLX would run on; ``dataclasses.replace`` makes a variant.
"""

from __future__ import annotations

from dataclasses import dataclass

COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
GPU_DEQUANTIZED_ROWS = 33  # EngineOptions.dequantized_rows on CUDA: past our 4-bit kernel's 32 rows


@dataclass(frozen=True)
class EngineOptions:
    # q/k/v as one matmul and gate/up as another (docs/performance.md says what it gains).
    fuse_projections: bool = True
    # One-token steps run each block as two mx.compile'd halves around the cache write and attention: a traced half
    # replays without the Python and graph-building work of its ~15 ops, which bounds batch-1 decoding on a GPU.
    compile_block_halves: bool = True
    # Our CUDA kernels (inference/backends/cuda/) for one-token steps of few rows; taken only where
    # MLX runs on a CUDA GPU.
    cuda_kernels: bool = False
    # On the CPU, projections dequantized once to dense float32 (inference/dense_cpu.py), where they fit in memory.
    cpu_dense: bool = False
    # A 4-bit product of at least this many rows (a prefill's tokens) dequantizes its weight and multiplies dense;
    # 0: never. MLX's quantized_matmul on CUDA is slow for many rows (docs/performance.md, "Serving").
    dequantized_rows: int = 0
    # Prompt tokens per forward pass: bounds the attention scores' memory on long prompts, and how long a prompt
    # being prefilled holds up the rows already decoding (inference/batching.py).
    prefill_chunk: int = 512
    # The dtype activations, norms, LoRA and dense weights compute in; quantized weights stay packed.
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)} (got {self.compute_dtype!r})")
        if isinstance(self.prefill_chunk, bool) or not isinstance(self.prefill_chunk, int) or self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be a positive integer (got {self.prefill_chunk!r})")
        if isinstance(self.dequantized_rows, bool) or not isinstance(self.dequantized_rows, int) \
                or self.dequantized_rows < 0:
            raise ValueError(f"dequantized_rows must be an integer >= 0 (got {self.dequantized_rows!r})")

    @classmethod
    def for_device(cls) -> EngineOptions:
        """The defaults for MLX's default device: bf16 and our kernels on a GPU; float32 and dense projections on the
        CPU, where MLX's bf16 matmuls are ~10x slower and its 4-bit products no faster than dense ones."""
        import mlx.core as mx

        if mx.default_device().type == mx.DeviceType.gpu:
            cuda = mx.cuda.is_available()
            return cls(compute_dtype="bfloat16", cuda_kernels=cuda,
                       dequantized_rows=GPU_DEQUANTIZED_ROWS if cuda else 0)
        return cls(compute_dtype="float32", cpu_dense=True)

    @property
    def dtype(self):
        """``compute_dtype`` as an MLX dtype."""
        import mlx.core as mx

        return getattr(mx, self.compute_dtype)
