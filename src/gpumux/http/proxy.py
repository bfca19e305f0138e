"""The OpenAI-compatible front door on port 3000.

Owns: the allow-list of forwarded routes, request validation (auth, content type, body
limit, `model`), the lease around each forwarded request (held until the body ends or
the client leaves), byte-exact forwarding with streaming, and OpenAI-shaped errors.
Does not: decide where or when a model runs (it asks the scheduler for a lease), judge
backends (it only tells `passive_health` each status a backend sent), or touch backends
beyond forwarding one request.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from multidict import MultiMapping
from yarl import URL

from gpumux.backends.http1 import HOST
from gpumux.backends.http1_reply import Reply, UpstreamError, UpstreamUnreachable
from gpumux.backends.upstream import UpstreamPools
from gpumux.core.config import Config
from gpumux.core.errors import (
    BackendCrashed,
    BackendUnreachable,
    GpumuxError,
    InvalidJson,
    MethodNotAllowed,
    MissingModel,
    RequestTooLarge,
    RouteNotFound,
    ShuttingDown,
    UnsupportedMediaType,
    UpstreamTimeout,
    openai_envelope,
)
from gpumux.http.auth import ApiKeys
from gpumux.http.errors import REQUEST_ID, error_response, sse_error_event
from gpumux.http.passive_health import BackendStreaks
from gpumux.scheduler.runner import Lease, Scheduler
from gpumux.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)

#: The only paths that reach a backend (vLLM's dev routes are unauthenticated).
FORWARDED_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/tokenize",
        "/detokenize",
    }
)

#: Hop-by-hop headers (RFC 9110 §7.6.1) plus those aiohttp recomputes.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "authorization",
        "date",
        "server",
    }
)

#: The `model` label of requests naming a model that is not configured.
UNKNOWN_MODEL_LABEL = "_unknown"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass(frozen=True)
class ProxySettings:
    connect_timeout_secs: float
    idle_timeout_secs: float


def end_to_end_headers(headers: MultiMapping[str]) -> dict[str, str]:
    """`headers` without the hop-by-hop ones: the fixed set, and any a `Connection` names
    (RFC 9110 §7.6.1), in either direction."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }
    drop = _HOP_BY_HOP | named
    return {k: v for k, v in headers.items() if k.lower() not in drop}


