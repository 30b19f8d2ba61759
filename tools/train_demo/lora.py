"""Step 5: the LoRA adapter, trained the way a user trains one: mlx_lm's LoRA trainer on the 4-bit model.

`mlx_lm.lora`'s own steps (load the quantized model, linear_to_lora_layers on the last NUM_LAYERS blocks,
its `train` loop, its adapter_config.json and adapters.safetensors), called as functions so that the
validation losses it reports pick the checkpoint. One step is ours: the dataset. mlx_lm's chat dataset
masks the prompt as rendered without `enable_thinking=False`, which scores Qwen3's empty think block as
part of every answer; here each conversation is rendered as the engine renders it (thinking off) and only
the answer and its <|im_end|> are scored, as mask_prompt means. The conversations are also written in
mlx_lm's chat format (lora-data-N/), for the record. On a CPU the model is cast to float32 (MLX's CPU
bf16 is ~50x slower); the 4-bit weights stay as they are.
The checkpoint: the adapter weights are saved at every evaluation, and the best is shipped (early
stopping). It learns one category's voice (corpus.ADAPTER_CATEGORY), answering the same kinds of requests the
base model learned to answer, built with the base's copy recipe (COPY_RECIPE): an adapter trained without the
recipe's swapped nouns and leads unlearns them, and its drafts leave the asked topic.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import types
from pathlib import Path

from .chat import ChatTemplate, CopyRecipe, Example, NounPool, conversation_for, encode_example
from .corpus import load_split

RANK = 8
SCALE = 20.0
DROPOUT = 0.0
NUM_LAYERS = 2  # the last blocks of the base model's 4
BATCH_SIZE = 8
LEARNING_RATE = 1e-4  # 5e-4 overshot: its validation loss rose again after 20 iterations, at a worse minimum
ITERS = 200  # the validation loss is lowest well inside them; early stopping keeps that checkpoint
STEPS_PER_EVAL = 10
SEED = 0
COPIES = 8  # each training fortune with this many requests, as the base model sees one per epoch
# The shipped base's swaps and leads (BASE_RUNS echo*: a lead repeating " about {word}" on every topic answer); no
# drills or echoes: the adapter learns a voice, not copying.
COPY_RECIPE = CopyRecipe(swap_share=1.0, lead_share=1.0, leads="about")


def swap_nouns(data_dir: Path, tokenizer_file: Path) -> NounPool:
    """The base's swap pool (train_base.noun_pools), weighted by the base's training texts."""
    from tokenizers import Tokenizer

    from .train_base import noun_pools  # imports torch: the pipeline's dependency, as mlx_lm is

    texts = [f.text for split in ("train", "text_train") for f in load_split(data_dir / f"{split}.jsonl")]
    return noun_pools(Tokenizer.from_file(str(tokenizer_file)), data_dir / "nouns.txt", texts)[0]


def conversations(data_dir: Path, swap_pool: NounPool) -> dict[str, list[tuple[str, str]]]:
    """(request, answer) pairs as the base trained on them (COPY_RECIPE): each training fortune with COPIES
    requests, each held-out one with one."""
    rng = random.Random(SEED)
    out = {}
    for split, copies in (("train", COPIES), ("valid", 1)):
        fortunes = load_split(data_dir / f"adapter_{split}.jsonl")
        pairs = [conversation_for(f, rng, COPY_RECIPE, swap_pool) for _ in range(copies) for f in fortunes]
        if split == "train":
            rng.shuffle(pairs)
        out[split] = pairs
    return out


def write_chat_data(pairs: dict[str, list[tuple[str, str]]], out_dir: Path) -> dict[str, int]:
    """train.jsonl / valid.jsonl in mlx_lm's chat format ({"messages": [user, assistant]})."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in pairs.items():
        with open(out_dir / f"{split}.jsonl", "w") as out:
            out.writelines(json.dumps({"messages": [{"role": "user", "content": request},
                                                    {"role": "assistant", "content": answer}]}) + "\n"
                           for request, answer in rows)
    return {split: len(rows) for split, rows in pairs.items()}


