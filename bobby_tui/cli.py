"""The `bobby-tui` command: the TUI by default, and headless subcommands for scripts.

stdout carries results only; messages, warnings and the load progress bar go to stderr.
Exit codes: 0 ok, 1 model/adapter/config/history error (one line on stderr), 2 bad arguments.
Heavy imports (MLX, the engine, Textual) happen inside the commands that need them, so `--help`,
`history` and friends start fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

from bobby_tui import __version__
from bobby_tui.config import Config, ConfigError, load_config_checked, resolve_model
from bobby_tui.paths import config_path, db_path, keep_compiled_kernels
from bobby_tui.storage import GenerationRecord, Store, StoreError

if TYPE_CHECKING:
    from inference import Engine, LoadProgress

PROG = "bobby-tui"
EXPORT_FORMATS = (".md", ".jsonl")
API_KEY_ENV = "BOBBY_TUI_API_KEY"  # serve's --api-key default: a key in the environment stays out of `ps`
DEBUG_ENV = "BOBBY_TUI_DEBUG"  # set to get a traceback instead of the one-line message for unexpected errors


class CliError(Exception):
    """A failure the user can act on; exit code 1 with the message on one line."""


class UsageError(Exception):
    """Bad arguments found after parsing; exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the usage itself is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


# --- arguments -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Compose short social posts with a locally fine-tuned Qwen3. Without a command: open the composer.",
        epilog=f"files:\n  config   {config_path()}\n  history  {db_path()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_model_options(parser, dest_prefix="tui_")
    parser.add_argument("--inline", action="store_true", help="run the composer inline, below the prompt")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    post = commands.add_parser(
        "post", help="generate drafts and print them",
        description="Generate COUNT drafts of PROMPT in one batched decode; print each as it finishes.",
    )
    post.add_argument("count", nargs="?", metavar="COUNT", help="number of drafts (default 1)")
    post.add_argument("prompt", nargs="*", metavar="PROMPT", help="what to write (default: the configured default prompt)")
    _add_model_options(post)
    post.add_argument("--temperature", type=float, metavar="T", help="sampling temperature; 0 = greedy")
    post.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling threshold (0, 1]")
    post.add_argument("--top-k", type=int, metavar="K", help="sample among the K likeliest tokens; 0 = off")
    post.add_argument("--max-tokens", type=int, metavar="N", help="tokens to generate at most per draft")
    post.add_argument("--seed", type=int, metavar="S", help="seed of the first draft; draft i gets S+i")
    post.add_argument("--system", metavar="TEXT", help="system prompt (default: the configured one, if any)")
    post.add_argument("--raw", action="store_true",
                      help="no post-processing, no regeneration: exactly the decoded text up to the stop token")
    post.add_argument("--json", action="store_true", help="one JSON object per draft per line")
    post.add_argument("--no-history", action="store_true", help="do not record the drafts in the history")
    post.add_argument("--stream", action="store_true",
                      help="print tokens as they come (one draft; no regeneration of a short draft)")

    history = commands.add_parser("history", help="list recorded drafts, newest first",
                                  description="List recorded drafts, newest first.")
    history.add_argument("--favorites", action="store_true", help="only favorites")
    history.add_argument("--search", metavar="TEXT", help="only drafts whose text or prompt contains TEXT")
    history.add_argument("--limit", type=int, default=20, metavar="N", help="at most N drafts (default 20)")
    history.add_argument("--json", action="store_true", help="one JSON object per draft per line")

    for name, verb in (("favorite", "mark"), ("unfavorite", "unmark")):
        sub = commands.add_parser(name, help=f"{verb} a draft as a favorite", description=f"{verb.capitalize()} "
                                  "the draft with this history id as a favorite.")
        sub.add_argument("id", type=int, metavar="ID", help="the draft's id (see `bobby-tui history`)")

    export = commands.add_parser(
        "export", help="write drafts to a Markdown or JSON Lines file",
        description="Write recorded drafts, oldest first, to FILE: Markdown for .md, JSON Lines for .jsonl.",
    )
    export.add_argument("--favorites", action="store_true", help="only favorites (default: every draft)")
    export.add_argument("file", type=Path, metavar="FILE", help="output file ending in .md or .jsonl")

    serve = commands.add_parser(
        "serve", help="serve the model over an OpenAI-compatible HTTP API",
        description="Load the model once and serve every client over an OpenAI-compatible HTTP API "
                    "(/v1/chat/completions, /v1/completions, /v1/models, /health), batching their requests. "
                    "SIGTERM or ctrl+c stops it.",
    )
    _add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; any other needs --api-key)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--api-key", metavar="KEY", default=os.environ.get(API_KEY_ENV),
                       help=f"every request must send Authorization: Bearer KEY (default: ${API_KEY_ENV})")
    serve.add_argument("--max-rows", type=int, default=32, metavar="N", help="rows decoding at once (default 32)")
    serve.add_argument("--max-queue", type=int, default=64, metavar="N",
                       help="requests waiting for rows before new ones get 429 (default 64)")
    serve.add_argument("--max-tokens", type=int, default=2048, metavar="N",
                       help="tokens per choice at most, and the default (default 2048)")
    serve.add_argument("--max-n", type=int, default=8, metavar="N", help="choices per request at most (default 8)")

    inspect = commands.add_parser(
        "inspect", help="describe a model or adapter directory and list its problems",
        description="Describe a model or LoRA adapter directory from its config and tensor headers (nothing is "
                    "generated) and list every problem found. Exit 1 when there are problems.",
    )
    inspect.add_argument("dir", type=Path, metavar="DIR", help="a model or adapter directory")
    inspect.add_argument("--model", type=Path, metavar="MODEL_DIR",
                         help="for an adapter: the model to check it against (default: the one it names, if local)")
    return parser


