"""Step 3: the base model, trained from random init with torch (on the GPU machine; the CPU for a smoke test), or
on from a 4-bit checkpoint of an earlier run (its weights dequantized).

Each epoch: every answer-length fortune as a ChatML conversation with a fresh request (chat.conversation_for), plus
every other-length fortune as plain text (the model reads more English than it answers with). A CopyRecipe adds what
only copying the request's word predicts, from the first step: topic requests naming a dictionary noun swapped into
the answer, leads naming it, copy drills (chat.py). Mixed precision (bf16) on CUDA. Early stopping: every EVAL_EVERY
steps, the validation loss (held-out fortunes as answers) and, with a recipe, the same fortunes with a noun swapped for
a held-out dictionary noun the request names; their mean picks the best weights, and training stops after PATIENCE
evaluations without a new best, or at max_steps or max_seconds. Each evaluation also logs copy_gain: the log-prob
gain of a swapped held-out fortune asked for with its noun rather than another (targets.request_word_gain's measure).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import re
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from .chat import (
    NO_COPYING,
    ChatTemplate,
    CopyRecipe,
    Example,
    NounPool,
    conversation_for,
    copy_drill,
    echo,
    encode_example,
    swappable_nouns,
)
from .corpus import Fortune, load_split, mentions_eval_noun, swap_noun, unattributed_answers
from .export import load_quantized_checkpoint
from .qwen3 import Qwen3ForCausalLM, Qwen3Shape

BATCH_SIZE = 32
PEAK_LR = 2e-3
MIN_LR_RATIO = 0.1
WARMUP_STEPS = 200
WEIGHT_DECAY = 0.1
DROPOUT = 0.1
EVAL_EVERY = 200
PATIENCE = 5  # evaluations without a new best validation loss
NOUN_TOKENS = 3  # pool nouns take at most this many tokens (with their leading space)
DEV_NOUN_EVERY = 25  # every 25th pool noun is held out: the swapped validation's and copy_gain's nouns
COPY_GAIN_TEXTS = 40
DRILL_VALID = 200
ECHO_MAX_CHARS = 300  # echoed texts are answer-sized: read twice, they stay under ~200 tokens


class ExampleMaker:
    """Fresh requests every epoch (the same fortune, asked for in different words)."""

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate, recipe: CopyRecipe = NO_COPYING,
                 swap_pool: NounPool | None = None):
        self._tokenizer, self._template = tokenizer, template
        self._text_end = tokenizer.token_to_id("<|endoftext|>")
        self._recipe, self._swap_pool = recipe, swap_pool

    def make(self, fortune: Fortune, rng: random.Random) -> Example:
        return self.pair(*conversation_for(fortune, rng, self._recipe, self._swap_pool))

    def drill(self, rng: random.Random) -> Example:
        return self.pair(*copy_drill(rng, self._swap_pool))

    def pair(self, request: str, answer: str) -> Example:
        return encode_example(self._template, self._tokenizer, request, answer)

    def plain(self, fortune: Fortune) -> Example:
        """The text alone, closed by <|endoftext|>: every token after the first is scored."""
        return self.plain_text(fortune.text)

    def echo(self, fortune: Fortune) -> Example:
        """The text read twice, as plain text (chat.echo)."""
        return self.plain_text(echo(fortune.text))

    def plain_text(self, text: str) -> Example:
        return Example(self._tokenizer.encode(text).ids + [self._text_end], 1)


def echo_texts(fortunes: list[Fortune], recipe: CopyRecipe) -> list[Fortune]:
    """The texts echoes read twice: answer-sized, and, unless the recipe echoes them, none that holds an EVAL_NOUN."""
    return [f for f in fortunes if len(f.text) <= ECHO_MAX_CHARS
            and (recipe.echo_eval_nouns or not mentions_eval_noun(f.text))]


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


def collate(batch: list[Example], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, positions whose next token is scored, those next tokens)."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    rows, cols, targets = [], [], []
    for row, example in enumerate(batch):
        ids[row, :len(example.ids)] = torch.tensor(example.ids)
        for pos in range(example.prompt_len - 1, len(example.ids) - 1):
            rows.append(row), cols.append(pos), targets.append(example.ids[pos + 1])
    return ids.to(device), torch.tensor([rows, cols]).to(device), torch.tensor(targets).to(device)


def autocast(device: torch.device):
    """bf16 matrix work on a GPU (weights and optimizer stay float32); plain float32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_loss(model: Qwen3ForCausalLM, batch: list[Example], pad_id: int) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the scored tokens (an answer and its closing <|im_end|>), and their count."""
    device = next(model.parameters()).device
    ids, where, targets = collate(batch, pad_id, device)
    with autocast(device):
        hidden = model.hidden(ids)[where[0], where[1]]
        logits = model.logits(hidden)
    return F.cross_entropy(logits.float(), targets), len(targets)


def noun_pools(tokenizer: Tokenizer, nouns_file: Path, texts: list[str]) -> tuple[NounPool, NounPool]:
    """(training pool, held-out dev nouns): the corpus step's dictionary nouns (corpus.dictionary_nouns) of at most
    NOUN_TOKENS tokens after a space, weighted by their counts in ``texts``."""
    nouns = [w for w in nouns_file.read_text().split() if len(tokenizer.encode(" " + w).ids) <= NOUN_TOKENS]
    counts = Counter(w for text in texts for w in re.findall(r"[a-z]+", text.lower()))
    return (NounPool.weighted([w for i, w in enumerate(nouns) if i % DEV_NOUN_EVERY], counts),
            NounPool.weighted([w for i, w in enumerate(nouns) if not i % DEV_NOUN_EVERY], counts))


def swapped_held_out(fortunes: list[Fortune], dev_nouns: NounPool) -> list[tuple[str, str, str]]:
    """Fixed (noun, other noun, answer): each held-out fortune with a swappable noun, swapped for a dev noun in turn;
    the other noun is another dev noun, for the request that does not name the answer's."""
    rng = random.Random(0)
    out = []
    for fortune in fortunes:
        nouns = swappable_nouns(fortune)
        if nouns:
            noun, other = dev_nouns.draw(rng), dev_nouns.draw(rng)
            while other == noun:
                other = dev_nouns.draw(rng)
            out.append((noun, other, swap_noun(fortune.text, nouns[0], noun)))
    return out


