"""The engine on `bobby-tui serve`: the composer's engine interface over the server's HTTP API.

A batch of drafts is one streamed ``/v1/completions`` request per draft, all sent at once: each draft keeps its own
temperature and seed (an OpenAI request has one of each), and the server's continuous batching decodes them as one
batch. The prompt is rendered by the server's template (``POST /bobby/v1/render``), so both sides see the same text;
``GET /bobby/v1/info`` gives the names, the adapter default and the special tokens. No MLX here.

Each draft's stream is read by its own thread, which only parses and queues; ``generate`` runs on the caller's
thread, yields the events, and asks ``should_cancel`` between them. Cancelling (or the server going away) closes the
connections: the server frees the rows within a step, and every draft still open ends "cancelled" with the text it
had, so what was generated is kept.
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from inference.api import DraftDone, GenerationRequest, GenerationStats, SamplingParams, TokenDelta

from . import RemoteError

CONNECT_TIMEOUT_S = 5.0  # connecting and the small JSON requests (info, render)
READ_TIMEOUT_S = 300.0  # between two events of a stream: a long prompt on a busy CPU server takes a while
POLL_S = 0.05  # how often generate asks should_cancel while no event comes
SEED_RANGE = 2**31  # a draft without a seed gets one here, so the record says what reproduces it


@dataclass(frozen=True)
class RemoteTokenizer:
    """The part of the tokenizer the composer uses: the special tokens' texts it removes from drafts."""

    special_tokens: frozenset[str]


