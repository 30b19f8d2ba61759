"""Step 5: the LoRA adapter, trained in torch against the DEQUANTIZED 4-bit base.

`mlx_lm.lora` on this CPU measured ~2 tokens/s (see MODEL_CARD.md), so the adapter is trained here
on exactly the weights that run (the shipped 4-bit model, dequantized), and written as mlx_lm
writes one: adapters.safetensors with `<module>.lora_a` (in, r) / `.lora_b` (r, out), applied as
y = W x + scale * (x @ a) @ b, and adapter_config.json with mlx_lm.lora's full set of fields.
It learns one category's voice (corpus.ADAPTER_CATEGORY); the loss covers the answers only
(mask_prompt).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn

from .chat import GENERIC_REQUESTS, ChatTemplate, encode_example
from .corpus import Fortune, load_split
from .qwen3 import Qwen3ForCausalLM, Qwen3Shape
from .train_base import batch_loss, batches, mean_loss

RANK = 8
SCALE = 20.0
DROPOUT = 0.0
NUM_LAYERS = 4  # every layer of the demo base
# mlx_lm's default keys: every linear projection of a layer.
KEYS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
EPOCHS = 8
BATCH_SIZE = 8
LEARNING_RATE = 2e-4
SEED = 0


class LoRALinear(nn.Module):
    """mlx_lm's LoRALinear: a frozen base plus scale * (x @ lora_a) @ lora_b, lora_b starting at 0."""

    def __init__(self, base: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        bound = 1 / math.sqrt(base.in_features)
        self.lora_a = nn.Parameter(torch.empty(base.in_features, rank).uniform_(-bound, bound))
        self.lora_b = nn.Parameter(torch.zeros(rank, base.out_features))
        self.scale = scale

    def forward(self, x):
        return self.base(x) + self.scale * ((x @ self.lora_a) @ self.lora_b)


def load_dequantized(model_dir: Path) -> Qwen3ForCausalLM:
    """The shipped 4-bit checkpoint as float32 torch weights: what MLX computes with, unpacked."""
    import mlx.core as mx  # the pipeline's dependency, never the package's

    config = json.loads((model_dir / "config.json").read_text())
    quant = config["quantization"]
    shape = Qwen3Shape(**{k: config[k] for k in Qwen3Shape.__dataclass_fields__})
    tensors = mx.load(str(model_dir / "model.safetensors"))
    state = {}
    for name, value in tensors.items():
        if name.endswith((".scales", ".biases")):
            continue
        if name.endswith(".weight") and name[:-len("weight")] + "scales" in tensors:
            prefix = name[:-len("weight")]
            value = mx.dequantize(value, tensors[prefix + "scales"], tensors[prefix + "biases"],
                                  group_size=quant["group_size"], bits=quant["bits"])
        state[name] = torch.from_numpy(np.array(value.astype(mx.float32)))
    model = Qwen3ForCausalLM(shape)
    model.load_state_dict(state)
    return model.requires_grad_(False)


def add_lora(model: Qwen3ForCausalLM, seed: int) -> dict[str, LoRALinear]:
    """LoRA on KEYS of the last NUM_LAYERS layers; returns them by module path."""
    torch.manual_seed(seed)
    added = {}
    layers = model.model.layers
    for index in range(len(layers) - NUM_LAYERS, len(layers)):
        for key in KEYS:
            parent_name, attr = key.split(".")
            parent = getattr(layers[index], parent_name)
            lora = LoRALinear(getattr(parent, attr), RANK, SCALE)
            setattr(parent, attr, lora)
            added[f"model.layers.{index}.{key}"] = lora
    return added


def adapter_config(iters: int, model_dir: str, adapter_dir: str) -> dict:
    """mlx_lm.lora's adapter_config.json: its CONFIG_DEFAULTS with this run's values, sorted."""
    from mlx_lm.lora import CONFIG_DEFAULTS

    config = dict(CONFIG_DEFAULTS, model=model_dir, train=True, data="build/demo/data (adapter_*.jsonl)",
                  adapter_path=adapter_dir, fine_tune_type="lora", num_layers=NUM_LAYERS,
                  batch_size=BATCH_SIZE, iters=iters, learning_rate=LEARNING_RATE, mask_prompt=True,
                  seed=SEED, config=None,
                  lora_parameters={"rank": RANK, "dropout": DROPOUT, "scale": SCALE})
    return dict(sorted(config.items()))


def train_lora(model_dir: Path, data_dir: Path, adapter_dir: Path, work_dir: Path, epochs: int = EPOCHS) -> dict:
    """Trains and saves the adapter; returns the log of validation losses, before and after each epoch."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    template = ChatTemplate(model_dir / "tokenizer_config.json")
    pad_id = tokenizer.token_to_id("<|endoftext|>")
    rng = random.Random(SEED)

    def examples(fortunes: list[Fortune], rng: random.Random):
        return [encode_example(template, tokenizer, rng.choice(GENERIC_REQUESTS), f.text) for f in fortunes]

    train = load_split(data_dir / "adapter_train.jsonl")
    valid = examples(load_split(data_dir / "adapter_valid.jsonl"), random.Random(SEED))
    model = load_dequantized(model_dir)
    loras = add_lora(model, SEED)
    params = [p for lora in loras.values() for p in (lora.lora_a, lora.lora_b)]
    optimizer = torch.optim.Adam(params, lr=LEARNING_RATE)
    log = {"valid_loss": [round(mean_loss(model, valid, pad_id), 4)], "train_loss": []}
    steps, started = 0, time.time()
    for _ in range(epochs):
        total = 0.0
        epoch_batches = batches(examples(train, rng), rng, BATCH_SIZE)
        for batch in epoch_batches:
            loss, _ = batch_loss(model, batch, pad_id)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        log["train_loss"].append(round(total / len(epoch_batches), 4))
        log["valid_loss"].append(round(mean_loss(model, valid, pad_id), 4))
        print(f"epoch {len(log['train_loss'])}: {json.dumps({k: v[-1] for k, v in log.items()})}", flush=True)
    log["seconds"] = round(time.time() - started, 1)
    log["iters"] = steps

    adapter_dir.mkdir(parents=True, exist_ok=True)
    weights = {f"{path}.{leaf}": getattr(lora, leaf).detach().contiguous()
               for path, lora in loras.items() for leaf in ("lora_a", "lora_b")}
    save_file(weights, str(adapter_dir / "adapters.safetensors"), metadata={"format": "mlx"})
    config = adapter_config(steps, "bobby_tui/demo/model", "bobby_tui/demo/adapter")
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config, indent=4) + "\n")
    (work_dir / "lora_log.json").write_text(json.dumps(log, indent=2) + "\n")
    return log