@torch.no_grad()
def answer_logprob_sums(model: Qwen3ForCausalLM, examples: list[Example], pad_id: int) -> list[float]:
    """Each example's summed log-probability of its scored tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = []
    for start in range(0, len(examples), 64):
        batch = examples[start:start + 64]
        ids, where, targets = collate(batch, pad_id, device)
        with autocast(device):
            logits = model.logits(model.hidden(ids)[where[0], where[1]])
        logprobs = -F.cross_entropy(logits.float(), targets, reduction="none")
        sums += torch.zeros(len(batch), device=device).index_add_(0, where[0], logprobs).tolist()
    model.train(was_training)
    return sums


def copy_gain(model: Qwen3ForCausalLM, maker: ExampleMaker, swapped: list[tuple[str, str, str]], pad_id: int) -> float:
    """Mean nats per text: a swapped held-out fortune asked for with its noun, minus asked for with another noun."""
    asked = [maker.pair(f"Write a post about {noun}.", answer) for noun, _, answer in swapped]
    other = [maker.pair(f"Write a post about {noun}.", answer) for _, noun, answer in swapped]
    gains = [a - b for a, b in zip(answer_logprob_sums(model, asked, pad_id),
                                   answer_logprob_sums(model, other, pad_id), strict=True)]
    return sum(gains) / len(gains)


@torch.no_grad()
def mean_loss(model: Qwen3ForCausalLM, examples: list[Example], pad_id: int) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), 64):
        loss, n = batch_loss(model, examples[start:start + 64], pad_id)
        total, count = total + loss.item() * n, count + n
    model.train(was_training)
    return total / count


def lr_at(step: int, total_steps: int, peak_lr: float) -> float:
    """Linear warmup, then cosine decay to MIN_LR_RATIO of the peak at total_steps."""
    if step < WARMUP_STEPS:
        return peak_lr * (step + 1) / WARMUP_STEPS
    progress = min(1.0, (step - WARMUP_STEPS) / max(1, total_steps - WARMUP_STEPS))
    return peak_lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_base(data_dir: Path, tokenizer_dir: Path, work_dir: Path, max_steps: int, max_seconds: float,
               seed: int = 0, peak_lr: float = PEAK_LR, dropout: float = DROPOUT, shape: Qwen3Shape | None = None,
               device: str = "cpu", recipe: CopyRecipe = NO_COPYING,
               init_from: Path | None = None) -> tuple[Qwen3ForCausalLM, dict]:
    """Trains from random init, or on from the 4-bit checkpoint init_from (its dequantized weights and shape, with
    a fresh optimizer and schedule); returns the model with its best weights (by validation loss, the starting
    weights included) and a summary."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device_ = torch.device(device)
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    pad_id = tokenizer.token_to_id("<|endoftext|>")
    train = load_split(data_dir / "train.jsonl")
    texts = load_split(data_dir / "text_train.jsonl")
    held_out = load_split(data_dir / "valid.jsonl")
    if not recipe.attributions:
        train, short_bodies = unattributed_answers(train)
        texts += short_bodies
        held_out = unattributed_answers(held_out)[0]
    swap_pool, dev_nouns = noun_pools(tokenizer, data_dir / "nouns.txt", [f.text for f in train + texts])
    maker = ExampleMaker(tokenizer, ChatTemplate(tokenizer_dir / "tokenizer_config.json"), recipe, swap_pool)
    plain = [maker.plain(f) for f in texts]
    echo_pool = echo_texts(train + texts, recipe)
    # Validation requests are fixed (seeded per text): the loss moves with the model, not with the wording.
    valid = [maker.make(f, random.Random(i)) for i, f in enumerate(held_out)]
    swapped = swapped_held_out(held_out, dev_nouns)
    swapped_valid = [maker.pair(f"Write a post about {noun}.", answer) for noun, _, answer in swapped]
    gain_texts = swapped[:COPY_GAIN_TEXTS]
    # Copy drills of held-out nouns: their loss falls towards 0 once the model copies from its request.
    drill_rng = random.Random(0)
    drill_valid = [maker.pair(*copy_drill(drill_rng, dev_nouns)) for _ in range(DRILL_VALID)]
    copying = recipe != NO_COPYING

    def selection_loss() -> tuple[float, float]:
        """(what picks the best weights, the plain validation loss): with a recipe, the mean with the swapped one."""
        plain_loss = mean_loss(model, valid, pad_id)
        return ((plain_loss + mean_loss(model, swapped_valid, pad_id)) / 2 if copying else plain_loss), plain_loss

    init_state = None
    if init_from is not None:
        shape, init_state = load_quantized_checkpoint(init_from)
        if shape.vocab_size != tokenizer.get_vocab_size():
            raise SystemExit(f"{init_from / 'config.json'}: vocab_size {shape.vocab_size}, but the tokenizer has "
                             f"{tokenizer.get_vocab_size()} tokens")
    shape = shape or Qwen3Shape(vocab_size=tokenizer.get_vocab_size())
    model = Qwen3ForCausalLM(shape, dropout)
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device_)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=peak_lr, betas=(0.9, 0.95),
                                  fused=device_.type == "cuda")
    log = open(work_dir / "train_base.log", "a")
    print(json.dumps({"start": {"max_steps": max_steps, "max_seconds": max_seconds, "peak_lr": peak_lr,
                                "dropout": dropout, "seed": seed, "device": device, "shape": shape.__dict__,
                                "recipe": recipe.__dict__, "init_from": init_from and str(init_from),
                                "swap_pool": len(swap_pool), "dev_nouns": len(dev_nouns), "echo_pool": len(echo_pool),
                                "parameters": sum(p.numel() for p in model.parameters())}}), file=log, flush=True)
    start_loss, start_plain_loss = selection_loss()
    best = {"valid_loss": start_loss, "step": 0, "state": copy.deepcopy(model.state_dict()),
            "plain_valid_loss": start_plain_loss, "copy_gain": copy_gain(model, maker, gain_texts, pad_id)}
    print(json.dumps({"step": 0, "valid_loss": round(start_loss, 4), "plain_valid_loss": round(start_plain_loss, 4),
                      "copy_gain": round(best["copy_gain"], 3)}), file=log, flush=True)
    step, tokens, epochs, bad_evals, started = 0, 0, 0, 0, time.time()
    model.train()
    stop = None
    while stop is None:
        if step < recipe.drill_first_steps:
            copy_examples = (recipe.drill_first_steps - step) * BATCH_SIZE
            echo_part = recipe.echo_share / (recipe.echo_share + recipe.drill_share) if recipe.echo_share else 0.0
            echoes = round(copy_examples * echo_part)
            epoch = ([maker.drill(rng) for _ in range(copy_examples - echoes)]
                     + [maker.echo(rng.choice(echo_pool)) for _ in range(echoes)])
        else:
            epoch = ([maker.make(f, rng) for f in train] + plain
                     + [maker.drill(rng) for _ in range(round(recipe.drill_share * len(train)))]
                     + [maker.echo(rng.choice(echo_pool)) for _ in range(round(recipe.echo_share * len(train)))])
        epochs += 1
        for batch in batches(epoch, rng, BATCH_SIZE):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, max_steps, peak_lr)
            loss, _ = batch_loss(model, batch, pad_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            tokens += sum(len(e.ids) for e in batch)
            if step % EVAL_EVERY == 0 or step == max_steps:
                valid_loss, plain_loss = selection_loss()
                gain = copy_gain(model, maker, gain_texts, pad_id)
                if valid_loss < best["valid_loss"]:
                    best = {"valid_loss": valid_loss, "step": step, "state": copy.deepcopy(model.state_dict()),
                            "plain_valid_loss": plain_loss, "copy_gain": gain}
                    bad_evals = 0
                else:
                    bad_evals += 1
                record = {"step": step, "epoch": epochs, "lr": round(lr_at(step, max_steps, peak_lr), 6),
                          "train_loss": round(loss.item(), 4), "valid_loss": round(valid_loss, 4),
                          "plain_valid_loss": round(plain_loss, 4),
                          "copy_gain": round(gain, 3), "drill_loss": round(mean_loss(model, drill_valid, pad_id), 4),
                          "tokens": tokens, "seconds": round(time.time() - started, 1)}
                print(json.dumps(record), file=log, flush=True)
                print(json.dumps(record), flush=True)
                if bad_evals >= PATIENCE:
                    stop = f"early stop: no better validation loss in {PATIENCE} evaluations"
                elif step >= max_steps:
                    stop = "max steps"
                elif time.time() - started > max_seconds:
                    stop = "time limit"
                if stop:
                    break
    model.load_state_dict(best["state"])
    summary = {"stopped": stop, "steps": step, "epochs": epochs, "tokens": tokens,
               "seconds": round(time.time() - started, 1), "best_step": best["step"],
               "best_valid_loss": round(best["valid_loss"], 4),
               "best_plain_valid_loss": round(best["plain_valid_loss"], 4),
               "best_copy_gain": round(best["copy_gain"], 3)}
    print(json.dumps({"summary": summary}), file=log, flush=True)
    return model.float().cpu().eval(), summary
