"""Our CUDA kernels (inference/backends/cuda/) against MLX: the 4-bit matrix-vector kernel against float32 products
and against its MLX-ops reference, the q/k norm + RoPE kernel against a float64 reference and against its MLX-ops
reference, the attention kernel for left-padded rows against a float64 softmax and MLX's masked attention, and the
engine with them against the engine with MLX's ops only. The tests that run a kernel need MLX
with a CUDA GPU (see docs/performance.md) and are skipped elsewhere, where the engine never calls the kernels; what
the kernels cover, the references, and (where nvcc is installed) the kernel sources' compilation are tested
everywhere."""

import shutil
import subprocess

import mlx.core as mx
import numpy as np
import pytest

from inference.backends import cuda
from inference.backends.cuda import attention, gemv, qk_rope

needs_cuda = pytest.mark.skipif(not cuda.available(), reason="needs MLX with a CUDA GPU")


def float32_product(x, w, scales, biases, group_size, lora=None, residual=None):
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


def random_product(dtype, rows, k, n, group_size, fused, rank=24):
    """Quantized weights (n, k), input rows, and with ``fused`` a LoRA's factors and a residual."""
    mx.random.seed(rows * 7 + k)
    w, scales, biases = mx.quantize(mx.random.normal((n, k)) * k**-0.5, group_size=group_size, bits=4)
    scales, biases = scales.astype(dtype), biases.astype(dtype)
    x = mx.random.normal((rows, k)).astype(dtype)
    lora = None
    if fused:
        lora = ((mx.random.normal((rank, k)) * k**-0.5).astype(dtype),
                (mx.random.normal((n, rank)) * 0.1).astype(dtype))
    residual = mx.random.normal((rows, n)).astype(dtype) if fused else None
    return x, w, scales, biases, lora, residual


def relative_error(a, expected):
    return (mx.abs(a.astype(mx.float32) - expected).max() / mx.abs(expected).max()).item()


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
    (mx.bfloat16, 9, 4096, 1024, 64, True),  # two tiles of input rows, the second with one
    (mx.bfloat16, 16, 4096, 6144, 64, False),
    (mx.bfloat16, 24, 12288, 4096, 64, True),  # four tiles, the last empty
    (mx.bfloat16, 32, 4096, 151936, 64, False),
    (mx.bfloat16, 32, 1024, 1040, 128, True),
    (mx.float16, 20, 768, 256, 32, True),
]


@needs_cuda
@pytest.mark.parametrize("dtype, rows, k, n, group_size, fused", CASES)
def test_kernel_matches_float32_product_and_mlx_ops(dtype, rows, k, n, group_size, fused):
    x, w, scales, biases, lora, residual = random_product(dtype, rows, k, n, group_size, fused)
    assert gemv.covers(x, w, group_size, 4)

    ours = gemv.quantized_gemv(x, w, scales, biases, group_size, lora=lora, residual=residual)
    mlx_ops = gemv.reference(x, w, scales, biases, group_size, lora=lora, residual=residual)
    expected = float32_product(x, w, scales, biases, group_size, lora, residual)
    tolerance = {mx.float16: 2e-3, mx.bfloat16: 1e-2}[dtype]  # the output's rounding
    assert ours.shape == mlx_ops.shape == (rows, n)
    assert relative_error(ours, expected) < tolerance
    assert relative_error(ours, mlx_ops.astype(mx.float32)) < 2 * tolerance  # both round, each within tolerance


@needs_cuda
@pytest.mark.parametrize("target_warps", [1, 2048, 1 << 20])
def test_kernel_result_does_not_depend_on_the_warps_splitting_k(target_warps):
    """From one warp a tile to MAX_WARPS: the warps' partial sums meet in shared memory, in a fixed order."""
    x, w, scales, biases, lora, residual = random_product(mx.bfloat16, 4, 4096, 1024, 64, True)
    assert gemv.warps_per_tile(1024, 64, target_warps) == {1: 1, 2048: 8, 1 << 20: 8}[target_warps]
    ours = gemv.quantized_gemv(x, w, scales, biases, 64, lora=lora, residual=residual, target_warps=target_warps)
    expected = float32_product(x, w, scales, biases, 64, lora, residual)
    assert relative_error(ours, expected) < 1e-2


