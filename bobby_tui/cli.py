"""The `bobby-tui` command: the TUI by default, and headless subcommands for scripts.

stdout carries results only; messages, warnings and the load progress bar go to stderr.
Exit codes: 0 ok, 1 model/adapter/config/history error (one line on stderr), 2 bad arguments,
3 drafts printed but not saved to the history (one line on stderr says why), 130 interrupted.
Heavy imports (MLX, the engine, Textual) happen inside the commands that need them, so `--help`,
`history` and friends start fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from bobby_tui import __version__
from bobby_tui.config import (
    Config,
    ConfigError,
    load_config,
    load_config_checked,
    resolve_adapter,
    resolve_model,
)
from bobby_tui.paths import config_path, db_path, keep_compiled_kernels
from bobby_tui.storage import GenerationRecord, Store, StoreError
from inference.api import SAMPLING_LIMITS, SEED_LIMIT, Limit

if TYPE_CHECKING:
    from inference import Engine, LoadProgress

PROG = "bobby-tui"
EXPORT_FORMATS = (".md", ".jsonl")
API_KEY_ENV = "BOBBY_TUI_API_KEY"  # serve's --api-key default: a key in the environment stays out of `ps`
DEBUG_ENV = "BOBBY_TUI_DEBUG"  # set to get a traceback instead of the one-line message for an internal error
EXIT_NOT_SAVED = 3  # the drafts were printed, but the history could not record them

# A prompt is read before the first draft appears: on a 2-core CPU the demo model reads ~300 prompt
# tokens/s at 4,000 characters and ~120 at 16,000 (attention grows with the length), so 16,000 characters of
# prompt and system prompt together take about a minute. Far more than a post needs, far less than "minutes".
PROMPT_CHAR_LIMIT = 16_000
# Integers that reach SQLite (ids, LIMIT) must fit its signed 64 bits.
_SQLITE_INT = Limit(1, 2**63 - 1, integer=True)
_MAX_TOKENS = Limit(1, None, integer=True)  # the model's max_position_embeddings bounds it once the model is known


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

    from bobby_tui.composer import MAX_DRAFTS

    post = commands.add_parser(
        "post", help="generate drafts and print them",
        usage=f"{PROG} post [-n COUNT] [PROMPT] [options] | {PROG} post COUNT PROMPT [options]",
        description="Generate COUNT drafts of PROMPT in one batched decode; print each as it finishes.\n\n"
                    "PROMPT is one argument (quote it): it reaches the chat template exactly as given. A single\n"
                    "argument is always the prompt (`post 1984` writes about 1984); COUNT PROMPT, two arguments\n"
                    "with the first a number, is the short form of -n COUNT PROMPT. PROMPT - reads it from stdin.\n"
                    "With --reply-to ID, PROMPT is the next instruction in the conversation of history row ID.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    post.add_argument("words", nargs="*", metavar="PROMPT",
                      help="what to write (default: the configured default prompt; - reads stdin)")
    post.add_argument("-n", "--count", type=_bounded(Limit(1, MAX_DRAFTS, integer=True)), metavar="COUNT",
                      help=f"number of drafts, in one batch (default 1; at most {MAX_DRAFTS}, fewer when their "
                           "KV cache would not fit in memory)")
    _add_model_options(post)
    post.add_argument("--temperature", type=_bounded(SAMPLING_LIMITS["temperature"]), metavar="T",
                      help=f"sampling temperature, {SAMPLING_LIMITS['temperature'].describe()}; 0 = greedy")
    post.add_argument("--top-p", type=_bounded(SAMPLING_LIMITS["top_p"]), metavar="P",
                      help=f"nucleus sampling threshold, {SAMPLING_LIMITS['top_p'].describe()}")
    post.add_argument("--top-k", type=_bounded(SAMPLING_LIMITS["top_k"]), metavar="K",
                      help="sample among the K likeliest tokens; 0 = off")
    post.add_argument("--max-tokens", type=_bounded(_MAX_TOKENS), metavar="N",
                      help="tokens to generate at most per draft (up to the model's max_position_embeddings)")
    post.add_argument("--seed", type=_bounded(SAMPLING_LIMITS["seed"]), metavar="S",
                      help="seed of the first draft; draft i gets S+i (a regenerated draft keeps its seed and reports "
                           "the attempt's own as attempt_seed)")
    post.add_argument("--system", metavar="TEXT",
                      help="system prompt (default: the persona's or the configured one, if any; with --reply-to: "
                           "the conversation's)")
    post.add_argument("--persona", metavar="NAME",
                      help="the [personas.NAME] preset of the config: system prompt, sampling, adapter, post limit "
                           "(default: the config's `persona`, if set); flags override it")
    post.add_argument("--reply-to", type=_bounded(_SQLITE_INT), metavar="ID",
                      help="continue history row ID's conversation: its messages, its text as the assistant's turn, "
                           "then PROMPT (e.g. \"make it shorter\")")
    post.add_argument("--prefill", metavar="TEXT",
                      help="the reply starts with TEXT and the model continues it (the draft includes TEXT)")
    post.add_argument("--raw", action="store_true",
                      help="no post-processing, no regeneration: exactly the decoded text up to the stop token")
    post.add_argument("--json", action="store_true", help="one JSON object per draft per line")
    post.add_argument("--no-history", action="store_true", help="do not record the drafts in the history")
    post.add_argument("--stream", action="store_true",
                      help="print tokens as they come (one draft; no regeneration of a short draft)")

    history = commands.add_parser(
        "history", help="list recorded drafts, newest first (delete, prune: remove them)",
        usage=f"{PROG} history [--favorites] [--search TEXT] [--limit N] [--json [--raw]] | "
              f"{PROG} history delete ID... | {PROG} history prune --older-than DAYS",
        description="List recorded drafts, newest first. Times are local, with their UTC offset (ISO 8601 in "
                    "--json). `history delete` and `history prune` remove drafts.")
    history.add_argument("--favorites", action="store_true", help="only favorites")
    history.add_argument("--search", metavar="TEXT",
                         help="only drafts whose text or prompt hold every word of TEXT (ignoring case and accents; "
                              "a word also finds the words it starts)")
    history.add_argument("--limit", type=_bounded(_SQLITE_INT), metavar="N", help="at most N drafts (default 20)")
    history.add_argument("--json", action="store_true", help="one JSON object per draft per line")
    history.add_argument("--raw", action="store_true",
                         help="with --json: add raw_text, the decoded text as it came (special tokens such as "
                              "<|im_start|> included)")

    history_commands = history.add_subparsers(dest="history_command", metavar="delete | prune",
                                              parser_class=OneLineParser)
    # prog: the history parser's own usage line would stand for it
    delete = history_commands.add_parser(
        "delete", prog=f"{PROG} history delete", help="delete drafts by id",
        description="Delete the drafts with these history ids, all or none: an unknown id deletes nothing (exit 1).")
    delete.add_argument("ids", nargs="+", type=_bounded(_SQLITE_INT), metavar="ID",
                        help="ids as `bobby-tui history` shows them")
    prune = history_commands.add_parser(
        "prune", prog=f"{PROG} history prune", help="delete unfavorited drafts older than DAYS",
        description="Delete every draft older than DAYS days that is not a favorite; print how many.")
    prune.add_argument("--older-than", type=_bounded(Limit(0, None)), required=True, metavar="DAYS",
                       help="age in days (fractions allowed: 0.5 is 12 hours)")

    for name, verb in (("favorite", "mark"), ("unfavorite", "unmark")):
        sub = commands.add_parser(name, help=f"{verb} a draft as a favorite", description=f"{verb.capitalize()} "
                                  "the draft with this history id as a favorite.")
        sub.add_argument("id", type=_bounded(_SQLITE_INT), metavar="ID",
                         help="the draft's id (see `bobby-tui history`)")

    export = commands.add_parser(
        "export", help="write drafts to a Markdown or JSON Lines file",
        description="Write recorded drafts, oldest first, to FILE: Markdown for .md, JSON Lines for .jsonl. Times "
                    "are local, with their UTC offset. The file is replaced atomically; a symlink is written through "
                    "and an existing file keeps its permissions.",
    )
    export.add_argument("--favorites", action="store_true", help="only favorites (default: every draft)")
    export.add_argument("--raw", action="store_true",
                        help="in .jsonl: add raw_text, the decoded text as it came (special tokens such as "
                             "<|im_start|> included)")
    export.add_argument("file", type=Path, metavar="FILE", help="output file ending in .md or .jsonl")

    serve = commands.add_parser(
        "serve", help="serve the model over an OpenAI-compatible HTTP API",
        description="Load the model once and serve every client over an OpenAI-compatible HTTP API "
                    "(/v1/chat/completions, /v1/completions, /v1/models, /health), batching their requests. "
                    "SIGTERM or ctrl+c stops it.",
    )
    _add_model_options(serve, server=False)
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

    web = commands.add_parser(
        "web", help="serve the composer in a web browser",
        description="Serve the composer at http://HOST:PORT with textual-serve: one composer per browser tab, all on "
                    "one `bobby-tui serve` (started here, and stopped on exit, when none answers at --server).",
    )
    _add_model_options(web)
    web.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1; any other needs --api-key)")
    web.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    web.add_argument("--api-key", metavar="KEY", default=os.environ.get(API_KEY_ENV),
                     help=f"the browser must open the page with ?key=KEY (default: ${API_KEY_ENV})")

    adapters = commands.add_parser(
        "adapters", help="list the adapters folder: rank, scale, layers, problems",
        description="List the LoRA adapters in the adapters folder (each subdirectory one adapter, picked by its "
                    "name with --adapter NAME or a persona's `adapter`), with inspect's facts. Exit 1 when one has "
                    "problems.",
    )
    adapters.add_argument("dir", type=Path, nargs="?", metavar="DIR",
                          help="the folder (default: adapters_dir in the config)")
    adapters.add_argument("--model", type=Path, metavar="MODEL_DIR",
                          help="the model to check them against (default: the configured model, else the base model "
                               "each adapter names, if local)")

    inspect = commands.add_parser(
        "inspect", help="describe a model or adapter directory and list its problems",
        description="Describe a model or LoRA adapter directory from its config and tensor headers (nothing is "
                    "generated) and list every problem found. Exit 1 when there are problems.",
    )
    inspect.add_argument("dir", type=Path, metavar="DIR", help="a model or adapter directory")
    inspect.add_argument("--model", type=Path, metavar="MODEL_DIR",
                         help="for an adapter: the model to check it against (default: the one it names, if local)")
    return parser


def _bounded(limit: Limit) -> Callable[[str], int | float]:
    """An argparse type for a number in `limit`'s range: the message says what is allowed and what was given."""

    def parse(text: str) -> int | float:
        shown = text if len(text) <= 40 else text[:37] + "..."
        try:
            value = int(text) if limit.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if limit.integer else 'a number'} {limit.describe()} (got {shown!r})"
            ) from None
        problem = limit.problem(value)
        if problem:
            shown_problem = problem if "(got" in problem else f"{problem} {limit.describe()} (got {shown!r})"
            raise argparse.ArgumentTypeError(shown_problem)
        return value

    return parse