class AnswerDataset:
    """mlx_lm's dataset protocol (items, `process` to (tokens, offset)): tokens[offset:] are scored."""

    def __init__(self, examples: list[Example]):
        self._examples = examples

    def __getitem__(self, index: int) -> Example:
        return self._examples[index]

    def __len__(self) -> int:
        return len(self._examples)

    def process(self, example: Example) -> tuple[list[int], int]:
        return example.ids, example.prompt_len


def lora_args(model_dir: Path, data_dir: Path, adapter_dir: Path, num_layers: int, iters: int,
              learning_rate: float = LEARNING_RATE) -> types.SimpleNamespace:
    """What `mlx_lm.lora --train` builds from its command line: CONFIG_DEFAULTS with this run's values."""
    from mlx_lm.lora import CONFIG_DEFAULTS  # the pipeline's dependency, never the package's

    return types.SimpleNamespace(**dict(
        CONFIG_DEFAULTS, model=str(model_dir), train=True, data=str(data_dir), adapter_path=str(adapter_dir),
        fine_tune_type="lora", num_layers=num_layers, batch_size=BATCH_SIZE, iters=iters,
        learning_rate=learning_rate, mask_prompt=True, steps_per_eval=STEPS_PER_EVAL, save_every=iters,
        val_batches=-1, seed=SEED, config=None, lora_parameters={"rank": RANK, "dropout": DROPOUT, "scale": SCALE},
    ))


def train_lora(model_dir: Path, data_dir: Path, adapter_dir: Path, work_dir: Path,
               num_layers: int = NUM_LAYERS, iters: int = ITERS, learning_rate: float = LEARNING_RATE,
               shipped_paths: dict | None = None) -> dict:
    """Trains with mlx_lm, keeps the checkpoint of the lowest validation loss as adapters.safetensors."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.lora import train_model
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.utils import load
    from tokenizers import Tokenizer

    chat_dir = work_dir / f"lora-data-{num_layers}"  # one per run: runs may go in parallel
    pairs = conversations(data_dir, swap_nouns(data_dir, model_dir / "tokenizer.json"))
    log: dict = {"examples": write_chat_data(pairs, chat_dir), "train": [], "valid": []}
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    args = lora_args(model_dir, chat_dir, adapter_dir, num_layers, iters, learning_rate)
    model, _ = load(args.model)
    if mx.default_device().type == mx.cpu:
        model.set_dtype(mx.float32)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    template = ChatTemplate(model_dir / "tokenizer_config.json")
    train_set, valid_set = (AnswerDataset([encode_example(template, tokenizer, r, a) for r, a in pairs[split]])
                            for split in ("train", "valid"))

    class Record(TrainingCallback):
        """Logs the losses; at each evaluation, saves the weights just evaluated (as the trainer saves them)."""

        def on_train_loss_report(self, info: dict):
            log["train"].append({"iteration": info["iteration"], "loss": round(info["train_loss"], 4),
                                 "tokens_per_second": round(info["tokens_per_second"], 1)})

        def on_val_loss_report(self, info: dict):
            log["valid"].append({"iteration": info["iteration"], "loss": round(info["val_loss"], 4)})
            weights = dict(tree_flatten(model.trainable_parameters()))
            mx.save_safetensors(str(adapter_dir / f"evaluated-{info['iteration']:07d}.safetensors"), weights)

    started = time.time()
    train_model(args, model, train_set, valid_set, Record())
    log["seconds"] = round(time.time() - started, 1)

    best = min(log["valid"], key=lambda e: e["loss"])
    log["best_iteration"], log["best_valid_loss"] = best["iteration"], best["loss"]
    log["first_valid_loss"] = log["valid"][0]["loss"]
    shutil.copy(adapter_dir / f"evaluated-{best['iteration']:07d}.safetensors", adapter_dir / "adapters.safetensors")
    for checkpoint in [*adapter_dir.glob("evaluated-*.safetensors"), *adapter_dir.glob("*_adapters.safetensors")]:
        checkpoint.unlink()
    if shipped_paths:  # mlx_lm records this machine's paths; ship the repository's
        config_path = adapter_dir / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config.update(shipped_paths)
        config_path.write_text(json.dumps(config, indent=4) + "\n")
    (work_dir / f"lora_log-{num_layers}.json").write_text(json.dumps(log, indent=2) + "\n")
    return log