class Proxy:
    def __init__(
        self,
        config: Config,
        scheduler: Scheduler,
        upstream: UpstreamPools,
        metrics: Metrics,
        api_keys: ApiKeys,
        is_shutting_down: Callable[[], bool],
        streaks: BackendStreaks | None = None,
    ) -> None:
        self._config = config
        self._streaks = streaks  # passive health: counts statuses backends themselves sent
        # `created` in /v1/models: stable for the daemon's life, like a model registry's.
        self._started_at = int(time.time())
        self._scheduler = scheduler
        # Per-model pools let a CRIU dump drop one backend's connections.
        self._upstream = upstream
        self._metrics = metrics
        self._keys = api_keys
        self._shutting_down = is_shutting_down
        self._connect_timeout = config.supervision.upstream_connect_timeout_secs
        self._idle_timeout = config.supervision.upstream_idle_timeout_secs

    def reload(self, config: Config) -> None:
        """Serve a new model table (SIGHUP); limits and timeouts stay as started."""
        self._config = config

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self._config.max_request_body_bytes, middlewares=[self._errors]
        )
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request_id = client_request_id(request.headers.get(REQUEST_ID))
        request[REQUEST_ID] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            return await handler(request)
        except GpumuxError as exc:
            return error_response(exc, request_id)
        except web.HTTPRequestEntityTooLarge:
            limit = self._config.max_request_body_bytes
            return error_response(
                RequestTooLarge(f"Request body exceeds {limit} bytes."), request_id
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # aiohttp's own refusals (no route for CONNECT or `OPTIONS *`, ...) are text/plain;
            # clients get the OpenAI shape like every other error.
            if exc.status == 404:
                error: GpumuxError = RouteNotFound(
                    f"Unknown route {request.method} {request.raw_path[:200]}."
                )
            elif exc.status == 405:
                error = MethodNotAllowed(f"{request.method} is not allowed here.")
            else:
                envelope = openai_envelope(exc.reason, "invalid_request_error", "invalid_request")
                return web.json_response(
                    envelope, status=exc.status, headers={REQUEST_ID: request_id}
                )
            return error_response(error, request_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id", "model")

    async def _health(self, request: web.Request) -> web.Response:
        if self._shutting_down():
            return error_response(ShuttingDown("gpumux is shutting down", retry_after=5))
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        self._keys.check(request.headers.get("Authorization"))
        created = self._started_at
        data = [
            {
                "id": alias,
                "object": "model",
                "created": created,
                "owned_by": "gpumux",
                "root": model.model_path,
            }
            for alias, model in self._config.models.items()
        ]
        return web.json_response({"object": "list", "data": data})

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        # Match on the raw path: `/v1/../sleep` or `//sleep` never normalise into a route.
        path = request.raw_path.split("?", 1)[0]
        if path not in FORWARDED_PATHS:
            raise RouteNotFound(f"Unknown route {request.method} {path}.")
        if request.method != "POST":
            raise MethodNotAllowed(f"{path} accepts POST only.")
        self._keys.check(request.headers.get("Authorization"))
        if self._shutting_down():
            raise ShuttingDown("gpumux is shutting down", retry_after=5)
        if request.content_type != "application/json":
            raise UnsupportedMediaType("Content-Type must be application/json.")
        body = await request.read()
        model, stream = _peek(body)
        structlog.contextvars.bind_contextvars(model=model[:128])
        endpoint = path
        started = time.monotonic()
        try:
            lease = await self._scheduler.acquire(model)
        except GpumuxError as exc:
            # Client-chosen names never become label values (unbounded series).
            label = model if model in self._config.models else UNKNOWN_MODEL_LABEL
            self._metrics.count_request(label, endpoint, exc.http_status)
            raise
        try:
            return await self._forward(request, lease, body, path, stream, started)
        finally:
            self._scheduler.release(lease)

    async def _forward(
        self,
        request: web.Request,
        lease: Lease,
        body: bytes,
        path: str,
        stream: bool,
        started: float,
    ) -> web.StreamResponse:
        headers = end_to_end_headers(request.headers)
        headers[REQUEST_ID] = request[REQUEST_ID]
        pid = self._scheduler.core.slots[lease.model].pid  # the leased request's process
        upstream = await self._open_upstream(request.raw_path, body, headers, lease.model)
        if self._streaks is not None:  # gpumux's own errors raised above; never counted
            self._streaks.record(lease.model, pid, upstream.status)
        try:
            if stream and upstream.status == 200:
                return await self._relay_stream(request, upstream, lease.model, path, started)
            try:
                payload = await upstream.read()
            except UpstreamError as exc:
                self._count(lease.model, path, 502)
                raise _upstream_error(exc, lease.model) from exc
        finally:
            # A reply the client abandoned closes its connection, so vLLM aborts the
            # request and frees its KV cache; a finished one was already pooled again.
            upstream.close()
        self._observe_ttft(lease.model, started)
        self._count(lease.model, path, upstream.status)
        return web.Response(
            status=upstream.status, body=payload, headers=self._response_headers(upstream, request)
        )

    async def _open_upstream(
        self, raw_path: str, body: bytes, headers: dict[str, str], model: str
    ) -> Reply:
        """Send upstream (the pool retries once when nothing was exchanged: a stale
        pooled connection) and wait for the reply's head."""
        port = self._config.models[model].port
        try:
            return await self._upstream.forwarding(model).send(
                port,
                request_bytes(raw_path, port, headers, body),
                connect_timeout=self._connect_timeout,
                idle_timeout=self._idle_timeout,
            )
        except UpstreamError as exc:
            raise _upstream_error(exc, model) from exc

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: Reply,
        model: str,
        path: str,
        started: float,
    ) -> web.StreamResponse:
        response = _HeadWithFirstChunk(
            status=upstream.status, headers=self._response_headers(upstream, request)
        )
        await response.prepare(request)
        # Bytes go through as they arrive, never split into SSE events or parsed; the only
        # per-stream bookkeeping is the time to the first chunk. When aiohttp chunks this
        # response too (an HTTP/1.1 client), the backend's chunks go out as they came.
        chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
        try:
            tail = await upstream.relay(
                request.transport if chunked else None,
                request.writer.drain,
                response.write,
                lambda: self._observe_ttft(model, started),
            )
        except UpstreamError as exc:
            # What a chunk cut short had brought, then never a clean EOF: an error event
            # and [DONE] (the SDK raises).
            await response.write(upstream.unsent_payload())
            await response.write(sse_error_event(_upstream_error(exc, model)))
            self._count(model, path, 502)
            log.warning("stream_failed", model=model, error=type(exc).__name__)
            return response
        except ConnectionResetError:  # ClientGone, or aiohttp's own while draining
            return response  # nobody to tell; aiohttp is cancelling this handler
        self._count(model, path, upstream.status)
        await response.write_eof(tail)  # with the last chunk, in one write
        return response

    def _response_headers(self, upstream: Reply, request: web.Request) -> dict[str, str]:
        headers = end_to_end_headers(upstream.headers)
        headers[REQUEST_ID] = request[REQUEST_ID]
        return headers

    def _count(self, model: str, endpoint: str, status: int) -> None:
        self._metrics.count_request(model, endpoint, status)
        # request_id and model come from the context the middleware and _dispatch bound.
        log.info("request_finished", endpoint=endpoint, status=status)

    def _observe_ttft(self, model: str, started: float) -> None:
        self._metrics.observe_time_to_first_token(model, time.monotonic() - started)


class _HeadWithFirstChunk(web.StreamResponse):
    """A stream whose head leaves with its first body bytes, in one write, as aiohttp's
    `web.Response` does (a `StreamResponse` sends it at `prepare`). Should aiohttp drop
    this switch, the head goes out at `prepare` again: still correct, one write more."""

    _send_headers_immediately = False


def client_request_id(given: str | None) -> str:
    """The client's `X-Request-Id` when it is a safe token (≤ 128 of `[A-Za-z0-9._-]`), else
    a fresh one: the id is logged, echoed and forwarded to vLLM, so it is never free text."""
    if given and _REQUEST_ID_RE.fullmatch(given):
        return given
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID


def _peek(body: bytes) -> tuple[str, bool]:
    """Read `model` and `stream` without re-encoding the body (it is forwarded as sent)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidJson("We could not parse the JSON body of your request.") from None
    if not isinstance(document, dict):
        raise InvalidJson("The request body must be a JSON object.")
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise MissingModel("You must provide a model parameter (a string).", param="model")
    return model, document.get("stream") is True


def request_bytes(raw_path: str, port: int, headers: dict[str, str], body: bytes) -> bytes:
    """The request head and body sent upstream, in one piece.

    The target is the client's path; a query string is re-quoted as aiohttp's client did.
    Headers go out as the client sent them (aiohttp's server decoded them as UTF-8 with
    surrogate escapes, so they encode back to the same bytes), after `end_to_end_headers`;
    none are added but Host and Content-Length.
    """
    target = URL(f"http://{HOST}{raw_path}").raw_path_qs if "?" in raw_path else raw_path
    lines = [f"POST {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape") + body


def _upstream_error(exc: BaseException, model: str) -> GpumuxError:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return UpstreamTimeout(f"The backend for `{model}` stopped responding.", retry_after=5)
    if isinstance(exc, UpstreamUnreachable):
        return BackendUnreachable(f"The backend for `{model}` is unreachable.", retry_after=5)
    return BackendCrashed(f"The backend for `{model}` failed mid-request.", retry_after=5)
