"""The OpenAI wire format: request bodies checked into CompletionSpec, responses and stream chunks built. No MLX.

Every problem with a request is an ApiError, answered with OpenAI's error body
``{"error": {"message", "type", "param", "code"}}``. Sampling ranges are the engine's (``SAMPLING_LIMITS``, and
``SamplingParams`` raising ``ParameterError``): this module only says which request field a problem belongs to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from inference.api import SAMPLING_LIMITS, Limit, ParameterError, SamplingParams

EXTENSION = "bobby"  # the namespace of our own request fields: {"bobby": {"adapter": false, "top_k": 40}}
EXTENSION_FIELDS = ("adapter", "top_k", "min_p", "repetition_penalty")
MAX_STOP_STRINGS = 4  # as OpenAI
MAX_STOP_LENGTH = 256  # a stop string's characters are held back while streaming: keep that delay short
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# OpenAI fields we accept but have no use for, and fields we accept only at their default (anything else is a
# feature this server does not have: saying so beats silently ignoring it).
IGNORED_FIELDS = {"user", "store", "metadata", "service_tier", "parallel_tool_calls"}
DEFAULT_ONLY = {
    "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False, "top_logprobs": 0, "logit_bias": {},
    "tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "echo": False, "best_of": 1,
    "suffix": "",
}
COMMON_FIELDS = {"model", "temperature", "top_p", "max_tokens", "seed", "stop", "n", "stream", "stream_options",
                 EXTENSION}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_completion_tokens"}
TEXT_FIELDS = COMMON_FIELDS | {"prompt"}


class ApiError(Exception):
    """An HTTP error answered with OpenAI's JSON error body."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return self.TYPES.get(self.status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def shutting_down_error() -> ApiError:
    return ApiError(503, "the server is shutting down", code="server_shutting_down")


@dataclass(frozen=True)
class ServerLimits:
    max_tokens: int = 2048  # the cap, and the default when a request gives none
    max_n: int = 8
    max_body_bytes: int = 1 << 20
    max_rows: int = 32  # rows decoding at once
    max_queue: int = 64  # requests waiting for rows; beyond that, 429


@dataclass(frozen=True)
class CompletionSpec:
    """One checked request: either chat ``messages`` (rendered with the model's template) or a raw ``prompt``."""

    chat: bool
    messages: list[dict] | None
    prompt: str | None
    drafts: list[SamplingParams]
    max_tokens: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    adapter: bool | None  # None: the server's default

    @property
    def n(self) -> int:
        return len(self.drafts)


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"the request body is not valid JSON: {_one_line(err)}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def parse_chat(body: dict, limits: ServerLimits, adapter_name: str | None) -> CompletionSpec:
    _check_fields(body, CHAT_FIELDS)
    messages = parse_messages(_required(body, "messages"))
    max_tokens = _max_tokens(body, limits, "max_completion_tokens", "max_tokens")
    return _spec(body, limits, adapter_name, max_tokens, messages=messages)