def _add_model_options(parser: argparse.ArgumentParser, dest_prefix: str = "", server: bool = True) -> None:
    parser.add_argument("--model", type=Path, dest=dest_prefix + "model", metavar="DIR",
                        help="model directory (default: the configured model, else the demo)")
    adapter = parser.add_mutually_exclusive_group()
    adapter.add_argument("--adapter", dest=dest_prefix + "adapter", metavar="NAME|DIR",
                         help="LoRA adapter: a name in the config's adapters_dir, or a directory (default: the "
                              "configured adapter)")
    adapter.add_argument("--no-adapter", action="store_true", dest=dest_prefix + "no_adapter",
                         help="run the base model without any adapter")
    if server:  # not for serve itself
        parser.add_argument("--server", dest=dest_prefix + "server", metavar="URL",
                            help="use the model of a running `bobby-tui serve` (e.g. http://127.0.0.1:8765; \"auto\": "
                                 "one answering there, else load it here; \"local\": load it here; default: the "
                                 f"config's server key); its API key from ${API_KEY_ENV}")


# --- entry point ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    keep_compiled_kernels()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command and (args.tui_model or args.tui_adapter or args.tui_no_adapter or args.inline or args.tui_server):
        parser.error(f"--model/--adapter/--no-adapter/--server/--inline before a command open the composer; "
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
        # every input the CLI can be given has its own message: reaching here is a bug in bobby-tui
        return _fail(f"{PROG}: internal error ({type(err).__name__}: {_one_line(err)}); please report it "
                     f"(set {DEBUG_ENV}=1 for a traceback)", 1)


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
    if args.tui_model is not None:
        _require_dir(args.tui_model)
    config = load_config()[0]  # the app shows the config's warnings itself
    choice = _engine_choice(args.tui_server, config)
    _check_no_model_flags(choice, args.tui_model, args.tui_adapter)
    adapter = resolve_adapter(config, args.tui_adapter) if args.tui_adapter is not None else None
    try:
        from bobby_tui.app import run_app
    except ImportError as err:
        raise CliError(f"the composer cannot start: {err}") from None
    return run_app(args.tui_model, adapter, args.tui_no_adapter, args.inline, choice)


# --- post ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Conversation:
    """What a post replies to: the system prompt, earlier turns (from --reply-to), the new prompt, the prefill."""

    prompt: str
    system: str | None
    history: list[dict] | None = None  # None: a plain prompt
    prefill: str | None = None
    parent_id: int | None = None

    def messages(self) -> list[dict]:
        from bobby_tui.composer import conversation

        return conversation(self.prompt, self.system, self.history)

    def texts(self) -> list[str]:
        """Every text the model reads, for the length limits."""
        return [m["content"] for m in self.messages()] + ([self.prefill] if self.prefill else [])


def cmd_post(args: argparse.Namespace) -> int:
    config = _load_config().with_persona(args.persona)
    if args.reply_to is not None and not args.words:
        raise UsageError(f"--reply-to {args.reply_to} needs PROMPT, the next instruction (e.g. \"make it shorter\")")
    count, prompt = _count_and_prompt(args.count, args.words, config)
    if args.stream and (count != 1 or args.json):
        raise UsageError("--stream prints a single draft as plain text: not with COUNT > 1 or --json")
    if args.prefill is not None:
        _check_text(args.prefill, "--prefill")
    sampling = _sampling(args, config)
    max_tokens = args.max_tokens if args.max_tokens is not None else config.sampling.max_tokens
    if args.seed is not None and args.seed + count - 1 >= SEED_LIMIT:
        raise UsageError(f"--seed: draft i gets S+i, so S + COUNT - 1 must be below 2**63 "
                         f"(got {args.seed + count - 1})")
    choice = _engine_choice(args.server, config)
    _check_no_model_flags(choice, args.model, args.adapter)
    if choice.server is None:
        adapter = resolve_adapter(config, args.adapter) if args.adapter is not None else None
        model_dir, adapter_dir, _ = resolve_model(config, args.model, adapter, args.no_adapter)
    # a broken history fails before the slow load; --reply-to reads it even with --no-history
    store = None if args.no_history and args.reply_to is None else Store(db_path())
    try:
        talk = _conversation(args, config, prompt, store)
        _check_prompt_length(talk)
        model_config = _check_fits_model(model_dir, count, talk, max_tokens, args) if choice.server is None else None
        history = HistoryWriter(None if args.no_history else store)
        from inference import SamplingParams

        # with --seed S, draft i gets seed S+i; without, the engine picks each draft's seed
        drafts = [SamplingParams(**sampling, seed=None if args.seed is None else args.seed + i) for i in range(count)]
        if choice.server is None:
            engine = _load_engine(model_dir, adapter_dir)
            _check_context(engine, model_config, talk, max_tokens, args)
        else:  # the server checks the context (a one-line 400) and queues drafts past its rows
            from bobby_tui.engines.remote import RemoteEngine

            engine = RemoteEngine(choice.server, choice.api_key)
            engine.adapter_enabled = engine.has_adapter and not args.no_adapter
        _print_drafts(engine, talk, drafts, max_tokens, args, config, history)
    finally:
        if store is not None:
            store.close()
    return EXIT_NOT_SAVED if history.failed else 0


def _engine_choice(flag: str | None, config: Config):
    """In-process or on a server (bobby_tui.engines): --server, else the config's server key."""
    from bobby_tui.engines import choose_engine

    try:
        return choose_engine(flag, config.server, f"server in {config_path()}")
    except ValueError as err:
        raise (UsageError if flag is not None else CliError)(str(err)) from None


def _check_no_model_flags(choice, model: Path | None, adapter: Path | None) -> None:
    if choice.server is not None and (model is not None or adapter is not None):
        raise UsageError(f"--model and --adapter choose what this process loads: the server at {choice.server} "
                         "serves its own model (--no-adapter switches its adapter off; --server local loads here)")


def _conversation(args: argparse.Namespace, config: Config, prompt: str, store: Store | None) -> Conversation:
    """The post's messages: --reply-to's conversation (its system prompt unless --system) or the system prompt."""
    prefill = args.prefill or None  # an empty prefill starts the reply with nothing: a plain reply
    if args.reply_to is None:
        return Conversation(prompt, _system_prompt(args, config), prefill=prefill)
    earlier = store.conversation(args.reply_to)
    system = earlier.pop(0)["content"] if earlier[0]["role"] == "system" else None
    if args.system is not None:
        _check_text(args.system, "--system")
        system = args.system
    return Conversation(prompt, system, history=earlier, prefill=prefill, parent_id=args.reply_to)


def _load_config() -> Config:
    config, warning = load_config_checked()
    if warning:
        _warn(warning)
    return config


_COUNT = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() would take "³" for a number


def _count_and_prompt(count: int | None, words: list[str], config: Config) -> tuple[int, str]:
    """(COUNT, PROMPT) from -n and the positional arguments, the prompt exactly as given.

    One argument is the prompt, whatever it looks like (`post 1984`); two, the first a number, are COUNT PROMPT;
    anything else is refused, as joining words would change the prompt (the shell already dropped its spacing).
    """
    if len(words) == 2 and _COUNT.fullmatch(words[0]):
        if count is not None:
            raise UsageError(f"COUNT is given twice (-n {count} and {words[0]}); quote PROMPT if it starts with a "
                             "number")
        from bobby_tui.composer import MAX_DRAFTS

        problem = Limit(1, MAX_DRAFTS, integer=True).problem(int(words[0]))
        if problem:
            raise UsageError(f"COUNT {problem} (-n COUNT and a quoted PROMPT for a prompt that starts with a number)")
        count, words = int(words[0]), words[1:]
    if len(words) > 1:
        raise UsageError(f"PROMPT must be one argument: quote it, e.g. {PROG} post -n 3 \"{' '.join(words[:3])}...\" "
                         f"(got {len(words)} arguments)")
    if words == ["-"]:
        prompt, source = _read_stdin(), "the prompt from stdin"
    elif words:
        prompt, source = words[0], "PROMPT"
    else:
        prompt, source = config.default_prompt, f"default_prompt in {config_path()}"
    _check_text(prompt, source)
    if not prompt.strip():
        raise UsageError(f"{source} is {'empty' if not prompt else 'only whitespace'}")
    return count if count is not None else 1, prompt


def _read_stdin() -> str:
    """The prompt from stdin, exactly as given (as `mlx_lm.generate --prompt -` reads it), bounded: past
    PROMPT_CHAR_LIMIT characters it is refused without reading on."""
    byte_limit = 4 * PROMPT_CHAR_LIMIT  # UTF-8 takes at most 4 bytes a character
    data = sys.stdin.buffer.read(byte_limit + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if len(data) <= byte_limit:
            raise UsageError(f"the prompt from stdin is not valid UTF-8 (an undecodable byte at byte {err.start})"
                             ) from None
        text = data.decode("utf-8", errors="replace")  # cut inside a character: too long anyway
    if len(data) > byte_limit or len(text) > PROMPT_CHAR_LIMIT:
        raise UsageError(f"the prompt from stdin is more than {PROMPT_CHAR_LIMIT:,} characters")
    return text


def _check_text(text: str, source: str) -> None:
    # undecodable bytes in argv arrive as lone surrogates (surrogateescape): no tokenizer can take them
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UsageError(f"{source} is not valid UTF-8 (an undecodable byte at character {err.start})") from None


def _system_prompt(args: argparse.Namespace, config: Config) -> str | None:
    """--system as given ("" is an empty system message, as mlx_lm renders it); else the configured one, if any."""
    if args.system is not None:
        _check_text(args.system, "--system")
        return args.system
    _check_text(config.system_prompt, f"system_prompt in {config_path()}")
    return config.system_prompt or None


def _check_prompt_length(talk: Conversation) -> None:
    length = sum(map(len, talk.texts()))
    if length > PROMPT_CHAR_LIMIT:
        parts = [f"the prompt ({_characters(len(talk.prompt))})"]
        if talk.system:
            parts.append(f"system prompt ({len(talk.system):,})")
        if talk.history:
            parts.append(f"conversation (#{talk.parent_id}: {sum(len(m['content']) for m in talk.history):,})")
        if talk.prefill:
            parts.append(f"prefill ({len(talk.prefill):,})")
        joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        raise UsageError(f"{joined} {'are' if len(parts) > 1 else 'is'} {length:,} characters; at most "
                         f"{PROMPT_CHAR_LIMIT:,} (a CPU takes about a minute to read that many)")


def _characters(n: int) -> str:
    return f"{n:,} character{'' if n == 1 else 's'}"


def _sampling(args: argparse.Namespace, config: Config) -> dict:
    """The configured sampling overridden by the flags (checked by argparse), checked against SAMPLING_LIMITS:
    SamplingParams' arguments but the seed."""
    values = {}
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
        flag_value = getattr(args, name, None)
        if flag_value is not None:
            values[name] = flag_value
            continue
        value = getattr(config.sampling, name)
        problem = SAMPLING_LIMITS[name].problem(value)
        if problem:
            raise CliError(f"{config_path()}: sampling.{name} {problem}")
        values[name] = value
    return values


def _check_fits_model(model_dir: Path, count: int, talk: Conversation, max_tokens: int, args: argparse.Namespace):
    """Before the slow load: the model's config.json, --max-tokens against its positions and COUNT against memory."""
    from bobby_tui.composer import DraftLimitError, available_memory, check_draft_count
    from inference import read_model_args

    _require_dir(model_dir)
    model_config = read_model_args(model_dir)
    source = "--max-tokens" if args.max_tokens is not None else f"sampling.max_tokens in {config_path()}"
    if max_tokens > model_config.max_position_embeddings:
        raise UsageError(f"{source} is {max_tokens:,}: past the model's {model_config.max_position_embeddings:,} "
                         f"positions (max_position_embeddings in {model_config.path})")
    # byte-level BPE gives at most one token per byte of text; the chat template adds a few dozen a message
    texts = talk.texts()
    tokens = sum(len(text.encode()) for text in texts) + 32 * (len(texts) + 1) + max_tokens
    try:
        check_draft_count(count, model_config, tokens, available_memory())
    except DraftLimitError as err:
        if err.limit == 0:  # nothing the COUNT could change: the model is too big for this machine at this length
            raise CliError(f"{model_config.path}: {err}") from None
        raise UsageError(str(err)) from None
    return model_config


def _check_context(engine: Engine, model_config, talk: Conversation, max_tokens: int,
                   args: argparse.Namespace) -> None:
    """The rendered prompt and the drafts must fit the model's positions."""
    prompt_tokens = len(engine.tokenizer.encode(engine.render_messages(talk.messages(), prefill=talk.prefill)))
    positions = model_config.max_position_embeddings
    if prompt_tokens + max_tokens > positions:
        source = "--max-tokens" if args.max_tokens is not None else "sampling.max_tokens"
        raise UsageError(f"the prompt is {prompt_tokens:,} tokens and {source} {max_tokens:,}: past the model's "
                         f"{positions:,} positions (max_position_embeddings in {model_config.path})")


def _load_engine(model_dir: Path, adapter_dir: Path | None) -> Engine:
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

    def update(self, progress: LoadProgress) -> None:
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


class HistoryWriter:
    """Records drafts as they are printed. A draft is the user's data: when the history cannot take it (disk full, a
    value SQLite cannot store, the database removed or replaced meanwhile) the draft is still printed, one line on
    stderr says the drafts are not saved, and no later draft of the run is tried."""

    def __init__(self, store: Store | None):
        self.store = store
        self.failed: str | None = None
        self._identity = _file_identity(store.path) if store is not None else None

    def add(self, record: GenerationRecord) -> int | None:
        if self.store is None or self.failed is not None:
            return None
        try:
            # SQLite keeps writing into a removed file's inode: that row would be lost without a word
            if _file_identity(self.store.path) != self._identity:
                raise StoreError(f"{self.store.path}: the history database was removed or replaced")
            return self.store.add(record)
        except Exception as err:  # whatever the cause, the draft must still reach the user
            self.failed = _one_line(err)
            print(f"{PROG}: not saved to the history: {self.failed} (the drafts are printed only)", file=sys.stderr)
            return None


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _print_drafts(engine: Engine, talk: Conversation, drafts: list, max_tokens: int,
                  args: argparse.Namespace, config: Config, history: HistoryWriter) -> None:
    """Print each draft as it finishes (recorded first, unless --no-history)."""
    from bobby_tui.composer import Draft, compose, to_record
    from inference import TokenDelta

    postprocess = config.postprocess
    if args.stream:
        postprocess = dataclasses.replace(postprocess, retries=0)  # streamed text cannot be taken back
    count = len(drafts)
    events = compose(engine, talk.prompt, talk.system, drafts, max_tokens, postprocess, config.post_limit,
                     raw=args.raw, history=talk.history, prefill=talk.prefill)
    printed = 0
    for event in events:
        if args.stream and isinstance(event, TokenDelta):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        if not isinstance(event, Draft):
            continue
        record = to_record(event, engine, talk.prompt, talk.system, history=talk.history, prefill=talk.prefill,
                           persona=config.persona, parent_id=talk.parent_id)
        gen_id = history.add(record)  # committed before it is shown
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
    parts.append(f"seed {draft.seed}")
    if draft.attempts > 1:  # regenerated: the text came from a later attempt, with a seed derived from the draft's
        parts.append(f"attempt {draft.attempts} (seed {draft.attempt_seed})")
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
        "attempt_seed": record.attempt_seed,
        "prompt_tokens": record.prompt_tokens,
        "generated_tokens": record.generated_tokens,
        "decode_tok_s": round(record.decode_tok_s, 2),
        "model": record.model,
        "adapter": record.adapter,
        "finish_reason": record.finish_reason,
        "attempts": record.attempts,
        "persona": record.persona,
        "parent_id": record.parent_id,
        "prefill": record.prefill,
        "draft": draft.draft,
        "id": gen_id,
    }


# --- history, favorites, export ------------------------------------------------------------------------


HISTORY_LIMIT = 20  # drafts `history` lists without --limit


def cmd_history(args: argparse.Namespace) -> int:
    if args.history_command is not None:
        listing = [flag for flag, given in (("--favorites", args.favorites), ("--search", args.search is not None),
                                            ("--limit", args.limit is not None), ("--json", args.json),
                                            ("--raw", args.raw)) if given]
        if listing:
            raise UsageError(f"{', '.join(listing)} {'is' if len(listing) == 1 else 'are'} for listing drafts, not "
                             f"for `history {args.history_command}`")
        return HISTORY_COMMANDS[args.history_command](args)
    if args.search is not None:
        _check_text(args.search, "--search")
    with Store(db_path()) as store:
        if args.search and not store.full_text:
            _warn("this SQLite has no full-text search (FTS5): matching TEXT as a substring instead")
        limit = args.limit if args.limit is not None else HISTORY_LIMIT
        records = store.history(limit=limit, favorites_only=args.favorites, search=args.search)
    for rec in records:
        print(_record_json(rec, args.raw) if args.json else _history_line(rec))
    return 0


def cmd_history_delete(args: argparse.Namespace) -> int:
    with Store(db_path()) as store:
        deleted = store.delete(args.ids)  # all or none: an unknown id deletes nothing
    for rec in deleted:
        print(f"deleted #{rec.id}")
    return 0


def cmd_history_prune(args: argparse.Namespace) -> int:
    with Store(db_path()) as store:
        pruned = store.prune(args.older_than)
    print(f"deleted {len(pruned)} draft{'' if len(pruned) == 1 else 's'} older than {args.older_than:g} days "
          "(favorites kept)")
    return 0


HISTORY_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "delete": cmd_history_delete,
    "prune": cmd_history_prune,
}


