"""Load benchmark of `bobby-tui serve` (and optionally `mlx_lm.server` on the same model, in the same run).

K concurrent streaming clients (K = 1, 4, 8, 16, 32 by default), each asking a different prompt for M tokens, on
loopback only: aggregate tok/s, time to first token p50 / p95, per-client tok/s (median), errors, and for ours the
CPU time its asyncio thread (the whole HTTP layer) spent per token. The engine's own decode tok/s for one draft is
measured in this process too, so the HTTP layer's cost to a single client shows. And a client joining 7 running
streams: its time to first token against the same request on an idle server, in decode steps of the running batch.

    python -m tools.bench.server_load                       # the demo model, ours only
    python -m tools.bench.server_load --mlx-lm --seeds      # also mlx_lm.server; ours also with a seed per request
    python -m tools.bench.server_load --model ~/models/Qwen3-8B-4bit --max-tokens 128 --clients 1,8,32

Each server first serves an unmeasured level (as many clients as the largest level, 8 tokens each), so batch
sizes compile outside the measurement. Each level runs --rounds times (3), its row over all of them.

Bounded: at most 64 clients a level, each level stops after --level-timeout seconds (unfinished streams count as
errors), and every server started here is stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
TOPICS = ["the sea", "cats", "rain", "Mondays", "coffee", "trains", "the moon", "taxes", "music", "bread", "snow",
          "bicycles", "libraries", "owls", "tea", "deadlines", "gardens", "clocks", "rivers", "jazz", "maps",
          "lighthouses", "socks", "volcanoes", "chess", "bees", "mirrors", "kites", "fog", "robots", "soup", "stars"]
MAX_CLIENTS = 64
# first client numbers of the measured rounds, a block of MAX_CLIENTS each: past those of the warm-up level, the join
# test and the HTTP cost's client 0
FRESH_CLIENTS = itertools.count(1000, MAX_CLIENTS)
WARM_TOKENS = 8  # per client of the unmeasured level each server gets first
START_TIMEOUT_S = 120


@dataclass
class ClientResult:
    tokens: int = 0
    ttft_s: float | None = None
    decode_s: float = 0.0
    error: str | None = None


@dataclass
class Level:
    clients: int
    wall_s: float
    results: list[ClientResult] = field(default_factory=list)
    loop_cpu_s: float | None = None  # CPU time of our server's asyncio thread (the HTTP layer) during the level

    def row(self) -> str:
        ok = [r for r in self.results if r.error is None]
        tokens = sum(r.tokens for r in ok)
        ttfts = sorted(1000 * r.ttft_s for r in ok if r.ttft_s is not None)
        per_client = [r.tokens / r.decode_s for r in ok if r.decode_s > 0]
        errors = len(self.results) - len(ok)
        ttft = f"{_percentile(ttfts, 50):.0f} / {_percentile(ttfts, 95):.0f}" if ttfts else "-"
        median = f"{statistics.median(per_client):.1f}" if per_client else "-"
        loop = f"{1e6 * self.loop_cpu_s / tokens:.0f}" if self.loop_cpu_s is not None and tokens else "-"
        return f"| {self.clients} | {tokens / self.wall_s:.1f} | {ttft} | {median} | {errors} | {loop} |"


def _percentile(values: list[float], q: float) -> float:
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


async def _client(session: aiohttp.ClientSession, url: str, body: dict,
                  first_token: asyncio.Event | None = None) -> ClientResult:
    result, started = ClientResult(), time.perf_counter()
    last, chunks = started, 0
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}"
                return result
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    result.error = event["error"].get("message", "error event")
                    return result
                if event.get("usage"):
                    result.tokens = event["usage"]["completion_tokens"]
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        chunks += 1
                        now = time.perf_counter()
                        if result.ttft_s is None:
                            result.ttft_s = now - started
                            if first_token is not None:
                                first_token.set()
                        last = now
        if result.ttft_s is None:
            result.error = "no tokens"
        result.tokens = result.tokens or chunks  # a server without usage in streams: one chunk per token
        result.decode_s = last - started - (result.ttft_s or 0.0)
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as err:
        result.error = f"{type(err).__name__}: {err}"
    return result


def _body(client: int, max_tokens: int, temperature: float, seeds: bool) -> dict:
    return {"model": "default_model",  # mlx_lm.server's name for the model it was started with; ours takes any
            "max_tokens": max_tokens, "temperature": temperature, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": _prompt(client)}], **({"seed": _seed(client)} if seeds else {})}


async def run_level(url: str, clients: int, max_tokens: int, temperature: float, seeds: bool,
                    timeout_s: float, first_client: int = 0) -> Level:
    """Clients ``first_client`` .. ``first_client + clients - 1`` at once (each number its own prompt and seed)."""
    bodies = [_body(first_client + i, max_tokens, temperature, seeds) for i in range(clients)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(_client(session, url, body)) for body in bodies]
        results = await _results(tasks, timeout_s)
        wall = time.perf_counter() - started
    return Level(clients, wall, results)


async def _results(tasks: list[asyncio.Future], timeout_s: float) -> list[ClientResult]:
    """The clients' results within `timeout_s`; a client still streaming then is cancelled and counts as an error."""
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    return [t.result() if t in done else ClientResult(error="timed out") for t in tasks]


