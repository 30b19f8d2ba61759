"""Tokenizer (Hugging Face ``tokenizers``), the model's own chat template (sandboxed, bounded jinja2), streaming
detokenization, and ``check_tokenizer``: every tokenizer problem that would stop or change a generation.

A chat template is code from a downloaded file. The immutable sandbox (as transformers renders it) stops it reaching
Python's internals or changing the caller's objects; the render budget below stops it spending unbounded time or
memory. Every operation that can build a large value is checked before it runs where its size can be known (string
and list repetition, powers, ranges, padding and formatting widths, joins, replacements) and measured after it ran
(everything else: a result may be at most a few times its inputs), every block entered (each loop iteration, macro
call, branch) checks a wall-clock deadline, and all output, literal text included, counts against an output limit.
Everything runs on the rendering thread: no watchdog thread, no signal (the engine renders on its own thread).
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import string
import time
from collections.abc import Mapping, MappingView
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, _PassArg, generate_lorem_ipsum, pass_context
from tokenizers import Tokenizer as HFTokenizer

from .api import ParameterError
from .config import read_json
from .errors import TokenizerError
from .safetensors_reader import json_type_name, open_regular_file

TEMPLATE_TIME_LIMIT_S = 1.0  # one render, warm-up renders included; the real templates take milliseconds
TEMPLATE_MAX_CHARS = 2**20  # the rendered prompt, and any one string or list built while rendering it
TEMPLATE_MAX_WORK = 16 * TEMPLATE_MAX_CHARS  # characters and items built over one render
TEMPLATE_MAX_INT_BITS = 4096
TEMPLATE_MAX_SOURCE = 2**20  # characters of template source
_MAX_TOKENIZER_BYTES = 512 * 2**20


class _TemplateLimitError(Exception):
    """A chat template went past one of the render budget's limits; ``str`` says which, after "exceeded"."""


@dataclass
class _Budget:
    deadline: float
    output: int = 0
    work: int = 0


# Per thread (each thread has its own context): renders on different threads have their own budgets.
_budget: ContextVar[_Budget | None] = ContextVar("chat_template_budget", default=None)


def _tick() -> None:
    budget = _budget.get()
    if budget is not None and time.monotonic() > budget.deadline:
        raise _TemplateLimitError(f"its time limit ({TEMPLATE_TIME_LIMIT_S:g} s)")


def _too_big(what: str, size: int, unit: str = "characters") -> _TemplateLimitError:
    return _TemplateLimitError(f"its size limit: {what} of {size} {unit} (at most {TEMPLATE_MAX_CHARS})")


def _built(value):
    """Measure a value an operation built: refuse it past the size limit, charge it to the render's work."""
    if isinstance(value, str):
        size, unit = len(value), "characters"
    elif isinstance(value, (list, tuple, dict, set, frozenset, bytes)):
        size, unit = len(value), "items"
    else:
        if type(value) is int and value.bit_length() > TEMPLATE_MAX_INT_BITS:
            raise _TemplateLimitError(
                f"its size limit: an integer of {value.bit_length()} bits (at most {TEMPLATE_MAX_INT_BITS})"
            )
        return value
    if size > TEMPLATE_MAX_CHARS:
        raise _too_big(f"a {type(value).__name__}", size, unit)
    budget = _budget.get()
    if budget is not None:
        budget.work += size
        if budget.work > TEMPLATE_MAX_WORK:
            raise _TemplateLimitError(f"its work limit ({TEMPLATE_MAX_WORK} characters and items built)")
    return value


class _Overflow(Exception):
    pass


def _text_size(value, limit: int = TEMPLATE_MAX_CHARS) -> int:
    """About ``len(str(value))``, counted without building it, and only up to past ``limit``: a list can hold the
    same large string many times, or lists of lists of it, so its text can be exponentially larger than the list."""
    if isinstance(value, str):
        return len(value)
    total = 0

    def visit(item, path: set[int]) -> None:
        nonlocal total
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, bool) or item is None or isinstance(item, float):
            total += 24
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, (list, tuple, set, frozenset, Mapping, MappingView, Namespace, bytes)):
            if id(item) in path:  # repr prints a cycle as [...]
                total += 5
                return
            path.add(id(item))
            if isinstance(item, bytes):
                total += 4 * len(item)
            elif isinstance(item, Namespace):
                visit(object.__getattribute__(item, "_Namespace__attrs"), path)
            else:
                for element in (item.items() if isinstance(item, Mapping) else item):
                    visit(element, path)
                    total += 2
            path.discard(id(item))
        else:
            total += 80  # the repr of an object the template can reach (a macro, a loop, undefined) is short
        if total > limit:
            raise _Overflow

    try:
        visit(value, set())
    except _Overflow:
        pass
    return total