def _add_model_options(parser: argparse.ArgumentParser, dest_prefix: str = "") -> None:
    parser.add_argument("--model", type=Path, dest=dest_prefix + "model", metavar="DIR",
                        help="model directory (default: the configured model, else the demo)")
    adapter = parser.add_mutually_exclusive_group()
    adapter.add_argument("--adapter", type=Path, dest=dest_prefix + "adapter", metavar="DIR",
                         help="LoRA adapter directory (default: the configured adapter)")
    adapter.add_argument("--no-adapter", action="store_true", dest=dest_prefix + "no_adapter",
                         help="run the base model without any adapter")


# --- entry point ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    keep_compiled_kernels()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command and (args.tui_model or args.tui_adapter or args.tui_no_adapter or args.inline):
        parser.error(f"--model/--adapter/--no-adapter/--inline before a command open the composer; "
                     f"put them after '{args.command}'")
    command = COMMANDS.get(args.command, run_tui)
    try:
        return command(args)
    except UsageError as err:
        return _fail(f"{PROG} {args.command}: {err}", 2)
    except (CliError, ConfigError, StoreError) as err:
        return _fail(f"{PROG}: {err}", 1)
    except KeyboardInterrupt:
        return _fail(f"{PROG}: interrupted", 130)
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:
        if _is_engine_error(err):
            return _fail(f"{PROG}: {err}", 1)
        if os.environ.get(DEBUG_ENV):
            raise
        return _fail(f"{PROG}: unexpected {type(err).__name__}: {_one_line(err)} (set {DEBUG_ENV}=1 for a traceback)", 1)


def _is_engine_error(err: Exception) -> bool:
    inference = sys.modules.get("inference")  # imported only by commands that use the engine
    return inference is not None and isinstance(err, inference.InferenceError)


def _fail(message: str, code: int) -> int:
    print(_one_line(message), file=sys.stderr)
    return code


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr)


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise CliError(f"{path}: {'not found' if not path.exists() else 'not a directory'}")


# --- the TUI -------------------------------------------------------------------------------------------


def run_tui(args: argparse.Namespace) -> int:
    # a mistyped path is a command-line error: say so here rather than in a full-screen app
    for path in (args.tui_model, args.tui_adapter):
        if path is not None:
            _require_dir(path)
    try:
        from bobby_tui.app import run_app
    except ImportError as err:
        raise CliError(f"the composer cannot start: {err}") from None
    return run_app(args.tui_model, args.tui_adapter, args.tui_no_adapter, args.inline)


# --- post ----------------------------------------------------------------------------------------------


def cmd_post(args: argparse.Namespace) -> int:
    config = _load_config()
    count, prompt = _count_and_prompt(args.count, args.prompt, config)
    if args.stream and (count != 1 or args.json):
        raise UsageError("--stream prints a single draft as plain text: not with COUNT > 1 or --json")
    sampling = _sampling(args, config)
    max_tokens = args.max_tokens if args.max_tokens is not None else config.sampling.max_tokens
    model_dir, adapter_dir, _ = resolve_model(config, args.model, args.adapter, args.no_adapter)
    store = None if args.no_history else Store(db_path())  # a broken history fails before the slow load
    try:
        from inference import SamplingParams

        # with --seed S, draft i gets seed S+i; without, the engine picks each draft's seed
        drafts = [SamplingParams(**sampling, seed=None if args.seed is None else args.seed + i) for i in range(count)]
        engine = _load_engine(model_dir, adapter_dir)
        _print_drafts(engine, prompt, _system_prompt(args, config), drafts, max_tokens, args, config, store)
    finally:
        if store is not None:
            store.close()
    return 0


def _load_config() -> Config:
    config, warning = load_config_checked()
    if warning:
        _warn(warning)
    return config


