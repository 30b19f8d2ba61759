"""The demo model pipeline, run by hand (never in CI): `python -m tools.train_demo STEP`.

Steps, in order: corpus, tokenizer, base, quantize, lora, evaluate (or `all`). Intermediate files
go to build/demo/ (git-ignored); the shipped model and adapter to bobby_tui/demo/.
Needs the Debian `fortunes` package and, for `base` and `lora`, torch (dev-only).
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
EVAL_TEXTS = 200
# The shipped base model: a second phase continued the first, which the shared CPU ran too slowly
# to leave a usable model within its planned 20 minutes (MODEL_CARD.md has the numbers).
BASE_PHASES = ({"steps": 1400, "peak_lr": 2e-3, "seed": 0}, {"steps": 1200, "peak_lr": 1.5e-3, "seed": 1})
STEPS = ("corpus", "tokenizer", "base", "quantize", "lora", "evaluate")


def step_corpus(args) -> None:
    import json

    from .corpus import load_split, read_fortunes, vocabulary, write_splits

    fortunes = read_fortunes()
    print("fortunes per split:", write_splits(fortunes, DATA))
    (DEMO / "data").mkdir(parents=True, exist_ok=True)
    (DEMO / "data" / "vocabulary.txt").write_text("\n".join(vocabulary(fortunes)) + "\n")
    # The adapter category's held-out texts ship too: the tests measure the adapter on them.
    with open(DEMO / "data" / "adapter_valid.jsonl", "w") as f:
        for fortune in load_split(DATA / "adapter_valid.jsonl"):
            f.write(json.dumps(fortune.text) + "\n")


def step_tokenizer(args) -> None:
    from .bpe import save_tokenizer, train_tokenizer
    from .chat import all_requests
    from .corpus import load_split

    texts = [f.text for name in ("train", "adapter_train") for f in load_split(DATA / f"{name}.jsonl")]
    # The requests are few but every training example has one: weigh them like a sizeable text.
    save_tokenizer(train_tokenizer(texts + all_requests() * 20), TOKENIZER)


def step_base(args) -> None:
    """The shipped recipe (BASE_PHASES), or one phase as the options say when --steps is given."""
    import torch

    from .export import save_float_checkpoint
    from .train_base import train_base

    torch.set_num_threads(args.threads)
    custom = {"steps": args.steps, "peak_lr": args.lr, "seed": args.seed}
    init = args.init
    for number, phase in enumerate(BASE_PHASES if args.steps is None else (custom,), start=1):
        model = train_base(DATA, TOKENIZER, WORK, init=init, **phase)
        init = WORK / f"base-phase{number}.pt"
        torch.save(model.state_dict(), init)
    save_float_checkpoint(model, TOKENIZER, FLOAT_MODEL)


def step_quantize(args) -> None:
    from .export import quantize_checkpoint

    quantize_checkpoint(FLOAT_MODEL, DEMO / "model")


def step_lora(args) -> None:
    import torch

    from .lora import train_lora

    torch.set_num_threads(args.threads)
    train_lora(DEMO / "model", DATA, DEMO / "adapter", WORK)


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
    parser.add_argument("--steps", type=int, help="base: train one phase of this many steps instead of BASE_PHASES")
    parser.add_argument("--lr", type=float, default=2e-3, help="base: that phase's peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="base: that phase's seed (init, shuffling, requests)")
    parser.add_argument("--init", type=Path, help="base: start that phase from these weights (e.g. build/demo/base-phase2.pt)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    for name in STEPS if args.step == "all" else (args.step,):
        started = time.time()
        globals()[f"step_{name}"](args)
        print(f"{name}: {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