def _check_text(value, what: str) -> None:
    size = _text_size(value)
    if size > TEMPLATE_MAX_CHARS:
        raise _too_big(what, size)


def _int_or_big(digits: str) -> int:
    return int(digits) if len(digits) < 10 else TEMPLATE_MAX_CHARS + 1


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _check_formatting(fmt: str, widths: list[int], fields: int, values: list) -> None:
    """A format string's result is at most its own length plus, per field, the widest of its widths and values."""
    widest = max([*widths, *(_text_size(v) for v in values), 0])
    size = len(fmt) + fields * widest
    if size > TEMPLATE_MAX_CHARS:
        raise _too_big("a formatted string", size)


def _check_printf(fmt: str, args) -> None:
    values = list(args.values()) if isinstance(args, Mapping) else list(args) if isinstance(args, tuple) else [args]
    specs = _PRINTF_SPEC.findall(fmt)
    widths = [_int_or_big(w) for spec in specs for w in spec if w.isdigit()]
    if any("*" in spec for spec in specs):
        widths += [abs(v) for v in values if type(v) is int]
    _check_formatting(fmt, widths, len(specs), values)


def _check_str_format(fmt: str, args: tuple, kwargs: dict) -> None:
    specs = [spec or "" for _, field, spec, _ in string.Formatter().parse(fmt) if field is not None]
    values = [*args, *kwargs.values()]
    widths = [_int_or_big(w) for spec in specs for w in re.findall(r"\d+", spec)]
    if any("{" in spec for spec in specs):  # nested fields: the widths are arguments
        widths += [abs(v) for v in values if type(v) is int]
    _check_formatting(fmt, widths, len(specs), values)


def _check_replace(s, old, new, count) -> None:
    s, old, new = str(s), str(old), str(new)
    found = len(s) + 1 if not old else s.count(old)
    if count is not None and count >= 0:
        found = min(found, count)
    size = len(s) + found * (len(new) - len(old))
    if size > TEMPLATE_MAX_CHARS:
        raise _too_big("a replaced string", size)


def _joined(items, separator, what: str) -> list:
    """``items`` as a list, once the text joining them is known to fit."""
    items = list(items)
    if len(items) > TEMPLATE_MAX_CHARS:
        raise _too_big(what, len(items), "items")
    size = len(str(separator)) * max(len(items) - 1, 0)
    for item in items:
        size += _text_size(item)
        if size > TEMPLATE_MAX_CHARS:
            raise _too_big(what, size)
    return items


def _check_str_method(owner: str | bytes, name: str, args: tuple, kwargs: dict) -> tuple:
    """Checks for the methods of strings that can build far more than they are given; returns the arguments to call
    with (a join's iterable is consumed to measure it)."""
    if name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if type(tabsize) is int:
            size = len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * tabsize
            if size > TEMPLATE_MAX_CHARS:
                raise _too_big("an expanded string", size)
    elif name == "replace" and len(args) >= 2 and isinstance(owner, str):
        count = args[2] if len(args) > 2 else kwargs.get("count")
        _check_replace(owner, args[0], args[1], count if type(count) is int else None)
    elif name == "join" and args:
        args = (_joined(args[0], owner, "a joined string"), *args[1:])
    elif name in ("format", "format_map") and isinstance(owner, str):
        mapping = args[0] if name == "format_map" and args and isinstance(args[0], Mapping) else {}
        _check_str_format(owner, args if name == "format" else (), {**kwargs, **mapping})
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, (str, bytes))), default=1)
        if len(owner) * longest > TEMPLATE_MAX_CHARS:
            raise _too_big("a translated string", len(owner) * longest)
    return args


def _check_int_arguments(args, kwargs) -> None:
    """A string or integer method given a count past the size limit: ``'x'.center(10**9)``, ``(1).to_bytes(10**9)``."""
    for value in (*args, *kwargs.values()):
        if type(value) is int and abs(value) > TEMPLATE_MAX_CHARS:
            raise _TemplateLimitError(f"its size limit: an argument of {value} (at most {TEMPLATE_MAX_CHARS})")