JOIN_TOKENS = 8  # the joining client's own request: its first token is what is timed
JOIN_RUNNING = 7  # streams already decoding when it joins (8 rows with it)


async def join_running(url: str, running: int, max_tokens: int, temperature: float, timeout_s: float
                       ) -> tuple[ClientResult, Level]:
    """`running` clients stream `max_tokens` each; once every one has its first token (the batch is decoding), one
    more client asks: its time to first token is what joining a running batch costs. Returns it and the running
    clients' level (their per-client rate gives the decode step time with the joiner in the batch)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        firsts = [asyncio.Event() for _ in range(running)]
        tasks = [asyncio.ensure_future(_client(session, url, _body(i, max_tokens, temperature, False), first))
                 for i, first in enumerate(firsts)]
        await asyncio.wait_for(asyncio.gather(*(first.wait() for first in firsts)), timeout_s)
        joiner = await asyncio.wait_for(
            _client(session, url, _body(running, JOIN_TOKENS, temperature, False)), timeout_s)
        results = await _results(tasks, timeout_s)
    return joiner, Level(running, time.perf_counter() - started, results)


def _print_join(url: str, running: int, args: argparse.Namespace, repeats: int = 3) -> None:
    """A client joining `running` streams, against the same request on an idle server (its own prefill and first
    step): the difference in decode steps of the running batch."""
    alone, joined, steps_ms = [], [], []
    for _ in range(repeats):
        single = asyncio.run(_join_alone(url, running, args))
        if single.ttft_s is None:
            print(f"a client alone: failed ({single.error})\n")
            return
        alone.append(1000 * single.ttft_s)
        joiner, level = asyncio.run(join_running(url, running, args.max_tokens, args.temperature, args.level_timeout))
        rates = [r.tokens / r.decode_s for r in level.results if r.error is None and r.decode_s > 0]
        if joiner.ttft_s is None or not rates:
            print(f"joining {running} running streams: failed ({joiner.error})\n")
            return
        joined.append(1000 * joiner.ttft_s)
        steps_ms.append(1000 / statistics.median(rates))
    a, j, step = statistics.median(alone), statistics.median(joined), statistics.median(steps_ms)
    print(f"a client joining {running} running streams: first token in {j:.0f} ms; the same request alone {a:.0f} ms; "
          f"a decode step of the running batch {step:.1f} ms: {(j - a) / step:.1f} steps more (medians of {repeats})\n")


async def _join_alone(url: str, running: int, args: argparse.Namespace) -> ClientResult:
    async with aiohttp.ClientSession() as session:
        return await _client(session, url, _body(running, JOIN_TOKENS, args.temperature, False))


# --- the servers -------------------------------------------------------------------------------------------


class Server:
    def __init__(self, command: list[str], url: str | None = None, env: dict | None = None):
        self.proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.url = url
        deadline = time.monotonic() + START_TIMEOUT_S
        if self.url is None:  # ours prints the port it got
            last = ""
            for line in self.proc.stderr:
                match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
                if match:
                    self.url = match.group(1)
                    break
                last = line.strip() or last
            if self.url is None:
                raise SystemExit(f"server did not start: {' '.join(command)}: {last}")
        threading.Thread(target=lambda: self.proc.stderr.read(), daemon=True).start()  # its log must not block it
        while not _answers(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"server did not start: {' '.join(command)}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=2):
            return True
    except OSError:
        return False


def main_thread_cpu_s(pid: int) -> float | None:
    """CPU seconds of a process's main thread (ours runs the asyncio loop there), from /proc; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measured_level(server: Server, clients: int, args: argparse.Namespace, seeds: bool, loop_cpu: bool = True
                   ) -> Level:
    """``args.rounds`` levels of ``clients`` one after another, as one level: its wall time their sum, its
    results all of theirs (so a time to first token at K = 1 is not a single sample). Every client of every round
    asks a prompt the server has not seen (a prompt it has seen would find its prefill cached). ``loop_cpu``: the
    server's main thread is its asyncio loop (ours), whose CPU time the level records."""
    before = main_thread_cpu_s(server.proc.pid) if loop_cpu else None
    level = Level(clients, 0.0)
    for _ in range(args.rounds):
        one = asyncio.run(run_level(server.url, clients, args.max_tokens, args.temperature, seeds, args.level_timeout,
                                    first_client=next(FRESH_CLIENTS)))
        level.wall_s += one.wall_s
        level.results += one.results
    after = main_thread_cpu_s(server.proc.pid)
    if before is not None and after is not None:
        level.loop_cpu_s = after - before
    return level


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ours(model: Path, adapter: Path | None, max_rows: int) -> Server:
    adapter_args = ["--adapter", str(adapter)] if adapter else ["--no-adapter"]
    return Server([sys.executable, "-m", "bobby_tui", "serve", "--host", "127.0.0.1", "--port", "0", "--model",
                   str(model), *adapter_args, "--max-rows", str(max_rows), "--max-queue", str(MAX_CLIENTS)],
                  env=repo_env())