def _local_time(created_at: object) -> datetime | None:
    """A stored time (ISO 8601 in UTC) in the local time zone; None for a value that is not such a time."""
    try:
        when = datetime.fromisoformat(created_at)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return (when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)).astimezone()


def _shown_time(created_at: object) -> str:
    """`2026-05-01 14:03+02:00`: local time with its offset, as the history list and Markdown show it."""
    when = _local_time(created_at)
    return when.isoformat(sep=" ", timespec="minutes") if when is not None else _printable(created_at or "")


def _printable(value: object) -> str:
    # one line per draft, and no control character reaches the terminal (a row may hold anything: say what it holds)
    text = value if isinstance(value, str) else _json_value(value)
    return "".join(c if c.isprintable() else " " for c in text.replace("\n", " ⏎ "))


def _json_value(value: object) -> str:
    """A value JSON has no type for (a BLOB in an odd history row) as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def _record_json(rec: GenerationRecord, raw: bool) -> str:
    """One JSON object: the record's fields, created_at in local time with its offset (ISO 8601); raw_text (which
    may hold special tokens) only when asked for."""
    fields = dataclasses.asdict(rec)
    if not raw:
        del fields["raw_text"]
    when = _local_time(rec.created_at)
    if when is not None:
        fields["created_at"] = when.isoformat(timespec="seconds")
    return json.dumps(fields, ensure_ascii=False, default=_json_value)


def _history_line(rec: GenerationRecord) -> str:
    star = "★" if rec.favorite else " "
    return f"{rec.id:>5} {star} {_shown_time(rec.created_at)}  {_printable(rec.text)}"


def cmd_favorite(args: argparse.Namespace, favorite: bool = True) -> int:
    with Store(db_path()) as store:
        store.set_favorite(args.id, favorite)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bobby_tui.files import write_text_atomically

    suffix = args.file.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise UsageError(f"{args.file}: unknown format {suffix or '(no extension)'!r}; use .md or .jsonl")
    with Store(db_path()) as store:
        records = store.history(limit=-1, favorites_only=args.favorites)[::-1]  # oldest first reads like a log
    text = _markdown(records, args.favorites) if suffix == ".md" else _json_lines(records, args.raw)
    try:
        write_text_atomically(args.file, text)
    except OSError as err:
        raise CliError(f"{args.file}: cannot write: {err.strerror or err}") from None
    what = "favorites" if args.favorites else "drafts"
    print(f"{PROG}: exported {len(records)} {what} to {args.file}", file=sys.stderr)
    return 0


def _json_lines(records: list[GenerationRecord], raw: bool) -> str:
    return "".join(_record_json(r, raw) + "\n" for r in records)


def _markdown(records: list[GenerationRecord], favorites: bool) -> str:
    out = [f"# bobby-tui {'favorites' if favorites else 'drafts'}\n", "\n*Times are local, with their UTC offset.*\n"]
    for rec in records:
        model = f"{rec.model}" + (f" + {rec.adapter}" if rec.adapter else "")
        out += [
            f"\n## #{rec.id} · {_shown_time(rec.created_at)}\n",
            f"\n{_json_value(rec.text)}\n",
            f"\n*prompt: {_json_value(rec.prompt)} · temperature {_number(rec.temperature)} · "
            f"top-p {_number(rec.top_p)} · seed {rec.seed} · {model}*\n",
        ]
    return "".join(out)


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else _json_value(value)


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
    config = _load_config()
    adapter = resolve_adapter(config, args.adapter) if args.adapter is not None else None
    model_dir, adapter_dir, _ = resolve_model(config, args.model, adapter, args.no_adapter)
    limits = ServerLimits(max_tokens=args.max_tokens, max_n=min(args.max_n, args.max_rows), max_rows=args.max_rows,
                          max_queue=args.max_queue)
    try:
        return serve(lambda: _load_engine(model_dir, adapter_dir), ServeOptions(args.host, args.port, args.api_key,
                                                                                limits))
    except ServeError as err:
        raise CliError(str(err)) from None


# --- web -----------------------------------------------------------------------------------------------


def cmd_web(args: argparse.Namespace) -> int:
    from bobby_tui.engines import DEFAULT_SERVER, EngineChoice, server_answers
    from bobby_tui.server import bind_problem
    from bobby_tui.web import WebError, is_loopback_url, serve_web, start_server, stop_server

    problem = bind_problem(args.host, args.api_key)
    if problem:
        raise UsageError(problem)
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be in [1, 65535] (got {args.port})")
    choice = _engine_choice(args.server, _load_config())
    url = choice.server or DEFAULT_SERVER  # the composers always use a server: that is what spares the model copies
    server = None
    if server_answers(url):
        _check_no_model_flags(EngineChoice(url), args.model, args.adapter)
    elif not is_loopback_url(url):
        raise CliError(f"{url}: no bobby-tui server answers there (only a loopback one is started here)")
    else:  # the model options are the started server's
        model_args = ["--model", str(args.model)] if args.model else []
        model_args += ["--adapter", str(args.adapter)] if args.adapter else []
        model_args += ["--no-adapter"] if args.no_adapter else []
        try:
            server = start_server(url, model_args, lambda line: print(f"{PROG}: {line}", file=sys.stderr))
        except WebError as err:
            raise CliError(str(err)) from None
    try:
        serve_web(args.host, args.port, url, args.api_key)
    finally:
        if server is not None:
            stop_server(server)
    return 0


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


# --- adapters ------------------------------------------------------------------------------------------


def cmd_adapters(args: argparse.Namespace) -> int:
    from bobby_tui.inspect_report import adapter_summary
    from inference import inspect_adapters_dir

    config = _load_config()
    folder = args.dir if args.dir is not None else config.adapters_dir
    if folder is None:
        raise CliError(f"no adapters folder: set adapters_dir in {config_path()}, or give DIR")
    _require_dir(folder)
    model_dir = args.model if args.model is not None else config.model
    if model_dir is not None:
        _require_dir(model_dir)
    adapters = inspect_adapters_dir(folder, model_dir)
    if not adapters:
        print(f"{PROG}: no adapters in {folder} (each adapter is a subdirectory)", file=sys.stderr)
        return 0
    width = max(len(name) for name, _ in adapters)
    for name, facts in adapters:
        summary = adapter_summary(facts)
        problems = facts.problems
        shown = "problems: none" if not problems else f"problems ({len(problems)}): {'; '.join(problems)}"
        print(f"{_printable(name).ljust(width)}  {summary}{' · ' if summary else ''}{_one_line(shown)}")
    return 1 if any(facts.problems for _, facts in adapters) else 0


# The subcommands: each one's parser is added in build_parser, its function is registered here.
COMMANDS: dict[str | None, Callable[[argparse.Namespace], int]] = {
    "post": cmd_post,
    "history": cmd_history,
    "favorite": cmd_favorite,
    "unfavorite": lambda args: cmd_favorite(args, favorite=False),
    "export": cmd_export,
    "inspect": cmd_inspect,
    "adapters": cmd_adapters,
    "serve": cmd_serve,
    "web": cmd_web,
}
