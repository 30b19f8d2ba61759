"""The tests' tiny random Qwen3 checkpoints (FIXTURES) and LoRA adapters, written by the project's one checkpoint
writer (tools/bench/checkpoints.py) in the exact mlx-community / mlx_lm layouts, with a small trained tokenizer.

Weights are scaled so that logits are well separated: greedy comparisons must not hinge on near-ties.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from tools.bench import checkpoints

QWEN_TOKENIZER_DIR = checkpoints.qwen_tokenizer_dir()
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


def write_model(model_dir: Path, spec: FixtureSpec, seed: int = 0) -> Path:
    """A tiny checkpoint of ``spec`` with the small tokenizer above (its vocabulary rounded up to 64 rows)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(model_dir)
    shape = checkpoints.Shape(
        hidden_size=spec.hidden_size, num_hidden_layers=spec.num_hidden_layers,
        intermediate_size=spec.intermediate_size, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        tie_word_embeddings=spec.tie_word_embeddings, head_dim=spec.head_dim, vocab_size=((vocab + 63) // 64) * 64,
    )
    quantization = None if spec.bits is None else checkpoints.Quantization(spec.bits, spec.group_size, spec.overrides)
    eos = Tokenizer.from_file(str(model_dir / "tokenizer.json")).token_to_id("<|im_end|>")
    return checkpoints.write_checkpoint(model_dir, shape, quantization, eos_token_id=eos, shards=spec.shards,
                                        init=checkpoints.separated_init, seed=seed, max_position_embeddings=4096)


def write_adapter(adapter_dir: Path, model_dir: Path, num_layers: int = 2, rank: int = 8, scale: float = 20.0,
                  keys: list[str] | None = None, seed: int = 1) -> Path:
    """An adapter as mlx_lm.lora saves it, with non-zero lora_b so it changes the output (last 2 blocks by default)."""
    return checkpoints.write_adapter(adapter_dir, model_dir, num_layers, rank, scale, keys, seed)