def _count_and_prompt(count_arg: str | None, words: list[str], config: Config) -> tuple[int, str]:
    """COUNT is optional: `post "Write about tea"` is a prompt, `post 3 "Write about tea"` three drafts of it."""
    if count_arg is not None and not count_arg.lstrip("-").isdigit():
        words = [count_arg, *words]
        count_arg = None
    count = int(count_arg) if count_arg is not None else 1
    if count < 1:
        raise UsageError(f"COUNT must be at least 1 (got {count})")
    prompt = " ".join(words).strip() or config.default_prompt
    if not prompt.strip():
        raise UsageError("the prompt is empty (give PROMPT or set default_prompt in the config)")
    return count, prompt


def _system_prompt(args: argparse.Namespace, config: Config) -> str | None:
    system = args.system if args.system is not None else config.system_prompt
    return system or None


def _sampling(args: argparse.Namespace, config: Config) -> dict:
    """The configured sampling overridden by the flags, checked: SamplingParams' arguments but the seed."""
    s = config.sampling
    temperature = args.temperature if args.temperature is not None else s.temperature
    top_p = args.top_p if args.top_p is not None else s.top_p
    top_k = args.top_k if args.top_k is not None else s.top_k
    if not temperature >= 0:
        raise UsageError(f"--temperature must be >= 0 (got {temperature})")
    if not 0 < top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1] (got {top_p})")
    if top_k < 0:
        raise UsageError(f"--top-k must be >= 0 (got {top_k})")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1 (got {args.max_tokens})")
    return dict(temperature=temperature, top_p=top_p, top_k=top_k, min_p=s.min_p,
                repetition_penalty=s.repetition_penalty)