def test_reference_is_the_float32_sum():
    """Runs everywhere: the MLX ops the kernel replaces compute the product, LoRA update and residual it does."""
    with mx.stream(mx.cpu):
        x, w, scales, biases, lora, residual = random_product(mx.float32, 3, 256, 128, 64, True)
        ours = gemv.reference(x, w, scales, biases, 64, lora=lora, residual=residual)
        assert relative_error(ours, float32_product(x, w, scales, biases, 64, lora, residual)) < 1e-5
        plain = gemv.reference(x, w, scales, biases, 64)
        assert relative_error(plain, float32_product(x, w, scales, biases, 64)) < 1e-5


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
    angle = np.asarray(position)[..., None] * base ** (-np.arange(half) / half)  # position: one, or (rows, 1, 1)
    a, b = normed[..., :half], normed[..., half:]
    return np.concatenate([a * np.cos(angle) - b * np.sin(angle), a * np.sin(angle) + b * np.cos(angle)], axis=-1)


def random_qkv(dtype, rows, heads, kv_heads, head_dim, seed):
    mx.random.seed(seed)
    qkv = (mx.random.normal((rows, 1, (heads + 2 * kv_heads) * head_dim)) * 3).astype(dtype)
    q_norm, k_norm = (mx.random.uniform(0.5, 1.5, (head_dim,)).astype(dtype) for _ in range(2))
    return qkv, q_norm, k_norm


def qk_rope_errors(outputs, qkv, q_norm, k_norm, heads, kv_heads, head_dim, eps, base, position, dtype):
    """The largest error of q and k against float64 (relative, or absolute below 1); asserts v is qkv's, unchanged."""
    q, k, v = outputs
    rows = qkv.shape[0]
    q_in, k_in, v_in = mx.split(qkv, [heads * head_dim, (heads + kv_heads) * head_dim], axis=-1)
    assert mx.array_equal(v, v_in.reshape(rows, 1, kv_heads, head_dim).transpose(0, 2, 1, 3)).item()
    f64 = lambda a: np.array(a.astype(mx.float32), dtype=np.float64)  # noqa: E731
    errors = []
    for ours, part, count, norm in ((q, q_in, heads, q_norm), (k, k_in, kv_heads, k_norm)):
        x = f64(part.reshape(rows, 1, count, head_dim)).transpose(0, 2, 1, 3)
        expected = norm_rope_float64(x, f64(norm), eps, base, position, dtype)
        assert ours.shape == expected.shape
        errors.append((np.abs(f64(ours) - expected) / np.maximum(np.abs(expected), 1.0)).max())
    return max(errors)


@needs_cuda
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float32], ids=str)
@pytest.mark.parametrize("rows, heads, kv_heads, head_dim", [(1, 32, 8, 128), (3, 4, 2, 64)])
@pytest.mark.parametrize("position", [0, 7, 1000, 40000])
@pytest.mark.parametrize("per_row", [False, True], ids=["one-position", "per-row"])
def test_qk_rope_is_as_accurate_as_mlx_norms_and_rope(dtype, rows, heads, kv_heads, head_dim, position, per_row):
    """Against a float64 reference, our kernel's largest error is of the order of its MLX-ops reference's
    (mx.fast.rms_norm + mx.fast.rope: at most twice theirs, or two units in the last place of the dtype; at position
    40000 both lose ~3e-3 to float32 angles); v comes through unchanged. Per row: rows at their own positions, as
    left-padded rows of a server's batch are."""
    qkv, q_norm, k_norm = random_qkv(dtype, rows, heads, kv_heads, head_dim, seed=position + rows)
    eps, base = 1e-6, 1_000_000.0
    assert qk_rope.covers(qkv, head_dim)
    offset = mx.array([position + 5 * r for r in range(rows)] if per_row else position, dtype=mx.int32)
    position = np.array(offset).reshape(-1, 1, 1) if per_row else position
    args = (qkv, q_norm, k_norm, offset, heads, kv_heads, head_dim, eps, base)
    ours = qk_rope_errors(qk_rope.queries_keys_values(*args), qkv, q_norm, k_norm, heads, kv_heads, head_dim, eps,
                          base, position, dtype)
    mlx_ops = qk_rope_errors(qk_rope.reference(*args), qkv, q_norm, k_norm, heads, kv_heads, head_dim, eps, base,
                             position, dtype)
    ulp = {mx.bfloat16: 2**-7, mx.float32: 2**-22}[dtype]  # at magnitudes up to 2
    assert ours <= 2 * max(mlx_ops, ulp)