def _bounded_range(*args) -> range:
    numbers = range(*args)
    try:
        length = len(numbers)
    except OverflowError:  # more items than a C ssize_t
        length = MAX_RANGE + 1
    if length > MAX_RANGE:  # the sandbox's own range limit, as transformers renders
        raise _TemplateLimitError(f"its size limit: a range of {length} items (at most {MAX_RANGE})")
    return numbers


def _bounded_lipsum(n=5, html=True, min=20, max=100):  # jinja's parameter names
    if type(n) is int and type(max) is int and n * max * 16 > TEMPLATE_MAX_CHARS:
        raise _too_big("lorem ipsum", n * max * 16)
    return generate_lorem_ipsum(n, html, min, max)


# Filters that do Python work for each item (or word) of their value: fed at most MAX_RANGE of them, each finishes in
# a fraction of the time limit (the deadline is only checked between operations).
_PER_ITEM_FILTERS = frozenset({
    "batch", "dictsort", "groupby", "join", "map", "max", "min", "pprint", "reject", "rejectattr", "select",
    "selectattr", "slice", "sort", "sum", "title", "unique", "urlencode", "urlize", "wordwrap", "xmlattr",
})

# Filters that do not turn their value into text (the others are checked for a value whose text is too large)
_NON_TEXT_FILTERS = frozenset({
    "abs", "attr", "batch", "count", "d", "default", "dictsort", "filesizeformat", "first", "float", "groupby", "int",
    "items", "join", "last", "length", "list", "map", "max", "min", "random", "reject", "rejectattr", "reverse",
    "round", "select", "selectattr", "slice", "sort", "sum", "tojson", "unique",
})


def _check_filter_arguments(name: str, a: dict) -> None:
    """Checks for the builtin filters that can build far more than they are given; ``a`` holds the bound arguments."""
    if name == "center" and type(a["width"]) is int and a["width"] > TEMPLATE_MAX_CHARS:
        raise _too_big("a centred string", a["width"])
    elif name == "indent":
        text = str(a["s"])
        width = a["width"] if type(a["width"]) is int else len(str(a["width"]))
        size = len(text) + (text.count("\n") + 1) * width
        if size > TEMPLATE_MAX_CHARS:
            raise _too_big("an indented string", size)
    elif name == "wordwrap":
        wrap = a["wrapstring"]
        size = len(str(a["s"])) * (1 + (len(str(wrap)) if wrap is not None else 1))
        if size > TEMPLATE_MAX_CHARS:
            raise _too_big("a wrapped string", size)
    elif name == "replace":
        _check_replace(a["s"], a["old"], a["new"], a["count"] if type(a["count"]) is int else None)
    elif name == "format":
        _check_printf(str(a["value"]), tuple(a["args"]) or a["kwargs"])
    elif name in ("batch", "slice"):
        count = a["linecount" if name == "batch" else "slices"]
        if type(count) is int and count > TEMPLATE_MAX_CHARS:
            raise _too_big(f"a {name}", count, "items")


def _bounded_filter(name: str, func):
    """``func`` checked before it runs (its arguments, the text of its value) and measured after."""
    skip = 0 if _PassArg.from_obj(func) is None else 1  # the context / environment jinja passes first
    # The signature to bind arguments to is the innermost function's: jinja's async variants take an eval context
    # their sync function does not.
    inner = inspect.unwrap(func)
    signature = inspect.signature(inner)
    inner_skip = 0 if _PassArg.from_obj(inner) is None else 1
    is_text_filter = name not in _NON_TEXT_FILTERS
    is_per_item = name in _PER_ITEM_FILTERS

    @functools.wraps(func)  # keeps jinja's pass_context / pass_environment marks
    def bounded(*args, **kwargs):
        _tick()
        if is_text_filter and len(args) > skip:
            _check_text(args[skip], f"the text given to '{name}'")
        if is_per_item and len(args) > skip and hasattr(args[skip], "__len__") and len(args[skip]) > MAX_RANGE:
            raise _TemplateLimitError(f"its size limit: '{name}' given {len(args[skip])} items (at most {MAX_RANGE})")
        bound = signature.bind(*(None,) * inner_skip, *args[skip:], **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        if name == "join" or (name == "sum" and isinstance(arguments["start"], (str, list, tuple))):
            # the value may be a generator: measured as a list, and that list is what the filter then gets
            items = _joined(args[skip], arguments.get("d", ""), f"the value '{name}' builds")
            args = (*args[:skip], items, *args[skip + 1 :])
        else:
            _check_filter_arguments(name, arguments)
        return _built(func(*args, **kwargs))

    return bounded


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Same output as transformers' chat-template filter (ensure_ascii off, unlike json.dumps's default), encoded piece
    # by piece so that a huge indent or a list holding itself many times stops at the size limit.
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    pieces, size = [], 0
    for piece in encoder.iterencode(value):
        size += len(piece)
        if size > TEMPLATE_MAX_CHARS:
            raise _too_big("the JSON of a value", size)
        pieces.append(piece)
    return "".join(pieces)