def _load_engine(model_dir: Path, adapter_dir: Path | None) -> "Engine":
    from inference import Engine

    bar = ProgressBar(f"loading {model_dir.name}", sys.stderr) if sys.stderr.isatty() else None
    try:
        return Engine.load(model_dir, adapter_dir, progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()


class ProgressBar:
    """A one-line bar redrawn in place on a terminal: `loading qwen  [#######.........]  45%`."""

    WIDTH = 30

    def __init__(self, label: str, stream: TextIO):
        self.label, self.stream, self.shown = label, stream, -1

    def update(self, progress: "LoadProgress") -> None:
        percent = 100 * progress.done // progress.total if progress.total else 100
        if percent == self.shown:
            return  # one redraw per percent: loading a big model calls this for every tensor
        self.shown = percent
        filled = self.WIDTH * percent // 100
        self.stream.write(f"\r{self.label}  [{'#' * filled}{'.' * (self.WIDTH - filled)}] {percent:3d}%")
        self.stream.flush()

    def close(self) -> None:
        if self.shown >= 0:
            self.stream.write("\r\033[K")  # clear the bar's line: the terminal shows results only
            self.stream.flush()


def _print_drafts(engine: "Engine", prompt: str, system: str | None, drafts: list, max_tokens: int,
                  args: argparse.Namespace, config: Config, store: Store | None) -> None:
    """Print each draft as it finishes (recorded first, unless --no-history)."""
    from inference import TokenDelta

    from bobby_tui.composer import Draft, compose, to_record

    postprocess = config.postprocess
    if args.stream:
        postprocess = dataclasses.replace(postprocess, retries=0)  # streamed text cannot be taken back
    count = len(drafts)
    events = compose(engine, prompt, system, drafts, max_tokens, postprocess, config.post_limit, raw=args.raw)
    printed = 0
    for event in events:
        if args.stream and isinstance(event, TokenDelta):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        if not isinstance(event, Draft):
            continue
        record = to_record(event, engine, prompt, system)
        gen_id = store.add(record) if store is not None else None  # committed before it is shown
        if args.json:
            print(json.dumps(_draft_json(event, record, gen_id), ensure_ascii=False), flush=True)
        elif args.stream:
            print(flush=True)
        else:
            if count > 1:
                print(("\n" if printed else "") + _draft_header(event, gen_id, count))
            print(event.text, flush=True)
        printed += 1
        if gen_id is not None and sys.stderr.isatty() and count == 1 and not args.json:
            print(f"{PROG}: saved as #{gen_id} (`{PROG} favorite {gen_id}` to keep it)", file=sys.stderr)


def _draft_header(draft, gen_id: int | None, count: int) -> str:
    parts = [f"draft {draft.draft + 1}/{count}"] + ([f"#{gen_id}"] if gen_id is not None else [])
    parts.append(f"seed {draft.params.seed}")
    return f"── {' · '.join(parts)} ──"


def _draft_json(draft, record: GenerationRecord, gen_id: int | None) -> dict:
    return {
        "text": record.text,
        "prompt": record.prompt,
        "system_prompt": record.system_prompt,
        "temperature": record.temperature,
        "top_p": record.top_p,
        "top_k": draft.params.top_k,
        "seed": record.seed,
        "prompt_tokens": record.prompt_tokens,
        "generated_tokens": record.generated_tokens,
        "decode_tok_s": round(record.decode_tok_s, 2),
        "model": record.model,
        "adapter": record.adapter,
        "finish_reason": record.finish_reason,
        "attempts": draft.attempts,
        "draft": draft.draft,
        "id": gen_id,
    }


# --- history, favorites, export ------------------------------------------------------------------------


def cmd_history(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {args.limit})")
    with Store(db_path()) as store:
        records = store.history(limit=args.limit, favorites_only=args.favorites, search=args.search)
    for rec in records:
        print(json.dumps(dataclasses.asdict(rec), ensure_ascii=False) if args.json else _history_line(rec))
    return 0


def _history_line(rec: GenerationRecord) -> str:
    star = "★" if rec.favorite else " "
    when = (rec.created_at or "")[:16].replace("T", " ")
    # one line per draft, and no control character reaches the terminal
    text = "".join(c if c.isprintable() else " " for c in rec.text.replace("\n", " ⏎ "))
    return f"{rec.id:>5} {star} {when}  {text}"


def cmd_favorite(args: argparse.Namespace, favorite: bool = True) -> int:
    with Store(db_path()) as store:
        store.set_favorite(args.id, favorite)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    suffix = args.file.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise UsageError(f"{args.file}: unknown format {suffix or '(no extension)'!r}; use .md or .jsonl")
    with Store(db_path()) as store:
        records = store.history(limit=-1, favorites_only=args.favorites)[::-1]  # oldest first reads like a log
    text = _markdown(records, args.favorites) if suffix == ".md" else _json_lines(records)
    try:
        args.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.file.with_name(args.file.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.file)
    except OSError as err:
        raise CliError(f"{args.file}: cannot write: {err.strerror or err}") from None
    what = "favorites" if args.favorites else "drafts"
    print(f"{PROG}: exported {len(records)} {what} to {args.file}", file=sys.stderr)
    return 0


def _json_lines(records: list[GenerationRecord]) -> str:
    return "".join(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n" for r in records)


def _markdown(records: list[GenerationRecord], favorites: bool) -> str:
    out = [f"# bobby-tui {'favorites' if favorites else 'drafts'}\n"]
    for rec in records:
        model = rec.model + (f" + {rec.adapter}" if rec.adapter else "")
        out += [
            f"\n## #{rec.id} · {(rec.created_at or '')[:16].replace('T', ' ')}\n",
            f"\n{rec.text}\n",
            f"\n*prompt: {rec.prompt} · temperature {rec.temperature:g} · top-p {rec.top_p:g} · seed {rec.seed}"
            f" · {model}*\n",
        ]
    return "".join(out)


# --- serve ---------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from bobby_tui.server import ServeError, ServeOptions, ServerLimits, bind_problem, serve

    problem = bind_problem(args.host, args.api_key)
    if problem:
        raise UsageError(problem)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in [0, 65535] (got {args.port})")
    for flag in ("max_rows", "max_queue", "max_tokens", "max_n"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(args, flag)})")
    model_dir, adapter_dir, _ = resolve_model(_load_config(), args.model, args.adapter, args.no_adapter)
    limits = ServerLimits(max_tokens=args.max_tokens, max_n=min(args.max_n, args.max_rows), max_rows=args.max_rows,
                          max_queue=args.max_queue)
    try:
        return serve(lambda: _load_engine(model_dir, adapter_dir), ServeOptions(args.host, args.port, args.api_key,
                                                                                limits))
    except ServeError as err:
        raise CliError(str(err)) from None


# --- inspect -------------------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from bobby_tui.inspect_report import inspect_adapter, inspect_model, is_adapter_dir

    path: Path = args.dir
    _require_dir(path)
    if is_adapter_dir(path):
        report = inspect_adapter(path, args.model)
    elif (path / "config.json").exists() or any(path.glob("*.safetensors")):
        if args.model is not None:
            raise UsageError("--model applies to an adapter directory only")
        report = inspect_model(path)
    else:
        raise CliError(f"{path}: neither a model (config.json) nor an adapter (adapter_config.json) directory")
    print(report.render(path))
    return 1 if report.problems else 0


COMMANDS: dict[str | None, Callable[[argparse.Namespace], int]] = {
    "post": cmd_post,
    "history": cmd_history,
    "favorite": cmd_favorite,
    "unfavorite": lambda args: cmd_favorite(args, favorite=False),
    "export": cmd_export,
    "inspect": cmd_inspect,
    "serve": cmd_serve,
}
