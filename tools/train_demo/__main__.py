"""The demo model pipeline, run by hand (never in CI): `python -m tools.train_demo STEP`.

Steps, in order: corpus, tokenizer, base, quantize, lora, evaluate (or `all`). Intermediate files
go to build/demo/ (git-ignored); the shipped model and adapter to bobby_tui/demo/.
Needs Debian's `fortunes` and `wamerican` packages (corpus), torch (base; a GPU, `--device cuda`, for the
shipped recipe) and mlx_lm (quantize, lora; MLX for CUDA on the GPU machine for lora). MODEL_CARD.md has
the commands that built the shipped files.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "build" / "demo"
DATA = WORK / "data"
TOKENIZER = WORK / "tokenizer"
FLOAT_MODEL = WORK / "base-f32"
DEMO = REPO / "bobby_tui" / "demo"
RUNS = WORK / "runs"
EVAL_TEXTS = 200
# What every echo and unsigned run shares (chat.CopyRecipe): a swapped noun in every topic request, a lead repeating
# " about {word}" on every topic answer, a copy drill and an echo per fortune.
ECHO = {"swap_share": 1.0, "lead_share": 1.0, "leads": "about", "drill_share": 1.0, "echo_share": 1.0}
# The base recipe: runs with their own schedule lengths, dropout and copy recipe (chat.CopyRecipe), on the GPU in
# parallel, each early-stopped on the validation split. The first three built the previous model; the copy runs train
# from the first step on data where only the request's word predicts some answer tokens (issue 12: on-topic drafts),
# and the targets (tools/train_demo/targets.py) on the CPU pick the one that ships: unsigned (below).
BASE_RUNS = {
    "short": {"max_steps": 4000, "dropout": 0.1},
    "long": {"max_steps": 9000, "dropout": 0.1},
    "long-dropout": {"max_steps": 9000, "dropout": 0.2},
    "swap-only": {"max_steps": 5000, "dropout": 0.1, "recipe": {"swap_share": 0.8}},
    "copy": {"max_steps": 5000, "dropout": 0.1, "recipe": {"swap_share": 0.8, "drill_share": 0.3}},
    "drills": {"max_steps": 5000, "dropout": 0.1, "recipe": {"swap_share": 1.0, "lead_share": 0.3, "drill_share": 2.0}},
    "drills-heavy": {"max_steps": 5000, "dropout": 0.0,
                     "recipe": {"swap_share": 1.0, "lead_share": 0.3, "drill_share": 5.0}},
    "drills-first": {"max_steps": 5000, "dropout": 0.1,
                     "recipe": {"swap_share": 0.8, "lead_share": 0.3, "drill_share": 0.3, "drill_first_steps": 400}},
    "drills-first-long": {"max_steps": 5000, "dropout": 0.1,
                          "recipe": {"swap_share": 0.8, "lead_share": 0.3, "drill_share": 0.5,
                                     "drill_first_steps": 1000}},
    "drills-first-lead": {"max_steps": 5000, "dropout": 0.1,
                          "recipe": {"swap_share": 1.0, "lead_share": 0.5, "drill_share": 1.0,
                                     "drill_first_steps": 600}},
    # Continuations (base --init-from drills-first-lead's 4-bit model, which its time limit stopped while its
    # validation loss still fell): a re-warmed, lower peak learning rate; the lead's share of topic answers raised.
    "lead-on": {"max_steps": 5000, "dropout": 0.1, "peak_lr": 5e-4,
                "recipe": {"swap_share": 1.0, "lead_share": 0.5, "drill_share": 1.0}},
    "lead-more": {"max_steps": 5000, "dropout": 0.1, "peak_lr": 5e-4,
                  "recipe": {"swap_share": 1.0, "lead_share": 0.8, "drill_share": 1.0}},
    "lead-more-slow": {"max_steps": 5000, "dropout": 0.1, "peak_lr": 2.5e-4,
                       "recipe": {"swap_share": 1.0, "lead_share": 0.8, "drill_share": 1.0}},
    # Echoes (a text read twice: chat.CopyRecipe.echo_share), because drills-first-lead copies a request's word only
    # if it was trained to copy that word's token (MODEL_CARD.md, "The echo recipe"); every topic answer opens with a
    # lead that repeats " about {word}", for an induction head to complete. "-clean": no text with an EVAL_NOUN is
    # echoed. "-on": base --init-from drills-first-lead's 4-bit model.
    "echo": {"max_steps": 5000, "dropout": 0.1, "recipe": {**ECHO, "drill_first_steps": 600}},
    "echo-clean": {"max_steps": 5000, "dropout": 0.1,
                   "recipe": {**ECHO, "drill_first_steps": 600, "echo_eval_nouns": False}},
    "echo-heavy-clean": {"max_steps": 5000, "dropout": 0.1,
                         "recipe": {**ECHO, "drill_first_steps": 600, "echo_share": 3.0, "echo_eval_nouns": False}},
    "echo-on": {"max_steps": 5000, "dropout": 0.1, "peak_lr": 5e-4, "recipe": ECHO},
    "echo-on-clean": {"max_steps": 5000, "dropout": 0.1, "peak_lr": 5e-4, "recipe": {**ECHO, "echo_eval_nouns": False}},
    # Unsigned answers (chat.CopyRecipe.attributions False): an invented "-- Author" line was a third of echo-clean's
    # non-English words. From random init, and trained on from echo's and echo-clean's 4-bit models ("-on-").
    # unsigned ships.
    "unsigned": {"max_steps": 5000, "dropout": 0.1,
                 "recipe": {**ECHO, "drill_first_steps": 600, "attributions": False}},
    "unsigned-dropout": {"max_steps": 5000, "dropout": 0.2,
                         "recipe": {**ECHO, "drill_first_steps": 600, "attributions": False}},
    "unsigned-clean": {"max_steps": 5000, "dropout": 0.1,
                       "recipe": {**ECHO, "drill_first_steps": 600, "echo_eval_nouns": False, "attributions": False}},
    "unsigned-on-echo": {"max_steps": 5000, "dropout": 0.1, "peak_lr": 5e-4,
                         "recipe": {**ECHO, "attributions": False}},
    "unsigned-on-clean": {"max_steps": 5000, "dropout": 0.1, "peak_lr": 5e-4,
                          "recipe": {**ECHO, "echo_eval_nouns": False, "attributions": False}},
}
# Shapes other than qwen3.Qwen3Shape's defaults, by name: `tiny` for a mechanism check on the CPU in minutes.
SHAPES = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 32, "intermediate_size": 384},
}
BASE_MAX_SECONDS = 270
STEPS = ("corpus", "tokenizer", "base", "quantize", "lora", "evaluate")


def step_corpus(args) -> None:
    import json

    from .corpus import (
        TEXT_LENGTHS,
        dictionary_nouns,
        english_words,
        load_split,
        plain_english,
        read_fortunes,
        vocabulary,
        with_topics,
        write_splits,
        write_texts,
    )

    dictionary = english_words()
    if dictionary is None:
        raise SystemExit("/usr/share/dict/american-english: not found; run `apt-get install wamerican` first")
    fortunes = with_topics(plain_english(read_fortunes(), dictionary))
    print("fortunes per split:", write_splits(fortunes, DATA))
    print("plain texts:", write_texts(plain_english(read_fortunes(lengths=TEXT_LENGTHS), dictionary), DATA))
    # The copy recipes' noun pool travels with the data (the GPU machine has no dictionary).
    (DATA / "nouns.txt").write_text("\n".join(dictionary_nouns()) + "\n")
    (DEMO / "data").mkdir(parents=True, exist_ok=True)
    (DEMO / "data" / "vocabulary.txt").write_text("\n".join(vocabulary(fortunes)) + "\n")
    # The adapter category's held-out texts ship too: the tests measure the adapter on them.
    with open(DEMO / "data" / "adapter_valid.jsonl", "w") as f:
        for fortune in load_split(DATA / "adapter_valid.jsonl"):
            f.write(json.dumps(fortune.text) + "\n")


def step_tokenizer(args) -> None:
    import random

    from .bpe import save_tokenizer, train_tokenizer
    from .chat import request_for
    from .corpus import load_split

    fortunes = [f for name in ("train", "adapter_train") for f in load_split(DATA / f"{name}.jsonl")]
    texts = [f.text for f in load_split(DATA / "text_train.jsonl")]
    # Every training example has a request: a few rounds of them weigh the requests' words as training does.
    rng = random.Random(0)
    requests = [request_for(f, rng) for _ in range(5) for f in fortunes]
    save_tokenizer(train_tokenizer([f.text for f in fortunes] + texts + requests), TOKENIZER)


def step_base(args) -> None:
    """Trains the BASE_RUNS (or the one --run names) into build/demo/runs/NAME/: float checkpoint, summary."""
    import json

    import torch
    from tokenizers import Tokenizer

    from .chat import CopyRecipe
    from .export import save_float_checkpoint
    from .qwen3 import Qwen3Shape
    from .train_base import train_base

    torch.set_num_threads(args.threads)
    vocab_size = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json")).get_vocab_size()
    for name in [args.run] if args.run else list(BASE_RUNS):
        run_dir = args.runs_dir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        settings = dict(BASE_RUNS[name], max_seconds=args.max_seconds, seed=args.seed)
        if args.max_steps is not None:
            settings["max_steps"] = args.max_steps
        # A continuation keeps its checkpoint's shape.
        shape = None if args.init_from else Qwen3Shape(vocab_size=vocab_size, **SHAPES.get(args.shape, {}))
        recipe = CopyRecipe(**settings.pop("recipe", {}))
        model, summary = train_base(DATA, TOKENIZER, run_dir, device=args.device, shape=shape, recipe=recipe,
                                    init_from=args.init_from, **settings)
        save_float_checkpoint(model, TOKENIZER, run_dir / "model")
        (run_dir / "summary.json").write_text(json.dumps(dict(summary, run=name, shape=args.shape,
                                                              init_from=args.init_from and str(args.init_from),
                                                              recipe=recipe.__dict__, **settings), indent=2) + "\n")


def best_run(runs_dir: Path) -> Path:
    import json

    summaries = [json.loads(p.read_text()) for p in runs_dir.glob("*/summary.json")]
    if not summaries:
        raise SystemExit(f"{runs_dir}: no trained base runs; run the base step first")
    return runs_dir / min(summaries, key=lambda s: s["best_valid_loss"])["run"]


def step_quantize(args) -> None:
    from .export import quantize_checkpoint

    run_dir = args.runs_dir / args.run if args.run else best_run(args.runs_dir)
    print("quantizing base run", run_dir.name, "into", args.out or DEMO / "model")
    quantize_checkpoint(run_dir / "model", args.out or DEMO / "model")


def step_lora(args) -> None:
    from .lora import ITERS, LEARNING_RATE, NUM_LAYERS, train_lora

    num_layers = args.num_layers or NUM_LAYERS
    log = train_lora(args.model or DEMO / "model", DATA, args.out or DEMO / "adapter",
                     args.out.parent if args.out else WORK, num_layers=num_layers, iters=args.iters or ITERS,
                     learning_rate=args.learning_rate or LEARNING_RATE,
                     shipped_paths={"model": "bobby_tui/demo/model", "adapter_path": "bobby_tui/demo/adapter",
                                    "data": f"build/demo/lora-data-{num_layers}"})
    print({k: v for k, v in log.items() if k not in ("train", "valid")})


def spread_sample(items: list, n: int) -> list:
    return items[::max(1, len(items) // n)][:n]


def step_evaluate(args) -> None:
    import json

    from .corpus import load_split
    from .evaluate import evaluate, print_report

    # MLX on this CPU scores ~150 tokens/s: an evenly spread sample of the base splits (they are
    # ordered by category), all of the adapter's.
    train, valid = (spread_sample([f.text for f in load_split(DATA / f"{name}.jsonl")], EVAL_TEXTS)
                    for name in ("train", "valid"))
    adapter_valid = [f.text for f in load_split(DATA / "adapter_valid.jsonl")]
    report = evaluate(DEMO / "model", DEMO / "adapter", train, valid, adapter_valid)
    (WORK / "evaluation.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print_report(report)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.train_demo", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=STEPS + ("all",))
    parser.add_argument("--run", choices=sorted(BASE_RUNS), help="base: train this run only; quantize: ship it")
    parser.add_argument("--device", default="cpu", help="base: torch device (the recipe: cuda)")
    parser.add_argument("--max-steps", type=int, help="base: override the run's schedule length (a smoke test)")
    parser.add_argument("--max-seconds", type=float, default=BASE_MAX_SECONDS, help="base: stop a run after this")
    parser.add_argument("--seed", type=int, default=0, help="base: seed (init, shuffling, requests)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--num-layers", type=int, help="lora: adapt this many last blocks")
    parser.add_argument("--iters", type=int, help="lora: train this many iterations (a smoke test: 10)")
    parser.add_argument("--learning-rate", type=float, help="lora: Adam's learning rate instead of lora.LEARNING_RATE")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="base: a named shape instead of the default one")
    parser.add_argument("--init-from", type=Path, metavar="MODEL_DIR",
                        help="base: train on from this 4-bit checkpoint (the quantize step's output) instead of "
                        "from random init")
    parser.add_argument("--runs-dir", type=Path, default=RUNS, help="base, quantize: the runs' folder")
    parser.add_argument("--out", type=Path, help="quantize, lora: write the model or adapter here instead of "
                        "bobby_tui/demo/model or bobby_tui/demo/adapter")
    parser.add_argument("--model", type=Path, help="lora: adapt this 4-bit model instead of bobby_tui/demo/model")
    args = parser.parse_args()
    if args.init_from and args.shape:
        parser.error("--init-from trains on in its checkpoint's shape: leave out --shape")
    WORK.mkdir(parents=True, exist_ok=True)
    for name in STEPS if args.step == "all" else (args.step,):
        started = time.time()
        globals()[f"step_{name}"](args)
        print(f"{name}: {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