class RemoteEngine:
    def __init__(self, url: str, api_key: str | None = None):
        """Connect: ask the server what it serves (RemoteError when it cannot be reached or refuses)."""
        self.url, self._api_key = url, api_key
        parts = urlsplit(url)
        self._host, self._port, self._https = parts.hostname, parts.port, parts.scheme == "https"
        self._prompt_tokens: dict[str, int] = {}
        info = self._json("GET", "/bobby/v1/info")
        self._apply_info(info)
        self.adapter_enabled = self.has_adapter and bool(info.get("adapter_default"))

    def _apply_info(self, info: dict) -> None:
        try:
            self.model_name = str(info["model"])
            self.adapter_name = info["adapter"]
            self.context_length = int(info["context_length"])
            self.tokenizer = RemoteTokenizer(frozenset(info["special_tokens"]))
        except (KeyError, TypeError, ValueError):
            raise RemoteError(self.url, "this is not a bobby-tui server (GET /bobby/v1/info answers something else)"
                              ) from None

    @property
    def has_adapter(self) -> bool:
        return self.adapter_name is not None

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Nothing to do: the server warmed up its kernels when it loaded the model."""

    # --- the server's one adapter: the composer's adapter switches, on the server's terms ---------------------
    @property
    def adapter_names(self) -> tuple[str, ...]:
        return (self.adapter_name,) if self.adapter_name is not None else ()

    @property
    def active_adapter(self) -> str | None:
        return self.adapter_name

    @active_adapter.setter
    def active_adapter(self, name: str) -> None:
        if name != self.adapter_name:
            raise RemoteError(self.url, f"the server has no adapter {name!r} (it serves {self.adapter_name or 'none'})")

    def load_adapter(self, name: str, path: object) -> None:
        raise RemoteError(self.url, f"adapter {name!r}: the server serves its own adapter "
                          f"({self.adapter_name or 'none'}); start it with --adapter to serve another")

    def render_prompt(self, user: str, system: str | None = None) -> str:
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": user})
        return self.render_messages(messages)

    def render_messages(self, messages: list[dict], prefill: str | None = None) -> str:
        """The conversation as the server's chat template renders it (with ``prefill``: inside an assistant turn
        that starts with it)."""
        body: dict[str, Any] = {"messages": messages}
        if prefill is not None:
            body["prefill"] = prefill
        rendered = self._json("POST", "/bobby/v1/render", body)
        self._prompt_tokens = {rendered["prompt"]: rendered["prompt_tokens"]}  # for drafts that end without usage
        return rendered["prompt"]

    # --- HTTP ------------------------------------------------------------------------------------------------
    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _open(self, method: str, path: str, body: dict | None, timeout: float
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request; -> the connection and its response, whose status is 200 (else RemoteError)."""
        conn = self._connection(timeout)
        try:
            conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                         headers=self._headers())
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise self._unreachable(err) from None
        if response.status != 200:
            text = response.read().decode("utf-8", "replace")
            conn.close()
            raise RemoteError(self.url, _refusal(response.status, text))
        return conn, response

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        conn, response = self._open(method, path, body, CONNECT_TIMEOUT_S)
        try:
            return json.loads(response.read())
        except (OSError, http.client.HTTPException) as err:
            raise self._unreachable(err) from None
        except ValueError:
            raise RemoteError(self.url, f"{path} did not answer JSON: is this a bobby-tui server?") from None
        finally:
            conn.close()

    def _unreachable(self, err: BaseException) -> RemoteError:
        if isinstance(err, ConnectionRefusedError):
            return RemoteError(self.url, "cannot connect: nothing listens there (start it with `bobby-tui serve`)")
        if isinstance(err, socket.gaierror):
            return RemoteError(self.url, f"cannot connect: unknown host {self._host}")
        if isinstance(err, TimeoutError):
            return RemoteError(self.url, "the server did not answer in time")
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        return RemoteError(self.url, f"the connection failed: {reason}")

    # --- generation --------------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, should_cancel: Callable[[], bool] | None = None
                 ) -> Iterator[TokenDelta | DraftDone]:
        """The request's drafts decoding on the server: text deltas as they come, then each draft's DraftDone.
        Ends every open draft "cancelled" once ``should_cancel`` says so, and also when the server goes away, after
        which it raises RemoteError."""
        events: queue.SimpleQueue = queue.SimpleQueue()
        drafts = [params if params.seed is not None else replace(params, seed=random.randrange(SEED_RANGE))
                  for params in request.drafts]
        adapters = request.adapters or [self.adapter_name if self.adapter_enabled else None] * len(drafts)
        streams = [_DraftStream(self, i, self._body(request, params, adapter), events)
                   for i, (params, adapter) in enumerate(zip(drafts, adapters, strict=True))]
        texts, chunks = [""] * len(drafts), [0] * len(drafts)  # a streamed chunk carries one token's text
        started = time.perf_counter()
        first_token: dict[int, float] = {}
        open_drafts = set(range(len(drafts)))
        failure: RemoteError | None = None
        try:
            for stream in streams:
                stream.start()
            while open_drafts and failure is None:
                if should_cancel is not None and should_cancel():
                    break
                try:
                    draft, kind, value = events.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if draft not in open_drafts:
                    continue
                if kind == "delta":
                    first_token.setdefault(draft, time.perf_counter())
                    texts[draft] += value
                    chunks[draft] += 1
                    yield TokenDelta(draft, value)
                elif kind == "done":
                    open_drafts.discard(draft)
                    reason, seed, usage = value
                    stats = _stats(usage, started, first_token.get(draft), time.perf_counter())
                    yield DraftDone(draft, texts[draft], reason, replace(drafts[draft], seed=seed), stats)
                else:
                    failure = value
        finally:
            for stream in streams:
                stream.close()
        now = time.perf_counter()
        for draft in sorted(open_drafts):  # cancelled, or cut off by the failure: the text so far is the draft's
            usage = {"prompt_tokens": self._prompt_tokens.get(request.prompt, 0), "completion_tokens": chunks[draft]}
            yield DraftDone(draft, texts[draft], "cancelled", drafts[draft],
                            _stats(usage, started, first_token.get(draft), now))
        if failure is not None:
            raise failure

    def _body(self, request: GenerationRequest, params: SamplingParams, adapter: str | None) -> dict:
        body: dict[str, Any] = {
            "model": self.model_name, "prompt": request.prompt, "max_tokens": request.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed, "stream": True,
            "stream_options": {"include_usage": True},
            "bobby": {"top_k": params.top_k, "min_p": params.min_p, "repetition_penalty": params.repetition_penalty},
        }
        if request.stop_strings:
            body["stop"] = list(request.stop_strings)
        if self.has_adapter or adapter is not None:  # the server refuses an adapter it does not serve, in one line
            body["bobby"]["adapter"] = adapter if adapter is not None else False
        return body


