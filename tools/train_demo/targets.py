"""The demo's measured targets (issue 12), from the shipped files through our engine, as `bobby-tui post` drafts.

    python -m tools.train_demo.targets [--model DIR] [--adapter DIR] [--json PATH] [--seeds N,N,...]

40 drafts: "Write a post about X" for the 20 nouns of EVAL_NOUNS (never a training prompt word, see corpus.py),
seeds 1 and 2 in one batch, as `bobby-tui post 2 --seed 1 "Write a post about X"` makes them (default sampling,
post-processing and retries of bobby_tui.config). Printed:
- the share of words that are English: in Debian's `wamerican` list (skipped when it is not installed);
- the share of drafts that contain X or its plural;
- the share of drafts that were retried for being under min_length;
- the adapter's perplexity on its held-out category against the base model's (answers to "Write a post.");
- a blind check: a word-frequency score, fitted on the other 39 pairs, picks the adapter's draft of each pair;
- CPU decode tok/s of single drafts, without and with the adapter;
- whether the model reads the request's word at all: the log-probability gain of a held-out fortune, one of its nouns
  swapped for X, asked for with X rather than with another noun (needs the corpus step's build/demo/data/).
`--seeds 3,4,5,6` drafts the same prompts at other seeds: how much of a figure is the two seeds' luck.
`--no-adapter` measures the base model's rows alone (to compare base runs before their adapters are trained).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from collections import Counter
from pathlib import Path

from bobby_tui.composer import Draft, compose
from bobby_tui.config import Config
from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_ADAPTER_VALIDATION, DEMO_MODEL_DIR
from inference import Engine, GenerationRequest, SamplingParams

from .corpus import EVAL_NOUNS, Fortune, english_words, is_english, load_split, plural, swap_noun, words_of

SEEDS = (1, 2)
PERPLEXITY_REQUEST = "Write a post."
SPEED_REQUESTS = ("Write a post.", "Write a post about coffee.", "Write something funny.")
SPEED_ROUNDS = 2
# The base model's held-out fortunes with their nouns, as `python -m tools.train_demo corpus` writes them (not shipped)
HELD_OUT = Path(__file__).resolve().parents[2] / "build" / "demo" / "data" / "valid.jsonl"


def mentions(text: str, noun: str) -> bool:
    return re.search(rf"\b({re.escape(noun)}|{re.escape(plural(noun))})\b", text, re.IGNORECASE) is not None


def drafts_for(engine: Engine, config: Config, seeds: tuple[int, ...] = SEEDS) -> list[dict]:
    """A draft per seed per noun, as `bobby-tui post 2 --seed 1 PROMPT` makes them (for SEEDS)."""
    s = config.sampling
    out = []
    for noun in EVAL_NOUNS:
        prompt = f"Write a post about {noun}"
        params = [SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
                                 repetition_penalty=s.repetition_penalty, seed=seed) for seed in seeds]
        events = compose(engine, prompt, None, params, s.max_tokens, config.postprocess, config.post_limit)
        for draft in sorted((e for e in events if isinstance(e, Draft)), key=lambda d: d.draft):
            out.append({"noun": noun, "seed": seeds[draft.draft], "attempts": draft.attempts, "text": draft.text})
    return out


def request_word_gain(engine: Engine, held_out: list[Fortune], texts: int = 30) -> float:
    """Does the model read the request's word? Held-out fortunes with one of their nouns swapped for an EVAL_NOUN
    (corpus.swap_noun): the log-probability of the text asked for with that noun, minus asked for with another
    EVAL_NOUN, in nats per text. A model that follows its request scores well above 0; one that ignores it, 0."""
    singular = ((f.text, [n for n in f.topics if not n.endswith("s") or n.endswith("ss")]) for f in held_out)
    pairs = [(text, nouns[0]) for text, nouns in singular if nouns][:texts]
    prompts = {noun: engine.tokenizer.encode(engine.render_prompt(f"Write a post about {noun}."))
               for noun in EVAL_NOUNS}
    gains = []
    for i, (text, own_noun) in enumerate(pairs):
        asked, other = EVAL_NOUNS[i % len(EVAL_NOUNS)], EVAL_NOUNS[(i + 7) % len(EVAL_NOUNS)]
        swapped = swap_noun(text, own_noun, asked)
        gains.append(sum(answer_logprobs(engine, prompts[asked], swapped))
                     - sum(answer_logprobs(engine, prompts[other], swapped)))
    return statistics.mean(gains)


def answer_logprobs(engine: Engine, prompt: list[int], text: str) -> list[float]:
    """The log-probability of each token of ``text`` and its closing <|im_end|> as the answer to ``prompt``."""
    answer = engine.tokenizer.encode(text + "<|im_end|>")
    return engine.token_logprobs(prompt + answer)[len(prompt) - 1:]


def answer_perplexity(engine: Engine, texts: list[str]) -> float:
    prompt = engine.tokenizer.encode(engine.render_prompt(PERPLEXITY_REQUEST))
    logprobs: list[float] = []
    for text in texts:
        logprobs += answer_logprobs(engine, prompt, text)
    return math.exp(-sum(logprobs) / len(logprobs))


def style_tokens(text: str) -> list[str]:
    """Words as written (case kept: shouting is part of a voice) and runs of ! or ?."""
    return re.findall(r"[A-Za-z']+|[!?]+", text)


def log_odds_per_word(words: Counter, fit_adapter: Counter, total_a: int, fit_base: Counter, total_b: int) -> float:
    """Add-one smoothed log p(adapter) / p(base) of ``words``, per word: a long draft is not more adapter-like for
    its length."""
    n = max(1, sum(words.values()))
    return sum(c * (math.log((fit_adapter[w] + 1) / total_a) - math.log((fit_base[w] + 1) / total_b))
               for w, c in words.items()) / n


def pair_accuracy(adapter_texts: list[str], base_texts: list[str]) -> float:
    """Leave-one-pair-out naive Bayes on word counts: for each pair, fitted on the other pairs' drafts, does the
    adapter's draft score higher on log p(adapter) / p(base) than the base's draft?"""
    counts = [(Counter(style_tokens(a)), Counter(style_tokens(b)))
              for a, b in zip(adapter_texts, base_texts, strict=True)]
    correct = 0
    for held, (adapter_words, base_words) in enumerate(counts):
        fit_adapter, fit_base = Counter(), Counter()
        for i, (a, b) in enumerate(counts):
            if i != held:
                fit_adapter.update(a)
                fit_base.update(b)
        vocabulary = set(fit_adapter) | set(fit_base) | set(adapter_words) | set(base_words)
        total_a, total_b = sum(fit_adapter.values()) + len(vocabulary), sum(fit_base.values()) + len(vocabulary)
        adapter_score, base_score = (log_odds_per_word(words, fit_adapter, total_a, fit_base, total_b)
                                     for words in (adapter_words, base_words))
        correct += adapter_score > base_score
    return correct / len(counts)


def decode_speed(engine: Engine) -> float:
    """Median decode tok/s of single drafts at the default temperature (after one warm-up generation)."""
    engine.warmup()
    speeds = []
    for round_ in range(SPEED_ROUNDS):
        for i, request in enumerate(SPEED_REQUESTS):
            params = SamplingParams(temperature=0.95, top_p=0.9, seed=100 + 10 * round_ + i)
            generation = GenerationRequest(engine.render_prompt(request), [params], max_tokens=120)
            done = [e for e in engine.generate(generation) if hasattr(e, "finish_reason")][0]
            if done.stats.generated_tokens >= 16:
                speeds.append(done.stats.decode_tok_s)
    return statistics.median(speeds)


def measure(model_dir: Path, adapter_dir: Path | None, seeds: tuple[int, ...] = SEEDS) -> dict:
    """Every target; with no adapter, the base model's alone (what picks a base run before its adapter is trained).
    Other seeds than the targets' show how much of a figure is the two seeds' luck."""
    config = Config()
    engine = Engine.load(model_dir, adapter_dir)
    started = time.time()
    engine.adapter_enabled = False
    speed_base = decode_speed(engine)
    base = drafts_for(engine, config, seeds)
    report = dict(seeds=list(seeds), **base_report(base, config), decode_tok_s_base=speed_base, request_word_gain=None)
    if HELD_OUT.exists():
        report["request_word_gain"] = request_word_gain(engine, load_split(HELD_OUT))
    if adapter_dir is not None:
        report.update(adapter_report(engine, config, base, seeds))
    report["seconds"] = time.time() - started
    return report


def base_report(base: list[dict], config: Config) -> dict:
    dictionary = english_words()
    words = [w for d in base for w in words_of(d["text"])]
    return {
        "drafts": len(base),
        "english_word_share": (None if dictionary is None
                               else sum(is_english(w, dictionary) for w in words) / len(words)),
        "not_english": None if dictionary is None else sorted({w for w in words if not is_english(w, dictionary)}),
        "topic_share": sum(mentions(d["text"], d["noun"]) for d in base) / len(base),
        "retry_share": sum(d["attempts"] > 1 for d in base) / len(base),
        "short_share": sum(len(d["text"]) < config.postprocess.min_length for d in base) / len(base),
        "mean_chars": statistics.mean(len(d["text"]) for d in base),
        "base_drafts": base,
    }


def adapter_report(engine: Engine, config: Config, base: list[dict], seeds: tuple[int, ...]) -> dict:
    """The adapter's targets; the engine comes with its adapter switched off and leaves with it on."""
    held_out = [json.loads(line) for line in DEMO_ADAPTER_VALIDATION.read_text().splitlines()]
    ppl_base = answer_perplexity(engine, held_out)
    engine.adapter_enabled = True
    speed_adapter = decode_speed(engine)
    adapter = drafts_for(engine, config, seeds)
    ppl_adapter = answer_perplexity(engine, held_out)
    return {
        "adapter_topic_share": sum(mentions(d["text"], d["noun"]) for d in adapter) / len(adapter),
        "adapter_retry_share": sum(d["attempts"] > 1 for d in adapter) / len(adapter),
        "adapter_category_ppl_base": ppl_base,
        "adapter_category_ppl_adapter": ppl_adapter,
        "adapter_ppl_ratio": ppl_adapter / ppl_base,
        "adapter_vs_base_pair_accuracy": pair_accuracy([d["text"] for d in adapter], [d["text"] for d in base]),
        "decode_tok_s_adapter": speed_adapter,
        "adapter_drafts": adapter,
    }