def repo_env() -> dict:
    """The environment for a child process run from the repository: the repository first on its path, then
    whatever the caller's path holds (e.g. MLX for CUDA installed beside the system's)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def mlx_lm_server(model: Path, adapter: Path | None, concurrency: int) -> Server:
    port = _free_port()
    adapter_args = ["--adapter-path", str(adapter)] if adapter else []
    return Server([sys.executable, "-m", "mlx_lm.server", "--model", str(model), *adapter_args, "--host",
                   "127.0.0.1", "--port", str(port), "--decode-concurrency", str(concurrency),
                   "--chat-template-args", '{"enable_thinking": false}'], url=f"http://127.0.0.1:{port}")


def engine_decode_tok_s(model: Path, adapter: Path | None, max_tokens: int, temperature: float,
                        repeats: int) -> float:
    """The engine alone, one draft, client 0's prompt and seed (so the very tokens the single seeded HTTP client
    gets): the best of `repeats` decode rates, what the HTTP layer's cost is measured against. On a thread of its
    own, as the server runs it (MLX on the CPU decodes at a different rate on the main thread)."""
    rates: list[float] = []

    def measure() -> None:
        from inference import Engine, GenerationRequest, SamplingParams
        from inference.api import DraftDone

        engine = Engine.load(model, adapter)
        engine.warmup()
        prompt = engine.render_prompt(_prompt(0))
        request = GenerationRequest(prompt, [SamplingParams(temperature=temperature, seed=_seed(0))], max_tokens)
        for _ in range(repeats):
            rates.extend(e.stats.decode_tok_s for e in engine.generate(request) if isinstance(e, DraftDone))

    thread = threading.Thread(target=measure)
    thread.start()
    thread.join()
    return max(rates)


def _prompt(client: int) -> str:
    return f"Write a post about {TOPICS[client % len(TOPICS)]} (#{client})."


def _seed(client: int) -> int:
    return 1000 + client


def main() -> None:
    from bobby_tui.demo import DEMO_ADAPTER_DIR, DEMO_MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--adapter", type=Path, help="default: the demo adapter with the demo model, else none")
    parser.add_argument("--clients", default="1,4,8,16,32", help="comma-separated K values")
    parser.add_argument("--max-tokens", type=int, default=64, help="M: tokens per client")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seeds", action="store_true", help="also run ours with a seed in every request")
    parser.add_argument("--mlx-lm", action="store_true", help="also run mlx_lm.server --decode-concurrency K")
    parser.add_argument("--only-mlx-lm", action="store_true", help="mlx_lm.server alone (a second call of one run)")
    parser.add_argument("--rounds", type=int, default=3, help="times each level runs (one table row for all)")
    parser.add_argument("--level-timeout", type=float, default=180.0, help="seconds per K and round at most")
    args = parser.parse_args()
    levels = [int(k) for k in args.clients.split(",")]
    if not all(1 <= k <= MAX_CLIENTS for k in levels) or not 1 <= args.max_tokens <= 4096 \
            or not 1 <= args.rounds <= 10:
        parser.error(f"clients must be in [1, {MAX_CLIENTS}], --max-tokens in [1, 4096] and --rounds in [1, 10]")
    adapter = args.adapter or (DEMO_ADAPTER_DIR if args.model == DEMO_MODEL_DIR else None)

    print(f"model {args.model.name}, adapter {adapter.name if adapter else 'none'}, up to {args.max_tokens} tokens "
          f"per client, temperature {args.temperature}\n")

    runs = [("bobby-tui serve", False)] + ([("bobby-tui serve, seeded", True)] if args.seeds else [])
    if args.only_mlx_lm:
        runs, args.mlx_lm = [], True
    for title, seeds in runs:
        server = ours(args.model, adapter, max(levels))
        try:
            # warm: batches of every size up to the largest level (each new size compiles on a GPU), not measured
            asyncio.run(run_level(server.url, max(levels), WARM_TOKENS, args.temperature, seeds, args.level_timeout))
            table = [measured_level(server, k, args, seeds) for k in levels]
            if not seeds:
                _print_join(server.url, JOIN_RUNNING, args)
            if seeds or not args.seeds:
                _print_http_cost(server.url, args, adapter)
        finally:
            server.stop()
        _print(title, table)
    if args.mlx_lm:
        table = []
        for k in levels:
            server = mlx_lm_server(args.model, adapter, k)
            try:
                asyncio.run(run_level(server.url, k, WARM_TOKENS, args.temperature, False, args.level_timeout))
                table.append(measured_level(server, k, args, False, loop_cpu=False))
            finally:
                server.stop()
        _print("mlx_lm.server --decode-concurrency K", table)


def _print_http_cost(url: str, args: argparse.Namespace, adapter: Path | None) -> None:
    """One seeded client over HTTP against the engine alone on the same tokens, best of 5 each (the host is noisy)."""
    http_rates = []
    for _ in range(5):
        level = asyncio.run(run_level(url, 1, args.max_tokens, args.temperature, True, args.level_timeout))
        http_rates += [r.tokens / r.decode_s for r in level.results if r.error is None and r.decode_s > 0]
    engine_rate = engine_decode_tok_s(args.model, adapter, args.max_tokens, args.temperature, 5)
    if http_rates:
        best = max(http_rates)
        print(f"one client: engine alone {engine_rate:.1f} tok/s, over HTTP {best:.1f} tok/s "
              f"({100 * best / engine_rate:.0f}% of the engine alone)\n")


def _print(title: str, table: list[Level]) -> None:
    print(f"{title}\n\n| clients | aggregate tok/s | TTFT p50 / p95 ms | per-client tok/s (median) | errors "
          "| HTTP thread CPU us/token |\n|---|---|---|---|---|---|")
    for level in table:
        print(level.row())
    errors = sorted({r.error for level in table for r in level.results if r.error})
    print("".join(f"\nerror: {e}" for e in errors[:5]) + "\n")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    # MLX, used from a non-main thread, can abort in its exit-time destructors (see bobby_tui/server/app.py)
    os._exit(0)
