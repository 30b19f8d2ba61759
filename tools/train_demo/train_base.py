"""Step 3: the base model, trained from random init on ChatML conversations with torch on the CPU.

MLX's CPU backend trains this model at ~75 tokens/s; torch manages a few thousand, so the base is
trained here and exported as a Qwen3 checkpoint that MLX (and our engine) load.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from .chat import ChatTemplate, Example, encode_example, request_for
from .corpus import Fortune, load_split
from .qwen3 import Qwen3ForCausalLM, Qwen3Shape

BATCH_SIZE = 16
PEAK_LR = 2e-3
MIN_LR_RATIO = 0.1
WARMUP_STEPS = 100
WEIGHT_DECAY = 0.1
EVAL_EVERY = 200
EVAL_EXAMPLES = 300  # a fixed slice of the validation split: enough to follow, cheap to compute


class ExampleMaker:
    """Fresh requests every epoch (the same fortune, asked for in different words), cached ids."""

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate):
        self._tokenizer, self._template = tokenizer, template

    def make(self, fortune: Fortune, rng: random.Random) -> Example:
        return encode_example(self._template, self._tokenizer, request_for(fortune, rng), fortune.text)


def batches(examples: list[Example], rng: random.Random, batch_size: int) -> list[list[Example]]:
    """Shuffled batches of similar lengths, so little of each batch is padding."""
    order = examples[:]
    rng.shuffle(order)
    window = batch_size * 50
    result = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda e: len(e.ids))
        result += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(result)
    return result


def collate(batch: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, positions whose next token is scored, those next tokens)."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    rows, cols, targets = [], [], []
    for row, example in enumerate(batch):
        ids[row, :len(example.ids)] = torch.tensor(example.ids)
        for pos in range(example.prompt_len - 1, len(example.ids) - 1):
            rows.append(row), cols.append(pos), targets.append(example.ids[pos + 1])
    return ids, torch.tensor([rows, cols]), torch.tensor(targets)


def batch_loss(model: Qwen3ForCausalLM, batch: list[Example], pad_id: int) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the answer tokens (and the closing <|im_end|>), and their count."""
    ids, where, targets = collate(batch, pad_id)
    hidden = model.hidden(ids)[where[0], where[1]]
    return F.cross_entropy(model.logits(hidden), targets), len(targets)


@torch.no_grad()
def mean_loss(model: Qwen3ForCausalLM, examples: list[Example], pad_id: int) -> float:
    total, count = 0.0, 0
    for start in range(0, len(examples), 64):
        loss, n = batch_loss(model, examples[start:start + 64], pad_id)
        total, count = total + loss.item() * n, count + n
    return total / count


def lr_at(step: int, total_steps: int, peak_lr: float) -> float:
    """Linear warmup, then cosine decay to MIN_LR_RATIO of the peak."""
    if step < WARMUP_STEPS:
        return peak_lr * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, total_steps - WARMUP_STEPS)
    return peak_lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_base(data_dir: Path, tokenizer_dir: Path, work_dir: Path, steps: int, seed: int = 0,
               peak_lr: float = PEAK_LR, init: Path | None = None) -> Qwen3ForCausalLM:
    """`steps` optimizer steps from random init, or from the weights in `init` (a second phase,
    with a fresh optimizer and its own warmup and decay)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    pad_id = tokenizer.token_to_id("<|endoftext|>")
    maker = ExampleMaker(tokenizer, ChatTemplate(tokenizer_dir / "tokenizer_config.json"))
    train = load_split(data_dir / "train.jsonl")
    valid = [maker.make(f, random.Random(i)) for i, f in enumerate(load_split(data_dir / "valid.jsonl")[:EVAL_EXAMPLES])]

    model = Qwen3ForCausalLM(Qwen3Shape(vocab_size=tokenizer.get_vocab_size()))
    if init is not None:
        model.load_state_dict(torch.load(init))
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=peak_lr, betas=(0.9, 0.95))
    log = open(work_dir / "train_base.log", "a")
    print(json.dumps({"phase_start": {"steps": steps, "peak_lr": peak_lr, "init": init and init.name}}), file=log)
    step, tokens, started = 0, 0, time.time()
    while step < steps:
        epoch = [maker.make(f, rng) for f in train]
        for batch in batches(epoch, rng, BATCH_SIZE):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps, peak_lr)
            loss, _ = batch_loss(model, batch, pad_id)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            tokens += sum(len(e.ids) for e in batch)
            if step % EVAL_EVERY == 0 or step == steps:
                record = {"step": step, "train_loss": round(loss.item(), 4),
                          "valid_loss": round(mean_loss(model, valid, pad_id), 4),
                          "tokens": tokens, "seconds": round(time.time() - started, 1)}
                print(json.dumps(record), file=log, flush=True)
                torch.save(model.state_dict(), work_dir / "base.pt")
            if step == steps:
                break
    return model