def parse_completion(body: dict, limits: ServerLimits, adapter_name: str | None) -> CompletionSpec:
    _check_fields(body, TEXT_FIELDS)
    prompt = _required(body, "prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]  # OpenAI takes a list of prompts; one is what a single batch of drafts can serve
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (or a list of one string)", "prompt")
    if not prompt:
        raise ApiError(400, "prompt must not be empty", "prompt")
    return _spec(body, limits, adapter_name, _max_tokens(body, limits, "max_tokens"), prompt=prompt)


def _spec(body: dict, limits: ServerLimits, adapter_name: str | None, max_tokens: int,
          messages: list[dict] | None = None, prompt: str | None = None) -> CompletionSpec:
    if not isinstance(body.get("model"), str):
        raise ApiError(400, "model must be a string (any name: this server serves one model)", "model")
    extension = _extension(body.get(EXTENSION))
    n = _checked(body, "n", Limit(1, limits.max_n, integer=True), 1)
    sampling = {"temperature": 1.0, "top_p": 1.0}  # OpenAI's defaults
    for name in ("temperature", "top_p", "seed"):
        if body.get(name) is not None:
            sampling[name] = _sampling_value(name, body[name], name)
    for name in ("top_k", "min_p", "repetition_penalty"):
        if extension.get(name) is not None:
            sampling[name] = _sampling_value(name, extension[name], f"{EXTENSION}.{name}")
    seed = sampling.pop("seed", None)
    try:  # choice i gets seed S+i, as `bobby-tui post --seed S` gives draft i
        drafts = [SamplingParams(**sampling, seed=None if seed is None else seed + i) for i in range(n)]
    except ParameterError as err:
        raise ApiError(400, str(err), str(err).split()[0]) from None
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean", "stream")
    return CompletionSpec(
        chat=messages is not None, messages=messages, prompt=prompt, drafts=drafts, max_tokens=max_tokens,
        stop=_stop(body.get("stop")), stream=stream, include_usage=_include_usage(body.get("stream_options")),
        adapter=_adapter(extension.get("adapter"), adapter_name),
    )


def _check_fields(body: dict, known: set[str]) -> None:
    for name, value in body.items():
        if name in known or name in IGNORED_FIELDS or value is None:
            continue
        if name in DEFAULT_ONLY:
            if value != DEFAULT_ONLY[name]:
                raise ApiError(400, f"{name} is not supported by this server (only its default "
                               f"{json.dumps(DEFAULT_ONLY[name])})", name, "unsupported_parameter")
            continue
        raise ApiError(400, f"unrecognized request argument: {name}", name, "unknown_parameter")


def _required(body: dict, name: str) -> Any:
    if body.get(name) is None:
        raise ApiError(400, f"{name} is required", name, "missing_required_parameter")
    return body[name]


def _checked(body: dict, name: str, limit: Limit, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    problem = limit.problem(value)
    if problem:
        raise ApiError(400, f"{name} {problem}", name)
    return value


def _max_tokens(body: dict, limits: ServerLimits, *names: str) -> int:
    given = [name for name in names if body.get(name) is not None]
    if len(given) > 1 and body[given[0]] != body[given[1]]:
        raise ApiError(400, f"{given[0]} and {given[1]} differ: give one", given[1])
    if not given:
        return limits.max_tokens
    return _checked(body, given[0], Limit(1, limits.max_tokens, integer=True), limits.max_tokens)


def _sampling_value(name: str, value: Any, param: str) -> Any:
    problem = SAMPLING_LIMITS[name].problem(value)
    if problem:
        raise ApiError(400, f"{param} {problem}", param)
    return value


def parse_messages(messages: Any) -> list[dict]:
    """Chat messages checked and normalized (roles mapped, content parts joined), as the template takes them."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty array", "messages")
    rendered = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object", where)
        role = message.get("role")
        if role not in ROLES:
            known = ", ".join(ROLES)
            raise ApiError(400, f"{where}.role must be one of {known} (got {json.dumps(role)})", f"{where}.role")
        for key, value in message.items():
            if key not in ("role", "content", "name") and value not in (None, [], ""):
                raise ApiError(400, f"{where}.{key} is not supported by this server", f"{where}.{key}")
        rendered.append({"role": ROLES[role], "content": _content(message.get("content"), f"{where}.content")})
    return rendered


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: text only
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ApiError(400, f"{where}[{j}] must be a text part ({{\"type\": \"text\", \"text\": ...}}): "
                               "this model reads text only", f"{where}[{j}]")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, f"{where} must be a string or an array of text parts", where)


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    strings = [stop] if isinstance(stop, str) else stop
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise ApiError(400, "stop must be a string or an array of strings", "stop")
    if len(strings) > MAX_STOP_STRINGS:
        raise ApiError(400, f"stop takes at most {MAX_STOP_STRINGS} strings (got {len(strings)})", "stop")
    if any(not s or len(s) > MAX_STOP_LENGTH for s in strings):
        raise ApiError(400, f"each stop string must have 1 to {MAX_STOP_LENGTH} characters", "stop")
    return tuple(strings)


def _include_usage(options: Any) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "stream_options must be an object like {\"include_usage\": true}", "stream_options")
    return options.get("include_usage", False)


def _extension(extension: Any) -> dict:
    if extension is None:
        return {}
    if not isinstance(extension, dict):
        raise ApiError(400, f"{EXTENSION} must be an object with any of: {', '.join(EXTENSION_FIELDS)}", EXTENSION)
    for name in extension:
        if name not in EXTENSION_FIELDS:
            raise ApiError(400, f"unrecognized argument {EXTENSION}.{name} (known: {', '.join(EXTENSION_FIELDS)})",
                           f"{EXTENSION}.{name}", "unknown_parameter")
    return extension


def _adapter(choice: Any, adapter_name: str | None) -> bool | None:
    """The extension's adapter: true / false, or the loaded adapter's name (which is true)."""
    param = f"{EXTENSION}.adapter"
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice != adapter_name:
            loaded = f"the loaded adapter is {adapter_name!r}" if adapter_name else "no adapter is loaded"
            raise ApiError(400, f"{param}: adapter {choice!r} is not loaded ({loaded})", param)
        return True
    if not isinstance(choice, bool):
        raise ApiError(400, f"{param} must be a boolean or the loaded adapter's name", param)
    if choice and adapter_name is None:
        raise ApiError(400, f"{param}: no adapter is loaded (start the server with --adapter)", param)
    return choice


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


# --- responses ---------------------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(spec: CompletionSpec, ident: str, created: int, model: str, choices: list[dict],
                    prompt_tokens: int) -> dict:
    """choices: per draft {"text", "finish_reason", "seed", "completion_tokens"}, in draft order."""
    if spec.chat:
        listed = [{"index": i, "message": {"role": "assistant", "content": c["text"]}, "logprobs": None,
                   "finish_reason": c["finish_reason"], EXTENSION: {"seed": c["seed"]}} for i, c in enumerate(choices)]
    else:
        listed = [{"index": i, "text": c["text"], "logprobs": None, "finish_reason": c["finish_reason"],
                   EXTENSION: {"seed": c["seed"]}} for i, c in enumerate(choices)]
    return {"id": ident, "object": "chat.completion" if spec.chat else "text_completion", "created": created,
            "model": model, "choices": listed,
            "usage": usage(prompt_tokens, sum(c["completion_tokens"] for c in choices))}


class ChunkWriter:
    """Server-sent events of one streamed completion. The per-token path formats one string around the delta."""

    def __init__(self, spec: CompletionSpec, ident: str, created: int, model: str):
        self.chat = spec.chat
        usage_field = ',"usage":null' if spec.include_usage else ""  # OpenAI: null on every chunk but the last
        head = json.dumps({"id": ident, "object": "chat.completion.chunk" if spec.chat else "text_completion",
                           "created": created, "model": model})[:-1]
        self._head = f'data: {head}{usage_field},"choices":[{{"index":'
        self._head_no_choices = f"data: {head}"

    def delta(self, index: int, text: str) -> str:
        content = json.dumps(text, ensure_ascii=False)
        if self.chat:
            return f'{self._head}{index},"delta":{{"content":{content}}},"logprobs":null,"finish_reason":null}}]}}\n\n'
        return f'{self._head}{index},"text":{content},"logprobs":null,"finish_reason":null}}]}}\n\n'

    def role(self, index: int) -> str:
        return (f'{self._head}{index},"delta":{{"role":"assistant","content":""}},'
                f'"logprobs":null,"finish_reason":null}}]}}\n\n')

    def finish(self, index: int, finish_reason: str, seed: int) -> str:
        reason = json.dumps(finish_reason)
        extension = f'"{EXTENSION}":{{"seed":{seed}}}'
        body = '"delta":{}' if self.chat else '"text":""'
        return f'{self._head}{index},{body},"logprobs":null,"finish_reason":{reason},{extension}}}]}}\n\n'

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        counts = json.dumps(usage(prompt_tokens, completion_tokens))
        return f'{self._head_no_choices},"choices":[],"usage":{counts}}}\n\n'

    @staticmethod
    def error(error: ApiError) -> str:
        return f"data: {json.dumps(error.body())}\n\n"

    DONE = "data: [DONE]\n\n"
