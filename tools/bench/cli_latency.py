"""Time from process start to the last draft of `bobby-tui post`, in-process vs on a running `bobby-tui serve`.

Each run is a fresh `python -m bobby_tui post` process for one short post (it exits right after printing its last
draft): in-process it loads the model (and on a GPU compiles its kernels) every time; with --server it asks the
server, which loaded the model once, before the runs. The server is started here on a free loopback port and stopped
here; the first run of each kind is a warm-up (file cache, the server's first request) and is not counted.

    python -m tools.bench.cli_latency                                  # the demo model
    python -m tools.bench.cli_latency --model ~/models/Qwen3-8B-4bit --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tools.bench.server_load import REPO, Server, repo_env

PROMPT = "Write a post about the sea."
RUN_TIMEOUT_S = 600


def timed_post(post_args: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bobby_tui", "post", *post_args], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or not result.stdout.strip():
        raise SystemExit(f"post failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed


def measure(label: str, post_args: list[str], env: dict, runs: int) -> tuple[str, list[float]]:
    timed_post(post_args, env)  # warm-up
    times = [timed_post(post_args, env) for _ in range(runs)]
    print(f"{label}: " + ", ".join(f"{t:.2f}" for t in times) + " s", file=sys.stderr)
    return label, times


def main() -> None:
    from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--adapter", type=Path, help="default: the demo adapter with the demo model, else none")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each kind (after one warm-up)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens of the post at most")
    parser.add_argument("--server-only", action="store_true", help="time only the runs on a server")
    args = parser.parse_args()
    if not 1 <= args.runs <= 50:
        parser.error("--runs must be in [1, 50]")
    adapter = args.adapter or (DEMO_ADAPTER_DIR if args.model == DEMO_MODEL_DIR else None)
    model_args = ["--model", str(args.model)] + (["--adapter", str(adapter)] if adapter else ["--no-adapter"])
    env = repo_env()
    env.pop("BOBBY_TUI_API_KEY", None)
    post_args = ["--temperature", "0", "--max-tokens", str(args.max_tokens), "--no-history", PROMPT]
    rows = [] if args.server_only else [measure("in-process", model_args + post_args, env, args.runs)]
    server = Server([sys.executable, "-m", "bobby_tui", "serve", "--port", "0", *model_args], env=env)
    try:
        rows.append(measure("on a server", ["--server", server.url] + post_args, env, args.runs))
    finally:
        server.stop()
    print(f"\n`bobby-tui post` process start to last draft, {args.model.name}, greedy, {args.max_tokens} tokens at "
          f"most, {args.runs} runs after a warm-up\n")
    print("| engine | median s | min s | max s |\n|---|---|---|---|")
    for label, times in rows:
        print(f"| {label} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")


if __name__ == "__main__":
    main()