class _DraftStream(threading.Thread):
    """One draft's streamed completion: queues (draft, "delta", text), (draft, "done", (finish_reason, seed,
    usage)) or (draft, "error", RemoteError)."""

    def __init__(self, engine: RemoteEngine, draft: int, body: dict, events: queue.SimpleQueue):
        super().__init__(name=f"bobby-remote-draft-{draft}", daemon=True)
        self._engine, self._draft, self._body, self._events = engine, draft, body, events
        self._conn: http.client.HTTPConnection | None = None
        self._closed = threading.Event()

    def run(self) -> None:
        try:
            self._conn, response = self._engine._open("POST", "/v1/completions", self._body, READ_TIMEOUT_S)
            if self._closed.is_set():
                return
            self._read(response)
        except RemoteError as err:
            self._put("error", err)
        except (OSError, http.client.HTTPException, ValueError, AttributeError) as err:
            # AttributeError: http.client reading from a socket shut down under it
            if not self._closed.is_set():  # a connection we closed ourselves is no failure
                self._put("error", RemoteError(self._engine.url, f"the server went away mid-draft ({_reason(err)}); "
                                               "the text so far is kept"))
        finally:
            self._closed.set()
            if self._conn is not None:
                self._conn.close()  # on this thread: http.client's objects are not shared between threads

    def _read(self, response: http.client.HTTPResponse) -> None:
        finish: tuple[str, int] | None = None
        usage: dict = {}
        for line in response:
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                if finish is None:
                    break
                self._put("done", (*finish, usage))
                return
            chunk = json.loads(payload)
            if "error" in chunk:  # the server ended the stream (shutting down, an engine failure)
                message = chunk["error"].get("message", "the server ended the stream")
                self._put("error", RemoteError(self._engine.url, f"{message}; the text so far is kept"))
                return
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", ()):
                if choice.get("text"):
                    self._put("delta", choice["text"])
                if choice.get("finish_reason"):
                    finish = (choice["finish_reason"], choice.get("bobby", {}).get("seed", self._body["seed"]))
        if not self._closed.is_set():
            self._put("error", RemoteError(self._engine.url, "the server went away mid-draft; the text so far is kept"))

    def _put(self, kind: str, value: Any) -> None:
        self._events.put((self._draft, kind, value))

    def close(self) -> None:
        """Stop reading (from another thread): the server sees the connection close and frees the draft's row."""
        self._closed.set()
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in a read, which then closes it
            except OSError:
                pass


def _stats(usage: dict, started: float, first_token: float | None, finished: float) -> GenerationStats:
    """Speeds as the client sees them: prefill until the first token, decode from there to the last."""
    prompt_tokens, generated = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    prefill_s = (first_token or finished) - started
    decode_s = finished - first_token if first_token is not None else 0.0
    return GenerationStats(
        prompt_tokens=prompt_tokens, generated_tokens=generated,
        prefill_tok_s=prompt_tokens / prefill_s if prefill_s > 0 else 0.0,
        decode_tok_s=(generated - 1) / decode_s if decode_s > 0 and generated > 1 else 0.0,
        peak_memory_bytes=0,  # the server's memory, not ours
    )


def _refusal(status: int, text: str) -> str:
    """A non-200 answer in one line: the server's own message when it sent its JSON error."""
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = " ".join(text.split())[:200] or "no message"
    if status == 401:
        return f"the server refused the API key ({message}); set BOBBY_TUI_API_KEY to the server's key"
    return f"the server answered {status}: {message}"


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__
