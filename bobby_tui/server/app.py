"""The HTTP side: aiohttp routes in front of the engine thread, on one asyncio loop.

aiohttp because it is asyncio-native and serves by itself (no separate ASGI server), and streaming responses
(server-sent events) are a plain ``StreamResponse.write``; its handler cancellation tells us when a client leaves.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from aiohttp import web

from inference.api import DraftDone, ParameterError, TokenDelta
from inference.errors import InferenceError

from .protocol import (
    EXTENSION,
    ApiError,
    ChunkWriter,
    CompletionSpec,
    ServerLimits,
    completion_body,
    parse_chat,
    parse_completion,
    parse_json,
    parse_messages,
    shutting_down_error,
)
from .worker import Aborted, BatchFactory, EngineInfo, EngineWorker, Job, Rejected, abort_all, batch_generator

LOG = logging.getLogger("bobby_tui.server")
SHUTDOWN_GRACE_S = 2.0  # after SIGTERM: how long open connections get to take their final event
RETRY_AFTER_S = 1


class ServeError(Exception):
    """The server cannot start (the port is taken...): one line for the user."""


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    api_key: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False


def bind_problem(host: str, api_key: str | None) -> str | None:
    """Why this bind is refused, or None: an address other machines can reach needs an API key."""
    if api_key or is_loopback(host):
        return None
    return f"--host {host} can be reached from other machines: give --api-key KEY as well (or bind to 127.0.0.1)"


class ApiServer:
    def __init__(self, worker: EngineWorker, info: EngineInfo, options: ServeOptions):
        self.worker, self.info, self.limits = worker, info, options.limits
        self._api_key = options.api_key.encode() if options.api_key else None
        self.jobs: set[Job] = set()
        self.shutting_down = False
        self.created = int(time.time())
        self.app = web.Application(client_max_size=self.limits.max_body_bytes, middlewares=[self._middleware])
        self.app.add_routes([
            web.get("/health", self.health),
            web.get("/v1/models", self.models),
            web.post("/v1/chat/completions", self.chat_completions),
            web.post("/v1/completions", self.completions),
            # the composer's extensions (bobby_tui.engines.remote): what the OpenAI API does not carry
            web.get(f"/{EXTENSION}/v1/info", self.engine_info),
            web.post(f"/{EXTENSION}/v1/render", self.render),
        ])

    # --- every request: auth, errors as JSON, one log line ---------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        started, status = time.perf_counter(), 499  # 499: the client left before an answer
        try:
            try:
                if request.path != "/health":
                    self._authorize(request)
                response = await handler(request)
            except ApiError as err:
                response = _error_response(err)
            except web.HTTPException as err:  # routing (404, 405) and the body limit (413)
                response = _error_response(self._http_error(request, err))
            except Exception as err:  # the client gets a JSON error, never a traceback
                LOG.error("%s %s failed: %s: %s", request.method, _path(request), type(err).__name__, _one_line(err))
                response = _error_response(ApiError(500, "internal server error"))
            status = response.status
            return response
        finally:
            tokens = request.get("tokens")
            LOG.info("%s %s %d tokens=%s %.0fms%s", request.method, _path(request), status,
                     f"{tokens[0]}+{tokens[1]}" if tokens else "-", 1000 * (time.perf_counter() - started),
                     " (client gone)" if request.get("client_gone") or status == 499 else "")

    def _authorize(self, request: web.Request) -> None:
        if self._api_key is None:
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._api_key):
            raise ApiError(401, "missing or wrong API key: send Authorization: Bearer KEY", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def _http_error(self, request: web.Request, err: web.HTTPException) -> ApiError:
        if err.status == 404:
            return ApiError(404, f"no such endpoint: {request.method} {_path(request)}", code="not_found")
        if err.status == 405:
            return ApiError(405, f"{_path(request)} does not take {request.method}", code="method_not_allowed")
        if err.status == 413:
            return ApiError(413, f"the request body exceeds {self.limits.max_body_bytes} bytes",
                            code="request_too_large")
        return ApiError(err.status, err.reason)

    # --- endpoints -------------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({
            "status": "shutting_down" if self.shutting_down else "ok", "model": self.info.model_name,
            "adapter": self.info.adapter_name, "active_rows": self.worker.active_rows,
            "peak_rows": self.worker.peak_rows, "waiting": self._waiting(), "steps": self.worker.steps,
        })

    async def models(self, request: web.Request) -> web.Response:
        model = {"id": self.info.model_name, "object": "model", "created": self.created, "owned_by": "bobby-tui",
                 EXTENSION: {"adapter": self.info.adapter_name, "adapter_default": self.info.adapter_default}}
        return web.json_response({"object": "list", "data": [model]})

    async def engine_info(self, request: web.Request) -> web.Response:
        """What a composer needs besides completions: the names, the adapter default, the context, and the special
        tokens' texts it removes from drafts."""
        info = self.info
        return web.json_response({
            "model": info.model_name, "adapter": info.adapter_name, "adapter_default": info.adapter_default,
            "context_length": info.context_length, "special_tokens": sorted(info.tokenizer.special_tokens),
        })

    async def render(self, request: web.Request) -> web.Response:
        """The chat template applied to `messages` (as /v1/chat/completions renders them), and its token count: the
        composer sends the prompt to /v1/completions once per draft, each with its own sampling."""
        body = parse_json(await request.read())
        unknown = sorted(set(body) - {"messages", "prefill"})
        if unknown:
            raise ApiError(400, f"unrecognized request argument: {unknown[0]}", unknown[0], "unknown_parameter")
        messages = parse_messages(body.get("messages"))
        prefill = body.get("prefill")
        if prefill is not None and not isinstance(prefill, str):
            raise ApiError(400, "prefill must be a string", "prefill")
        try:  # on a pool thread: the template is bounded in time, but the loop serves streams meanwhile
            prompt, tokens = await asyncio.get_running_loop().run_in_executor(None, self._render, messages, prefill)
        except InferenceError as err:
            raise ApiError(400, err.problem, "messages") from None
        except ParameterError as err:  # a conversation the template cannot take (order of roles, no text)
            raise ApiError(400, _one_line(err), "messages") from None
        return web.json_response({"prompt": prompt, "prompt_tokens": tokens})

    def _render(self, messages: list[dict], prefill: str | None) -> tuple[str, int]:
        tokenizer = self.info.tokenizer
        prompt = tokenizer.render_messages(messages, prefill)
        return prompt, len(tokenizer.encode(prompt))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = parse_json(await request.read())
        return await self._complete(request, parse_chat(body, self.limits, self.info.adapter_name))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = parse_json(await request.read())
        return await self._complete(request, parse_completion(body, self.limits, self.info.adapter_name))

    # --- generation ------------------------------------------------------------------------------------------
    def _waiting(self) -> int:
        return sum(1 for job in self.jobs if not job.admitted)

    async def _complete(self, request: web.Request, spec: CompletionSpec) -> web.StreamResponse:
        if self.shutting_down:
            raise shutting_down_error()
        if self._waiting() >= self.limits.max_queue:
            raise ApiError(429, f"the server is busy: {self.limits.max_queue} requests are already waiting",
                           code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
        job = Job(spec)
        self.jobs.add(job)
        self.worker.submit(job)
        try:
            first = await job.events.get()
            if isinstance(first, (Rejected, Aborted)):
                raise first.error
            request["tokens"] = [first.prompt_tokens, 0]
            ident = ("chatcmpl-" if spec.chat else "cmpl-") + secrets.token_hex(12)
            if spec.stream:
                return await self._stream(request, job, ident)
            return await self._collect(request, job, ident)
        finally:
            self.jobs.discard(job)
            if not job.finished:  # the client left (or we failed): its rows leave the batch before the next step
                self.worker.cancel(job)

    async def _collect(self, request: web.Request, job: Job, ident: str) -> web.Response:
        choices: list[Any] = [None] * job.spec.n
        for _ in range(job.spec.n):
            event = await job.events.get()  # only DraftDone or Aborted: deltas are not queued for these
            if isinstance(event, Aborted):
                raise event.error
            choices[event.draft] = {"text": event.text, "finish_reason": event.finish_reason,
                                    "seed": event.params.seed, "completion_tokens": event.stats.generated_tokens}
        tokens = request["tokens"]
        tokens[1] = sum(c["completion_tokens"] for c in choices)
        body = completion_body(job.spec, ident, int(time.time()), self.info.model_name, choices, tokens[0])
        return web.json_response(body)

    async def _stream(self, request: web.Request, job: Job, ident: str) -> web.StreamResponse:
        spec, tokens = job.spec, request["tokens"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        chunks = ChunkWriter(spec, ident, int(time.time()), self.info.model_name)
        try:
            if spec.chat:
                await response.write("".join(chunks.role(i) for i in range(spec.n)).encode())
            remaining, aborted = spec.n, False
            while remaining and not aborted:
                events = [await job.events.get()]
                while not job.events.empty():  # one write for everything that came in since the last one
                    events.append(job.events.get_nowait())
                parts = []
                for event in events:
                    if type(event) is TokenDelta:
                        parts.append(chunks.delta(event.draft, event.text))
                    elif isinstance(event, DraftDone):
                        remaining -= 1
                        tokens[1] += event.stats.generated_tokens
                        parts.append(chunks.finish(event.draft, event.finish_reason, event.params.seed))
                    else:  # Aborted: the stream ends with the error as its last event
                        parts.append(chunks.error(event.error))
                        aborted = True
                        break
                await response.write("".join(parts).encode())
            if not aborted:
                tail = chunks.usage(tokens[0], tokens[1]) if spec.include_usage else ""
                await response.write((tail + ChunkWriter.DONE).encode())
            await response.write_eof()
        except ConnectionResetError:  # the client went away mid-stream
            request["client_gone"] = True
        return response


def _error_response(err: ApiError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers)


def _path(request: web.Request) -> str:
    """The path as sent, percent-encoded: a decoded %0A would start a forged line in the log."""
    return request.rel_url.raw_path


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


# --- running -----------------------------------------------------------------------------------------------


def serve(load: Callable[[], Any], options: ServeOptions, batch_factory: BatchFactory = batch_generator) -> NoReturn:
    """Load the model on the engine thread, serve until SIGTERM / SIGINT, then exit the process (code 0)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    try:
        code = asyncio.run(_serve(load, options, batch_factory))
    finally:
        LOG.removeHandler(handler)
    # The engine thread released its MLX streams as it ended (engine_thread.release_mlx_streams), so the interpreter
    # exits normally: MLX's exit-time destructors have nothing left that could abort.
    sys.exit(code)


async def _serve(load: Callable[[], Any], options: ServeOptions, batch_factory: BatchFactory) -> int:
    loop = asyncio.get_running_loop()
    worker = EngineWorker(load, batch_factory, options.limits.max_rows, LOG.error)
    info = worker.start(loop)
    server = ApiServer(worker, info, options)
    runner = web.AppRunner(server.app, access_log=None, handler_cancellation=True,
                           shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, options.host, options.port).start()
    except OSError as err:
        await runner.cleanup()
        worker.stop()
        raise ServeError(f"cannot listen on {options.host}:{options.port}: {err.strerror or err}") from None
    host, port = runner.addresses[0][:2]
    adapter = f"adapter {info.adapter_name} ({'on' if info.adapter_default else 'off'} by default)" \
        if info.adapter_name else "no adapter"
    LOG.info("listening on http://%s:%d (model %s, %s, %d rows)", f"[{host}]" if ":" in host else host, port,
             info.model_name, adapter, options.limits.max_rows)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    LOG.info("shutting down: no new requests; %d in flight end now", len(server.jobs))
    server.shutting_down = True
    abort_all(list(server.jobs))
    await runner.cleanup()  # stops listening, lets handlers write their last event, closes connections
    worker.stop()
    return 0
