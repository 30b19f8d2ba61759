"""Our CUDA kernels against MLX: the 4-bit matrix-vector kernel (inference/gemv.py) against float32 products, the
q/k norm + RoPE kernel (inference/qk_rope.py) against mx.fast.rms_norm + mx.fast.rope, and the engine with them
against the engine with MLX's ops only. All but the first test run only where MLX has a CUDA GPU (the lent GPU
machine: see docs/performance.md); elsewhere the engine never calls the kernels and they are skipped."""

import os
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from inference import Engine, gemv, qk_rope

needs_cuda = pytest.mark.skipif(not gemv.enabled(), reason="needs MLX with a CUDA GPU")


def reference(x, w, scales, biases, group_size, lora=None, residual=None):
    """The same sum in float32 from the dequantized weights, on the CPU (MLX's CUDA float32 matmuls may use TF32)."""
    with mx.stream(mx.cpu):
        f32 = lambda a: a.astype(mx.float32)  # noqa: E731
        y = f32(x) @ mx.dequantize(w, f32(scales), f32(biases), group_size=group_size, bits=4).T
        if lora is not None:
            y = y + (f32(x) @ f32(lora[0]).T) @ f32(lora[1]).T
        if residual is not None:
            y = y + f32(residual)
        mx.eval(y)
    return y


CASES = [  # (dtype, rows, K, N, group size, with LoRA and residual): each compiles its own kernel
    (mx.bfloat16, 1, 4096, 6144, 64, False),
    (mx.bfloat16, 1, 4096, 6144, 64, True),
    (mx.bfloat16, 4, 12288, 4096, 64, True),  # 16 warps a tile
    (mx.bfloat16, 8, 4096, 151936, 64, False),  # the head: one warp a tile
    (mx.bfloat16, 2, 256, 512, 64, False),
    (mx.bfloat16, 5, 512, 16384, 64, True),
    (mx.bfloat16, 3, 768, 256, 32, True),  # a lane's word of each group
    (mx.bfloat16, 7, 1024, 1040, 128, True),  # four words
    (mx.float16, 4, 1024, 1024, 128, False),
    (mx.float16, 8, 2048, 512, 64, True),
]


@needs_cuda
@pytest.mark.parametrize("dtype, rows, k, n, group_size, fused", CASES)
def test_kernel_matches_float32_product(dtype, rows, k, n, group_size, fused):
    mx.random.seed(rows * 7 + k)
    w, scales, biases = mx.quantize(mx.random.normal((n, k)) * k**-0.5, group_size=group_size, bits=4)
    scales, biases = scales.astype(dtype), biases.astype(dtype)
    x = mx.random.normal((rows, k)).astype(dtype)
    lora = ((mx.random.normal((24, k)) * k**-0.5).astype(dtype), (mx.random.normal((n, 24)) * 0.1).astype(dtype)) if fused else None
    residual = mx.random.normal((rows, n)).astype(dtype) if fused else None
    assert gemv.covers(x, w, group_size, 4)

    ours = gemv.quantized_gemv(x, w, scales, biases, group_size, lora=lora, residual=residual).astype(mx.float32)
    expected = reference(x, w, scales, biases, group_size, lora, residual)
    tolerance = {mx.float16: 2e-3, mx.bfloat16: 1e-2}[dtype]  # the output's rounding
    assert ours.shape == (rows, n)
    assert (mx.abs(ours - expected).max() / mx.abs(expected).max()).item() < tolerance