class _BoundedCodeGenerator(CodeGenerator):
    """Template code that reports to the render budget where the sandbox has no hook: each block entered (a loop
    iteration, a macro call, a branch), each slice and ``~`` concatenation, each piece of literal output."""

    def blockvisit(self, body, frame) -> None:
        self.writeline("environment.budget_tick()")
        super().blockvisit(body, frame)

    def visit_Getitem(self, node, frame) -> None:
        if not isinstance(node.arg, nodes.Slice):  # the others go through the sandbox's getitem: no copy
            return super().visit_Getitem(node, frame)
        self.write("environment.budget_built(")
        super().visit_Getitem(node, frame)
        self.write(")")

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.budget_concat((")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write("))")

    def _output_const_repr(self, group) -> str:
        return f"environment.budget_output({super()._output_const_repr(group)})"


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, **options):
        # No constant folding at compile time: a folded filter or operator would run outside any budget.
        super().__init__(optimized=False, finalize=self._finalize, **options)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.globals["range"] = _bounded_range
        self.globals["lipsum"] = _bounded_lipsum

    @staticmethod
    @pass_context
    def _finalize(context, value):
        """Every ``{{ value }}`` written: its text counts against the output limit before it is made."""
        _tick()
        size = _text_size(value)
        if size > TEMPLATE_MAX_CHARS:
            raise _too_big("an output value", size)
        _budget_output_chars(size)
        return value

    def budget_tick(self) -> None:
        _tick()

    def budget_built(self, value):
        return _built(value)

    def budget_output(self, text: str) -> str:
        _budget_output_chars(len(text))
        return text

    def budget_concat(self, parts: tuple) -> str:
        size = 0
        for part in parts:
            size += _text_size(part)
        if size > TEMPLATE_MAX_CHARS:
            raise _too_big("a concatenated string", size)
        return _built("".join(map(str, parts)))

    def getattr(self, obj, attribute):
        _tick()  # also once per item where filters look attributes up (sort, groupby, map, selectattr by attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        _tick()
        return super().getitem(obj, argument)

    def call_binop(self, context, operator, left, right):
        _tick()
        if operator == "*":
            sequence, count = (left, right) if type(right) is int else (right, left)
            repeats = isinstance(sequence, (str, list, tuple)) and type(count) is int
            if repeats and len(sequence) * count > TEMPLATE_MAX_CHARS:
                raise _too_big(f"a repeated {type(sequence).__name__}", len(sequence) * count,
                               "characters" if isinstance(sequence, str) else "items")
            bits = left.bit_length() + right.bit_length() if type(left) is int and type(right) is int else 0
            if bits > TEMPLATE_MAX_INT_BITS:
                raise _TemplateLimitError(f"its size limit: a product of {bits} bits (at most {TEMPLATE_MAX_INT_BITS})")
        elif operator == "**" and type(left) is int and type(right) is int and right > 0 and abs(left) > 1:
            bits = (left.bit_length() - 1) * right
            if bits > TEMPLATE_MAX_INT_BITS:
                raise _TemplateLimitError(
                    f"its size limit: a power of at least {bits} bits (at most {TEMPLATE_MAX_INT_BITS})")
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, right)
        return _built(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: PYI063 - jinja's signature, free of keyword clashes
        _tick()
        target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(target, "__self__", None)
        if inspect.isbuiltin(target) and isinstance(owner, (str, bytes, int)):
            _check_int_arguments(args, kwargs)
            if not isinstance(owner, int):
                args = _check_str_method(owner, target.__name__, args, kwargs)
        return _built(super().call(__context, __obj, *args, **kwargs))


def _budget_output_chars(count: int) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.output += count
        if budget.output > TEMPLATE_MAX_CHARS:
            raise _TemplateLimitError(f"its output limit ({TEMPLATE_MAX_CHARS} characters)")


def _raise_exception(message):
    raise jinja2.TemplateError(message)


def _template_environment() -> _BoundedEnvironment:
    env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _bounded_filter("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _render_bounded(template: jinja2.Template, path: Path, **variables) -> str:
    """Render ``template`` within the render budget; any failure is a one-line ``TokenizerError`` naming ``path``."""
    token = _budget.set(_Budget(deadline=time.monotonic() + TEMPLATE_TIME_LIMIT_S))
    try:
        return template.render(**variables)
    except _TemplateLimitError as e:
        raise TokenizerError(path, f"chat template exceeded {e}") from None
    except RecursionError:
        raise TokenizerError(path, "chat template exceeded its recursion limit (it calls itself too deeply)") from None
    except MemoryError:
        raise TokenizerError(path, "chat template exceeded the memory available") from None
    except jinja2.TemplateError as e:
        raise TokenizerError(path, f"chat template failed: {e}") from None
    except Exception as e:  # noqa: BLE001 - the template's own mistakes: 1 + 'a', a missing key, a division by zero
        raise TokenizerError(path, f"chat template failed: {type(e).__name__}: {e}") from None
    finally:
        _budget.reset(token)


def _compile_template(source, path: Path) -> jinja2.Template:
    if not isinstance(source, str):
        raise TokenizerError(path, f"chat template must be a string, not {json_type_name(source)}")
    if len(source) > TEMPLATE_MAX_SOURCE:
        raise TokenizerError(path, f"chat template is {len(source)} characters, more than {TEMPLATE_MAX_SOURCE}")
    try:
        return _template_environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TokenizerError(path, f"chat template line {e.lineno}: {e.message}") from None
    except RecursionError:
        raise TokenizerError(path, "chat template cannot be parsed: nested too deeply") from None


def _load_hf_tokenizer(model_dir: Path) -> HFTokenizer:
    path = model_dir / "tokenizer.json"
    with open_regular_file(path, TokenizerError, max_bytes=_MAX_TOKENIZER_BYTES) as f:
        raw = f.read()
    try:
        return HFTokenizer.from_str(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise TokenizerError(path, "cannot be parsed (not UTF-8)") from None
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for any malformed file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TokenizerError(path, f"cannot be parsed ({reason})") from None


def _read_optional_json(path: Path) -> dict:
    return read_json(path, TokenizerError) if path.exists() or path.is_symlink() else {}


def _token_text(path: Path, config: dict, key: str) -> str | None:
    """A special token as tokenizer_config.json / special_tokens_map.json give it: a string, or an AddedToken object."""
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
        if not isinstance(value, str):
            raise TokenizerError(path, f"{key} is an object without a 'content' string")
    if value is not None and not isinstance(value, str):
        raise TokenizerError(
            path, f"{key} must be a string or an object with a 'content' string, not {json_type_name(value)}")
    return value


def _find_template(model_dir: Path, config: dict) -> tuple[Path, str | None]:
    jinja_path = model_dir / "chat_template.jinja"  # newer transformers save the template beside the config
    if jinja_path.exists() or jinja_path.is_symlink():
        with open_regular_file(jinja_path, TokenizerError, max_bytes=4 * TEMPLATE_MAX_SOURCE) as f:
            raw = f.read()
        try:
            return jinja_path, raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TokenizerError(jinja_path, "is not UTF-8 text") from None
    config_path = model_dir / "tokenizer_config.json"
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}]
        if not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in template):
            raise TokenizerError(config_path, "chat_template list must hold objects with a 'name' and a 'template'")
        template = {t["name"]: t.get("template") for t in template}.get("default")
        if template is not None and not isinstance(template, str):
            raise TokenizerError(
                config_path, f"chat_template 'default' must be a string, not {json_type_name(template)}")
    if template is not None and not isinstance(template, str):
        raise TokenizerError(config_path, f"chat_template must be a string or a list of named templates, not "
                                          f"{json_type_name(template)}")
    return config_path, template