def print_table(report: dict) -> None:
    def pct(value):
        return "skipped (no /usr/share/dict/american-english)" if value is None else f"{100 * value:.1f}%"

    rows = [
        ("English words (wamerican), base drafts", pct(report["english_word_share"]), ">= 95%"),
        ("drafts containing X or its plural", pct(report["topic_share"]), ">= 50%"),
        ("drafts retried (under min_length)", pct(report["retry_share"]), "<= 10%"),
        ("drafts still under min_length", pct(report["short_share"]), ""),
        ("mean draft length (chars)", f"{report['mean_chars']:.0f}", "80-300"),
        ("log-prob gain of naming the text's noun in the request",
         "skipped (run the corpus step)" if report["request_word_gain"] is None
         else f"{report['request_word_gain']:+.2f} nats per text", "> 0: it reads the request"),
    ]
    if "adapter_ppl_ratio" not in report:  # --no-adapter
        rows.append(("CPU decode tok/s, base", f"{report['decode_tok_s_base']:.0f}", ">= 100"))
    else:
        rows += [
            ("adapter perplexity ratio on its held-out category",
             f"{report['adapter_ppl_ratio']:.2f} ({report['adapter_category_ppl_adapter']:.1f} / "
             f"{report['adapter_category_ppl_base']:.1f})", "<= 0.6"),
            ("word-frequency classifier, adapter vs base pairs", pct(report["adapter_vs_base_pair_accuracy"]),
             ">= 80%"),
            ("CPU decode tok/s, base / adapter",
             f"{report['decode_tok_s_base']:.0f} / {report['decode_tok_s_adapter']:.0f}", ">= 100"),
        ]
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:<24} {target}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.train_demo.targets", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--adapter", type=Path, default=DEMO_ADAPTER_DIR)
    parser.add_argument("--json", type=Path, help="also write the report, every draft included, here")
    parser.add_argument("--speed-only", action="store_true", help="only the CPU decode tok/s, base and adapter")
    parser.add_argument("--no-adapter", action="store_true", help="the base model's targets alone (to pick a base "
                        "run before its adapter is trained)")
    parser.add_argument("--seeds", type=lambda v: tuple(int(s) for s in v.split(",")), default=SEEDS,
                        metavar="N,N,...", help="draft seeds (default: the targets' 1,2)")
    args = parser.parse_args()
    if args.speed_only:
        engine = Engine.load(args.model, args.adapter)
        engine.adapter_enabled = False
        base = decode_speed(engine)
        engine.adapter_enabled = True
        print(f"CPU decode tok/s, base / adapter: {base:.0f} / {decode_speed(engine):.0f}")
        return
    report = measure(args.model, None if args.no_adapter else args.adapter, args.seeds)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print_table(report)


if __name__ == "__main__":
    main()