def test_qk_rope_reference_and_coverage():
    """Runs everywhere: the MLX ops the kernel replaces normalize, rotate and lay out q/k/v as the float64 reference
    does (here at position 1000, float32); the kernel takes one-token steps with whole rotation pairs per lane."""
    with mx.stream(mx.cpu):
        qkv, q_norm, k_norm = random_qkv(mx.float32, 2, 4, 2, 64, seed=3)
        outputs = qk_rope.reference(qkv, q_norm, k_norm, 1000, 4, 2, 64, 1e-6, 1e6)
        assert qk_rope_errors(outputs, qkv, q_norm, k_norm, 4, 2, 64, 1e-6, 1e6, 1000, mx.float32) < 1e-4
    assert qk_rope.covers(mx.zeros((4, 1, 1024)), 128)
    assert not qk_rope.covers(mx.zeros((1, 6, 1024)), 128)  # a prompt: six tokens
    assert not qk_rope.covers(mx.zeros((4, 1, 1024)), 32)  # a lane would hold half a pair


def random_attention(dtype, rows, heads, kv_heads, head_dim, capacity, seed):
    """q (rows, heads, 1, D), cache buffers (rows, kv_heads, capacity, D) and each row's start and position: rows
    with their own left padding, the longest reaching past the middle of the buffer (the rest is stale data)."""
    mx.random.seed(seed)
    q = mx.random.normal((rows, heads, 1, head_dim)).astype(dtype)
    keys, values = (mx.random.normal((rows, kv_heads, capacity, head_dim)).astype(dtype) for _ in range(2))
    offset = capacity // 2 + 3  # positions written, the new one included, the same for every row
    start = mx.array([(17 * r) % (offset - 1) for r in range(rows)], dtype=mx.int32)
    return q, keys, values, start, offset - 1 - start


def attention_float64(q, keys, values, start, position, scale):
    f64 = lambda a: np.array(a.astype(mx.float32), dtype=np.float64)  # noqa: E731
    q, keys, values = f64(q), f64(keys), f64(values)
    groups = q.shape[1] // keys.shape[1]
    out = np.zeros(q.shape)
    for r, (first, pos) in enumerate(zip(np.array(start).tolist(), np.array(position).tolist(), strict=True)):
        for h in range(q.shape[1]):
            k, v = keys[r, h // groups, first : first + pos + 1], values[r, h // groups, first : first + pos + 1]
            scores = k @ q[r, h, 0] * scale
            weights = np.exp(scores - scores.max())
            out[r, h, 0] = weights @ v / weights.sum()
    return out


def test_attention_reference_is_the_float64_softmax_and_coverage():
    """Runs everywhere: the MLX ops the kernel replaces attend to each row's own positions only (here float32)."""
    with mx.stream(mx.cpu):
        q, keys, values, start, position = random_attention(mx.float32, 3, 4, 2, 64, 40, seed=1)
        ours = attention.reference(q, keys, values, start, position, 0.125)
        expected = attention_float64(q, keys, values, start, position, 0.125)
        assert np.abs(np.array(ours, dtype=np.float64) - expected).max() < 1e-5
    assert attention.covers(mx.bfloat16, 128, 32, 8) and attention.covers(mx.float16, 64, 4, 2)
    assert not attention.covers(mx.float32, 128, 32, 8)  # float32 computes on the CPU, without our kernels
    assert not attention.covers(mx.bfloat16, 80, 32, 8)  # a lane would hold 2.5 elements


@needs_cuda
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=str)
@pytest.mark.parametrize("rows, heads, kv_heads, head_dim, capacity", [(5, 32, 8, 128, 520), (3, 4, 2, 64, 264),
                                                                       (2, 8, 8, 256, 40), (32, 32, 8, 128, 264)])
def test_attention_kernel_matches_float64_and_mlx_masked_attention(dtype, rows, heads, kv_heads, head_dim, capacity):
    """Rows at their own positions: within bf16/fp16 rounding of the float64 softmax, and no further from it than
    MLX's masked attention (its fallback ops) is."""
    q, keys, values, start, position = random_attention(dtype, rows, heads, kv_heads, head_dim, capacity, seed=rows)
    scale = head_dim**-0.5
    expected = attention_float64(q, keys, values, start, position, scale)
    error = lambda out: np.abs(np.array(out.astype(mx.float32), dtype=np.float64) - expected).max()  # noqa: E731
    ours = attention.decode_attention(q, keys, values, start, position, scale)
    assert ours.shape == q.shape
    ulp = {mx.bfloat16: 2**-8, mx.float16: 2**-11}[dtype]  # outputs below 1: averages of unit normals
    assert error(ours) <= max(2 * error(attention.reference(q, keys, values, start, position, scale)), 2 * ulp)