def test_kernel_leaves_prompt_sized_and_odd_products_to_mlx():
    """Runs everywhere: which products the engine would give the kernel."""
    w = mx.zeros((512, 256 // 8), dtype=mx.uint32)
    x = lambda rows, k=256, dtype=mx.bfloat16: mx.zeros((rows, k), dtype=dtype)  # noqa: E731
    assert gemv.covers(x(gemv.MAX_ROWS), w, 64, 4) and gemv.covers(x(1, dtype=mx.float16), w, 128, 4)
    assert not gemv.covers(x(gemv.MAX_ROWS + 1), w, 64, 4)  # a prompt, or many drafts: MLX's kernels
    assert not gemv.covers(x(1, 100), mx.zeros((512, 13), dtype=mx.uint32), 64, 4)  # K not whole groups
    assert not gemv.covers(x(1), mx.zeros((512, 64), dtype=mx.uint32), 64, 8)  # 8 bits
    assert not gemv.covers(x(1), mx.zeros((520, 32), dtype=mx.uint32), 64, 4)  # N not whole tiles of 16
    assert not gemv.covers(x(1, dtype=mx.float32), w, 64, 4)  # float32 activations: no 16-bit mma
    assert not gemv.covers(x(1), w, 16, 4)  # groups smaller than a quad's 4 words


def norm_rope_float64(x: np.ndarray, weight: np.ndarray, eps: float, base: float, position: int, dtype) -> np.ndarray:
    """x (..., head_dim) -> RMSNorm, rounded to ``dtype`` as MLX's norm outputs are, then RoPE, in float64."""
    normed = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight
    normed = np.array(mx.array(normed, dtype=mx.float32).astype(dtype).astype(mx.float32), dtype=np.float64)
    half = x.shape[-1] // 2
    angle = position * base ** (-np.arange(half) / half)
    a, b = normed[..., :half], normed[..., half:]
    return np.concatenate([a * np.cos(angle) - b * np.sin(angle), a * np.sin(angle) + b * np.cos(angle)], axis=-1)


@needs_cuda
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float32], ids=str)
@pytest.mark.parametrize("rows, heads, kv_heads, head_dim", [(1, 32, 8, 128), (3, 4, 2, 64)])
@pytest.mark.parametrize("position", [0, 7, 1000, 40000])
def test_qk_rope_is_as_accurate_as_mlx_norms_and_rope(dtype, rows, heads, kv_heads, head_dim, position):
    """Against a float64 reference, our kernel's largest error is of the order of mx.fast.rms_norm + mx.fast.rope's
    (at most twice theirs, or two units in the last place of the dtype; at position 40000 both lose ~3e-3 to float32
    angles); v comes through unchanged."""
    mx.random.seed(position + rows)
    qkv = (mx.random.normal((rows, 1, (heads + 2 * kv_heads) * head_dim)) * 3).astype(dtype)
    q_norm, k_norm = (mx.random.uniform(0.5, 1.5, (head_dim,)).astype(dtype) for _ in range(2))
    eps, base = 1e-6, 1_000_000.0
    q, k, v = qk_rope.queries_keys_values(qkv, q_norm, k_norm, mx.array(position, dtype=mx.int32), heads, kv_heads,
                                          head_dim, eps, base)
    q_in, k_in, v_in = mx.split(qkv, [heads * head_dim, (heads + kv_heads) * head_dim], axis=-1)
    assert mx.array_equal(v, v_in.reshape(rows, 1, kv_heads, head_dim).transpose(0, 2, 1, 3)).item()

    ulp = {mx.bfloat16: 2**-7, mx.float32: 2**-22}[dtype]  # at magnitudes up to 2
    f64 = lambda a: np.array(a.astype(mx.float32), dtype=np.float64)  # noqa: E731
    for ours, part, count, norm in ((q, q_in, heads, q_norm), (k, k_in, kv_heads, k_norm)):
        x = part.reshape(rows, 1, count, head_dim)
        mlx_ops = mx.fast.rope(mx.fast.rms_norm(x, norm, eps).transpose(0, 2, 1, 3), head_dim, traditional=False,
                               base=base, scale=1.0, offset=position)
        reference = norm_rope_float64(f64(x).transpose(0, 2, 1, 3), f64(norm), eps, base, position, dtype)
        error = lambda a: (np.abs(f64(a) - reference) / np.maximum(np.abs(reference), 1.0)).max()  # noqa: E731
        assert ours.shape == mlx_ops.shape
        assert error(ours) <= 2 * max(error(mlx_ops), ulp)


@pytest.fixture(scope="module")
def bench_checkpoint(tmp_path_factory):
    from inference.bench import SHAPES, qwen_tokenizer_dir, write_adapter, write_checkpoint

    tokenizer_dir = Path(os.environ.get("BOBBY_TEST_TOKENIZER_DIR") or qwen_tokenizer_dir())
    root = tmp_path_factory.mktemp("gemv")
    model_dir = write_checkpoint(root / "tiny", SHAPES["tiny"], tokenizer_dir)
    return model_dir, write_adapter(root / "tiny-adapter", model_dir)


@needs_cuda
@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "lora"])
def test_engine_with_kernel_matches_engine_with_mlx_products(bench_checkpoint, monkeypatch, with_adapter):
    model_dir, adapter_dir = bench_checkpoint
    engines = {}
    for name, flag in (("kernel", "1"), ("mlx", "0")):
        monkeypatch.setenv("BOBBY_CUDA_KERNELS", flag)
        engines[name] = Engine.load(model_dir, adapter_dir if with_adapter else None)
    assert engines["kernel"].model.lm_head.kernel and not engines["mlx"].model.lm_head.kernel

    prompt = [[9707, 11, 1879, 0, 576, 2150]] * 4  # four drafts decoding together
    logits = {}
    for name, engine in engines.items():
        model, cache = engine.model, engine.model.new_cache(4)
        model(mx.array(prompt), cache, engine.adapter_enabled)  # the prompt goes through MLX's products in both
        steps = [model.decode(mx.array([[t] for t in (13, 42, 7, 99)]), cache, engine.adapter_enabled)]
        steps.append(model.decode(mx.argmax(steps[-1], axis=-1)[:, None], cache, engine.adapter_enabled))
        logits[name] = mx.stack(steps)
    scale = mx.abs(logits["mlx"]).max().item()
    assert (mx.abs(logits["kernel"] - logits["mlx"]).max() / scale).item() < 3e-2  # bf16 end to end, 4 blocks
    assert (mx.argmax(logits["kernel"], -1) == mx.argmax(logits["mlx"], -1)).all().item()