def _eos_text(model_dir: Path, config: dict) -> str | None:
    """The tokenizer's eos token: tokenizer_config.json's, else special_tokens_map.json's (as transformers reads it)."""
    eos = _token_text(model_dir / "tokenizer_config.json", config, "eos_token")
    if eos is None:
        path = model_dir / "special_tokens_map.json"
        eos = _token_text(path, _read_optional_json(path), "eos_token")
    return eos


MESSAGE_ROLES = ("system", "user", "assistant")


def _check_messages(messages: list[dict]) -> None:
    """A conversation is a non-empty list of {"role", "content"} with known roles and text content."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ParameterError("a conversation needs at least one message")
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict) or message.get("role") not in MESSAGE_ROLES:
            raise ParameterError(f"message {number} must be a dict whose role is one of {', '.join(MESSAGE_ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ParameterError(f"message {number} ({message['role']}) must have text content")


class Tokenizer:
    def __init__(self, model_dir: Path | str):
        model_dir = Path(model_dir)
        self._tok = _load_hf_tokenizer(model_dir)
        self.config = _read_optional_json(model_dir / "tokenizer_config.json")
        self.template_path, template = _find_template(model_dir, self.config)
        self._template = _compile_template(template, self.template_path) if template else None
        config_path = model_dir / "tokenizer_config.json"
        self._bos_text = _token_text(config_path, self.config, "bos_token") or ""
        self._eos_text = _eos_text(model_dir, self.config)
        self.eos_token_ids = {i for i in (self.token_id(self._eos_text),) if i is not None}

    def token_id(self, text: str | None) -> int | None:
        return None if text is None else self._tok.token_to_id(text)

    @property
    def special_tokens(self) -> frozenset[str]:
        """The texts of the added tokens marked special in tokenizer.json (``<|im_start|>``, ``<|endoftext|>``, ...):
        control tokens of the chat format, never text of a reply. Added tokens that are not special (Qwen3's
        ``<think>``) are left out."""
        return frozenset(t.content for t in self._tok.get_added_tokens_decoder().values() if t.special)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        # Chat-rendered prompts already hold every special token: add none (as apply_chat_template(tokenize=True) does).
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def render_messages(self, messages: list[dict], prefill: str | None = None) -> str:
        """A conversation (system?, user, assistant, user, ...) rendered with thinking off: ending with the
        generation prompt, or, with ``prefill``, inside an assistant turn that starts with that text (as
        ``mlx_lm.generate --prefill-response`` renders it: the turn appended, ``continue_final_message``)."""
        _check_messages(messages)
        if prefill is None:
            return self.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False)
        if not isinstance(prefill, str):
            raise ParameterError(f"prefill must be a string (got {type(prefill).__name__})")
        return self.apply_chat_template([*messages, {"role": "assistant", "content": prefill}],
                                        add_generation_prompt=False, enable_thinking=False,
                                        continue_final_message=True)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, enable_thinking: bool = False,
        continue_final_message: bool = False, **extra
    ) -> str:
        """The conversation as the template renders it. ``continue_final_message``: the prompt ends inside the last
        message, so the model continues its text (transformers' semantics, which ``mlx_lm.generate
        --prefill-response`` uses): the message is rendered with a tag after its text and the prompt is cut at the
        tag, so whatever the template puts after a message (``<|im_end|>``) is left out."""
        if self._template is None:
            raise TokenizerError(self.template_path, "the model has no chat template")
        if not continue_final_message:
            return self._render(messages, add_generation_prompt, enable_thinking, extra)
        if add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt exclude each other")
        if not messages or not isinstance(messages[-1].get("content"), str):
            raise ValueError("continue_final_message needs a last message with text content")
        final = messages[-1]["content"]
        tagged = [*messages[:-1], {**messages[-1], "content": final + _CONTINUE_TAG}]
        rendered = self._render(tagged, False, enable_thinking, extra)
        tag = _CONTINUE_TAG.strip()
        if final.strip() not in rendered or tag not in rendered:
            raise TokenizerError(self.template_path, "the chat template drops part of the final message, so the "
                                                     "reply cannot continue it")
        cut = rendered.rindex(tag)
        # A template that trims the message's trailing space trims it before the tag too: cut that space as well
        return rendered[:cut] if rendered.startswith(_CONTINUE_TAG, cut) else rendered[:cut].rstrip()

    def _render(self, messages: list[dict], add_generation_prompt: bool, enable_thinking: bool, extra: dict) -> str:
        return _render_bounded(
            self._template, self.template_path,
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
            bos_token=self._bos_text,
            eos_token=self._eos_text or "",
            **extra,
        )


_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' tag, so templates see the same text it renders


_FAILED = object()


def check_tokenizer(model_dir: Path | str, eos_token_ids: set[int] | frozenset[int] = frozenset()) -> list[str]:
    """Every tokenizer problem that would stop or change a generation, one line each, without raising.

    ``eos_token_ids``: the stop ids the model's config.json / generation_config.json give (the engine reads those);
    without them the tokenizer files must name an eos token, or a generation would only stop at its length limit.
    """
    model_dir = Path(model_dir)
    problems = []

    def attempt(step):
        try:
            return step()
        except TokenizerError as e:
            problems.append(str(e))
            return _FAILED

    hf = attempt(lambda: _load_hf_tokenizer(model_dir))
    config = attempt(lambda: _read_optional_json(model_dir / "tokenizer_config.json"))
    if config is _FAILED:
        return problems
    bos = attempt(lambda: _token_text(model_dir / "tokenizer_config.json", config, "bos_token"))
    eos = attempt(lambda: _eos_text(model_dir, config))
    if eos is None and not eos_token_ids:
        problems.append(f"{model_dir}: no eos token: tokenizer_config.json and special_tokens_map.json name none, and "
                        "config.json / generation_config.json give no eos_token_id: a generation would only stop at "
                        "its length limit")
    elif isinstance(eos, str) and hf is not _FAILED and hf.token_to_id(eos) is None:
        problems.append(f"{model_dir / 'tokenizer.json'}: the eos token {eos!r} is not in its vocabulary")
    found = attempt(lambda: _find_template(model_dir, config))
    if found is _FAILED:
        return problems
    path, source = found
    if source is None:
        problems.append(f"{path}: the model has no chat template (neither chat_template.jinja nor a 'chat_template' "
                        "in tokenizer_config.json)")
        return problems
    template = attempt(lambda: _compile_template(source, path))
    if template is _FAILED:
        return problems
    probe = "Write a short post about the sea."
    specials = {"bos_token": bos if isinstance(bos, str) else "", "eos_token": eos if isinstance(eos, str) else ""}
    prompt = attempt(lambda: _render_bounded(
        template, path, messages=[{"role": "user", "content": probe}], add_generation_prompt=True,
        enable_thinking=False, **specials))
    if prompt == "":
        problems.append(f"{path}: the chat template renders an empty prompt for a one-message conversation")
    elif isinstance(prompt, str) and probe not in prompt:
        problems.append(f"{path}: the chat template leaves the user's message out of the prompt")
    return problems


class StreamingDetokenizer:
    """Turns a growing token list into text deltas whose concatenation equals the full decode.

    A multi-byte character split across byte-level tokens decodes to U+FFFD until its last byte arrives, so tokens are
    held back while their decode ends in an incomplete character; only the held-back tokens are decoded each step.
    With ``drop_leading_space`` the text's first character is dropped when it is a space, as mlx_lm's streaming
    detokenizer does for generated text (a reply's first token often carries the space that separated it).
    """

    def __init__(self, tokenizer: Tokenizer, drop_leading_space: bool = False):
        self.tokenizer = tokenizer
        self.text = ""  # everything emitted so far
        self._held: list[int] = []  # tokens not yet emitted
        self._leading_space_pending = drop_leading_space

    def add(self, token: int) -> str:
        self._held.append(token)
        decoded = self.tokenizer.decode(self._held)
        if decoded.endswith("\ufffd"):
            return ""
        return self._emit(decoded)

    def flush(self) -> str:
        """Emit whatever is held back (at the end of a generation an incomplete character stays as U+FFFD)."""
        return self._emit(self.tokenizer.decode(self._held) if self._held else "")

    def _emit(self, decoded: str) -> str:
        self._held = []
        if self._leading_space_pending and decoded:
            self._leading_space_pending = False
            decoded = decoded[1:] if decoded[0] == " " else decoded
        self.text += decoded
        return decoded