CUDA_TYPES = {mx.bfloat16: "__nv_bfloat16", mx.float16: "__half", mx.float32: "float", mx.uint32: "uint32_t",
              mx.int32: "int32_t"}
# A stand-in for MLX's CUDA preamble (mlx/backend/cuda/device/utils.cuh): the types a kernel sees.
MLX_PREAMBLE = """#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
namespace mlx::core::cu {
struct Shape { int32_t dims[8]; __device__ int32_t operator[](int i) const { return dims[i]; } };
}
"""


def mlx_translation_unit(kernels: list[tuple[cuda.KernelSource, list, list, list]]) -> str:
    """The code mx.fast.cuda_kernel compiles for each (source, input dtypes, output dtypes, template arguments), as
    MLX generates it (mlx/backend/cuda/custom_kernel.cpp: signature from the names, constants, then the body); the
    kernels must share one header."""
    (header,) = {source.header for source, *_ in kernels}
    unit = MLX_PREAMBLE + header + "namespace mlx::core::cu {\n"
    for i, (source, inputs, outputs, template) in enumerate(kernels):
        params = []
        for name, dtype in zip(source.input_names, inputs, strict=True):
            params.append(f"const {CUDA_TYPES[dtype]}* {name}")
            if f"{name}_shape" in source.body:
                params.append(f"const __grid_constant__ Shape {name}_shape")
        params += [f"{CUDA_TYPES[dtype]}* {name}" for name, dtype in zip(source.output_names, outputs, strict=True)]
        constants = [f"using {name} = {CUDA_TYPES[value]};" if isinstance(value, mx.Dtype)
                     else f"constexpr bool {name} = {str(value).lower()};" if isinstance(value, bool)
                     else f"constexpr int {name} = {value};" for name, value in template]
        unit += f"__global__ void {source.kernel_name}_{i}({', '.join(params)}) {{\n  {' '.join(constants)}\n"
        unit += source.body + "}\n"
    return unit + "}\n"


def gemv_instances():
    kernels = []
    for dtype in (mx.bfloat16, mx.float16):
        for tiles in gemv.TILES:
            kernels.append((gemv.dense_source(), [dtype, dtype], [dtype],
                            [("T", dtype), ("MAX_ROWS", gemv.COLUMNS * tiles), ("THREADS", gemv.DENSE_THREADS)]))
            for lora in (False, True):
                for residual in (False, True):
                    inputs = [dtype, mx.uint32, dtype, dtype] + [dtype, dtype] * lora + [dtype] * residual
                    for group in gemv.GROUP_SIZES:
                        template = [("T", dtype), ("BF16", dtype == mx.bfloat16), ("GROUP", group),
                                    ("MAX_WARPS", gemv.MAX_WARPS), ("COLS", tiles), ("LORA", lora),
                                    ("RESIDUAL", residual)]
                        kernels.append((gemv.quantized_source(lora, residual), inputs, [dtype], template))
    return kernels


def attention_instances():
    return [(attention.kernel_source(head_dim**-0.5), [dtype, dtype, dtype, mx.int32, mx.int32], [dtype],
             [("T", dtype), ("HEADS", 32), ("KV_HEADS", 8), ("D", head_dim)])
            for dtype in (mx.bfloat16, mx.float16) for head_dim in attention.HEAD_DIMS]


def qk_rope_instances():
    return [(qk_rope.kernel_source(1e-6, 1e6), [dtype, dtype, dtype, mx.int32], [dtype] * 3,
             [("T", dtype), ("HEADS", 32), ("KV_HEADS", 8), ("HEAD_DIM", head_dim), ("PER_ROW", per_row)])
            for dtype in (mx.bfloat16, mx.float16, mx.float32) for head_dim in (64, 128) for per_row in (False, True)]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit)")
@pytest.mark.parametrize("instances", [gemv_instances, qk_rope_instances, attention_instances],
                         ids=["gemv", "qk_rope", "attention"])
def test_kernel_sources_compile_for_sm90(tmp_path, instances):
    """Runs where nvcc is: every instance the engine can launch, as MLX would generate it, compiles for sm_90 (the
    tensor-core mma and its register constraints are checked by ptxas, not only the C++)."""
    unit = tmp_path / "kernels.cu"
    unit.write_text(mlx_translation_unit(instances()))
    result = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-c", str(unit), "-o", str(tmp_path / "kernels.o")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def bench_checkpoint(tmp_path_factory):
    """The benchmarks' tiny shape (real vocabulary, head_dim 64) with the real tokenizer, and their adapter."""
    from tools.bench.checkpoints import SHAPES, qwen_tokenizer_dir, write_adapter, write_checkpoint

    root = tmp_path_factory.mktemp("gemv")
    model_dir = write_checkpoint(root / "tiny", SHAPES["tiny"], tokenizer_dir=qwen_tokenizer_dir())
    return model_dir, write_adapter(root / "tiny-adapter", model_dir)


def batch_cache(model, prompts: list[list[int]], adapter) -> list:
    """Each prompt prefilled on its own, the rows then joined into one batch (left-padded where their lengths
    differ), as the server's batch takes in requests."""
    cache = None
    for prompt in prompts:
        row = model.new_cache(1)
        model(mx.array([prompt]), row, adapter)
        if cache is None:
            cache = row
        else:
            for layer_cache, joining in zip(cache, row, strict=True):
                layer_cache.extend(joining)
    return cache


def test_padded_steps_hand_the_attention_kernel_each_rows_start_and_position(bench_checkpoint, monkeypatch):
    """Runs everywhere: the model's wiring of the attention kernel (the cache buffers, each row's padding and the new
    token's position), with the kernel's MLX-ops reference in its place, gives the masked attention's logits."""
    from inference import Engine

    engine = Engine.load(bench_checkpoint[0])
    model = engine.model
    prompt = [9707, 11, 1879, 0, 576, 2150]
    prompts = [prompt[:6], prompt[:2], prompt[:5], prompt[:1]]
    calls, steps = [], {}

    def kernel_stand_in(*args):
        calls.append(args[3].tolist())
        return attention.reference(*args)

    monkeypatch.setattr(attention, "decode_attention", kernel_stand_in)
    for wired in (False, True):
        monkeypatch.setattr(model, "padded_attention_kernel", wired)
        cache = batch_cache(model, prompts, None)
        first = model.decode(mx.array([[13], [42], [7], [99]]), cache)
        steps[wired] = mx.stack([first, model.decode(mx.argmax(first, axis=-1)[:, None], cache)])
        assert len(calls) == (2 * len(model.layers) if wired else 0)
    assert calls[0] == [0, 4, 1, 5]  # each row's left padding
    assert mx.allclose(steps[True], steps[False], atol=1e-4).item()


@needs_cuda
@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "lora"])
@pytest.mark.parametrize("padded", [False, True], ids=["one-prompt", "padded-rows"])
def test_engine_with_kernel_matches_engine_with_mlx_products(bench_checkpoint, with_adapter, padded):
    from tools.bench.engine import load_engine

    model_dir, adapter_dir = bench_checkpoint
    engines = {name: load_engine(model_dir, adapter_dir if with_adapter else None, {"cuda_kernels": kernels})
               for name, kernels in (("kernel", True), ("mlx", False))}
    assert engines["kernel"].model.lm_head.kernel and not engines["mlx"].model.lm_head.kernel
    assert engines["kernel"].model.padded_attention_kernel

    prompt = [9707, 11, 1879, 0, 576, 2150]
    # four drafts of one prompt, or four requests whose prompts end at their own positions
    prompts = [prompt[:6], prompt[:2], prompt[:5], prompt[:1]] if padded else [prompt] * 4
    logits = {}
    for name, engine in engines.items():
        model = engine.model
        cache = batch_cache(model, prompts, engine.adapter_enabled)  # the prompts go through MLX's products in both
        assert cache[0].padded == padded
        steps = [model.decode(mx.array([[t] for t in (13, 42, 7, 99)]), cache, engine.adapter_enabled)]
        steps.append(model.decode(mx.argmax(steps[-1], axis=-1)[:, None], cache, engine.adapter_enabled))
        logits[name] = mx.stack(steps)
    scale = mx.abs(logits["mlx"]).max().item()
    assert (mx.abs(logits["kernel"] - logits["mlx"]).max() / scale).item() < 3e-2  # bf16 end to end, 4 blocks
    assert (mx.argmax(logits["kernel"], -1) == mx.argmax(logits["mlx"], -1)).all().item()
