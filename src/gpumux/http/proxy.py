"""The front door on port 3000: OpenAI's API, and the rest of vLLM's routes beside it.

Owns: request validation (auth, content type, body limit, `model`; which routes are
forwarded and how each body names its model is `routes.py`'s table), the lease around
each forwarded request (held until the body ends or the client leaves), byte-exact
forwarding with streaming, and errors in the shape of the route's API (OpenAI's;
Anthropic's on its Messages routes: `anthropic`, `anthropic_errors`).
Does not: decide where or when a model runs (it asks the scheduler for a lease), judge
backends (it only tells `passive_health` each status a backend sent), or touch backends
beyond forwarding one request.
Over 400 lines because one request's path stays in one place: the wait (with loading
feedback), the forward and the relay share the request's record and the rule that a
stream begun with 200 ends with an error event, never a second status. Aliases, the
request log, the feedback stream, the route table and the body readers live in their own
modules (`aliases`, `request_log`, `feedback`, `routes`, `body`, `multipart`), and LoRA
adapter loading in `lora`.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import structlog
from aiohttp import HttpVersion11, web
from multidict import MultiMapping
from yarl import URL

from gpumux.backends.http1 import HOST
from gpumux.backends.http1_reply import Reply, UpstreamError, UpstreamUnreachable
from gpumux.backends.upstream import UpstreamPools
from gpumux.core.config import Config
from gpumux.core.errors import (
    BackendCrashed,
    BackendUnreachable,
    ClientError,
    ExpectationFailed,
    GpumuxError,
    MethodNotAllowed,
    RequestTooLarge,
    RouteNotFound,
    ShuttingDown,
    UpstreamTimeout,
)
from gpumux.http.aliases import adapter_entries, alias_entries, resolve
from gpumux.http.anthropic import api_key, presented_authorization, shape_for
from gpumux.http.auth import ApiKeys
from gpumux.http.body import read_body
from gpumux.http.errors import REQUEST_ID, error_response, sse_error_event
from gpumux.http.feedback import LoadingFeedback, backend_error_event, describe_wait
from gpumux.http.listener import BareHandler
from gpumux.http.lora import AdapterGate, refuse_runtime_lora_route
from gpumux.http.passive_health import BackendStreaks
from gpumux.http.request_log import RequestLog, RequestRecord, key_hash
from gpumux.http.routes import ROUTES
from gpumux.scheduler.runner import Lease, Scheduler
from gpumux.telemetry.logs import log_hot
from gpumux.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)

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
        "x-api-key",  # gpumux's key as Anthropic clients send it: never forwarded
        "expect",  # answered here (`_expect_continue`); the body goes upstream whole
        "date",
        "server",
    }
)

#: Headers the proxy sets itself on both legs, so a copy in another letter case (HTTP
#: names are case-insensitive; the dict below is not) never travels beside its own.
_SET_BY_PROXY = frozenset({REQUEST_ID.lower()})
_DROPPED = _HOP_BY_HOP | _SET_BY_PROXY

#: The `model` label of requests naming a model that is not configured.
UNKNOWN_MODEL_LABEL = "_unknown"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: Seconds the request waited for its lease, on every proxied response (errors too).
QUEUE_SECONDS = "X-Gpumux-Queue-Seconds"
#: The request's log record, kept on the aiohttp request while it is handled.
_RECORD = web.RequestKey("gpumux_record", RequestRecord)
#: The id the request is logged, echoed and forwarded under (`client_request_id`).
_REQUEST_ID = web.RequestKey("gpumux_request_id", str)
#: The methods the two pages beside the forwarded routes answer (HEAD: the head only).
_READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class ProxySettings:
    connect_timeout_secs: float
    idle_timeout_secs: float


def end_to_end_headers(headers: MultiMapping[str]) -> dict[str, str]:
    """`headers` without the hop-by-hop ones (the fixed set, and any a `Connection` names:
    RFC 9110 §7.6.1) and without those the proxy sets itself, in either direction."""
    drop = _DROPPED
    if "Connection" in headers:  # case-insensitive, as the multidict is
        named = {
            token.strip().lower()
            for value in headers.getall("Connection")
            for token in value.split(",")
        }
        drop = _DROPPED | named
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
        adapters: AdapterGate | None = None,
    ) -> None:
        self._config = config
        self._adapters = adapters or AdapterGate(None, metrics)  # LoRA loads before forwards
        self._streaks = streaks  # passive health: counts statuses backends themselves sent
        # `created` in /v1/models: stable for the daemon's life, like a model registry's.
        self._started_at = int(time.time())
        self._scheduler = scheduler
        # Per-model pools let a CRIU dump drop one backend's connections.
        self._upstream = upstream
        self._metrics = metrics
        self._keys = api_keys
        self._shutting_down = is_shutting_down
        self.request_log = RequestLog(config.request_log_size)
        self._feedback = LoadingFeedback(
            config.loading_feedback, config.loading_feedback_after_secs
        )
        self._pages: dict[str, Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]] = {
            "/health": self._health,
            "/v1/models": self._models,
        }
        self._connect_timeout = config.supervision.upstream_connect_timeout_secs
        self._idle_timeout = config.supervision.upstream_idle_timeout_secs

    def reload(self, config: Config) -> None:
        """Serve a new model table (SIGHUP); limits and timeouts stay as started."""
        self._config = config
        self._adapters.reload(config)

    def front_door(self) -> BareHandler:
        """The proxy port's one handler: every method and path comes here (no router)."""
        return BareHandler(self._handle, self._config.max_request_body_bytes)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Route by the raw path, and answer every failure in the route's API shape."""
        request_id = client_request_id(request.headers.get(REQUEST_ID))
        request[_REQUEST_ID] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        # Match on the raw path: `/v1/../sleep` or `//sleep` never normalise into a route.
        path = request.raw_path.split("?", 1)[0]
        try:
            if "Expect" in request.headers:
                await _expect_continue(request)
            page = self._pages.get(path)
            if page is not None and request.method in _READ_METHODS:
                return await page(request)
            return await self._dispatch(request, path)
        except GpumuxError as exc:
            if isinstance(exc, ClientError):
                _log_rejection(request, path, exc.http_status, exc.code)
            response = error_response(exc, request_id, shape_for(path))
            record = request.get(_RECORD)
            if record is not None and record.queue_secs is not None:
                response.headers[QUEUE_SECONDS] = f"{record.queue_secs:.3f}"
            return response
        except web.HTTPRequestEntityTooLarge:
            limit = self._config.max_request_body_bytes
            _log_rejection(request, path, 413, RequestTooLarge.code)
            return error_response(
                RequestTooLarge(f"Request body exceeds {limit} bytes."), request_id, shape_for(path)
            )
        finally:
            structlog.contextvars.unbind_contextvars("request_id", "model", "alias", "adapter")

    async def _health(self, request: web.BaseRequest) -> web.Response:
        if self._shutting_down():
            return error_response(ShuttingDown("gpumux is shutting down", retry_after=5))
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.BaseRequest) -> web.Response:
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
        data += alias_entries(self._config, created)
        data += adapter_entries(self._config, created)
        return web.json_response({"object": "list", "data": data})

    async def _dispatch(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        refuse_runtime_lora_route(path)
        route = ROUTES.get(path)
        if route is None:
            raise RouteNotFound(f"Unknown route {request.method} {path[:200]}.")
        if request.method != "POST":
            raise MethodNotAllowed(f"{path} accepts POST only.")
        self._keys.check(request.headers.get("Authorization"), api_key(path, request.headers))
        if self._shutting_down():
            raise ShuttingDown("gpumux is shutting down", retry_after=5)
        route.body.check_media_type(request.content_type)
        body = await read_body(request)
        content_type = request.headers.get("Content-Type", "")
        peeked = route.read(body, content_type)
        stream = peeked.stream
        resolved = resolve(self._config, peeked.model)
        model = resolved.model
        structlog.contextvars.bind_contextvars(model=model[:128])
        if resolved.via_alias is not None:
            structlog.contextvars.bind_contextvars(alias=resolved.via_alias)
            body = route.body.with_model(body, content_type, model)
        if resolved.adapter is not None:
            structlog.contextvars.bind_contextvars(adapter=resolved.adapter)
        record = RequestRecord(
            started_at=time.time(),
            model=model[:128],
            alias=resolved.via_alias,
            endpoint=path,
            client=request.remote,
            key_hash=key_hash(presented_authorization(path, request.headers)),
            adapter=resolved.adapter,
        )
        request[_RECORD] = record
        started = time.monotonic()
        shape = shape_for(path)
        with (
            self._adapters.counting(record),
            self.request_log.tracking(record, time.monotonic, shape.status),
        ):
            lease, prepared = await self._wait(request, model, record, resolved.known, stream)
            if lease is None:
                assert prepared is not None  # the wait failed after 200: the stream said why
                return prepared
            try:
                await self._adapters.ready(lease, record)
                response = await self._forward(
                    request, lease, body, path, stream, started, prepared
                )
            except GpumuxError as exc:
                if prepared is None:
                    raise
                await prepared.write(sse_error_event(exc, shape))  # 200 was sent: end the stream
                record.status, response = shape.status(exc), prepared
            finally:
                self._scheduler.release(lease)
            record.status = record.status or response.status
        return response

    async def _wait(
        self, request: web.BaseRequest, model: str, record: RequestRecord, known: bool, stream: bool
    ) -> tuple[Lease | None, web.StreamResponse | None]:
        """A lease; for a stream with loading feedback on, also the response already begun
        if the wait outlasted the threshold (None lease: the wait failed after that)."""
        acquire = self._acquire(model, record, known=known)
        started = time.monotonic()
        if not (stream and self._feedback.enabled):
            return await acquire, None

        shape = shape_for(record.endpoint)

        def headers() -> dict[str, str]:
            # Sent before the wait ends: the wait so far (the log has the whole of it).
            waited = f"{time.monotonic() - started:.3f}"
            ids = shape.id_headers(request[_REQUEST_ID])
            return {REQUEST_ID: request[_REQUEST_ID], **ids, QUEUE_SECONDS: waited}

        describe = partial(describe_wait, self._scheduler, model)
        waited = await self._feedback.wait(
            request,
            acquire,
            self._scheduler.release,
            headers,
            describe,
            model=record.alias or record.model,
            shape=shape,
        )
        if waited.error is not None:
            record.status = shape.status(waited.error)
        return waited.lease, waited.response

    async def _acquire(self, model: str, record: RequestRecord, *, known: bool) -> Lease:
        """A lease on `model`; the wait lands in `record` whatever the outcome."""
        started = time.monotonic()
        try:
            return await self._scheduler.acquire(model)
        except GpumuxError as exc:
            # Client-chosen names never become label values (unbounded series).
            label = model if known else UNKNOWN_MODEL_LABEL
            status = shape_for(record.endpoint).status(exc)  # the status the client sees
            self._metrics.count_request(label, record.endpoint, status)
            raise
        finally:
            record.queue_secs = round(time.monotonic() - started, 6)

    async def _forward(
        self,
        request: web.BaseRequest,
        lease: Lease,
        body: bytes,
        path: str,
        stream: bool,
        started: float,
        prepared: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        """Forward to the lease's backend; into `prepared` when loading feedback began it."""
        headers = end_to_end_headers(request.headers)
        headers[REQUEST_ID] = request[_REQUEST_ID]
        pid = lease.pid  # the process the lease was granted on
        upstream = await self._open_upstream(request.raw_path, body, headers, lease.model)
        if self._streaks is not None:  # gpumux's own errors raised above; never counted
            self._streaks.record(lease.model, pid, upstream.status)
        try:
            if stream and upstream.status == 200:
                return await self._relay_stream(
                    request, upstream, lease.model, path, started, prepared
                )
            try:
                payload = await upstream.read()
            except UpstreamError as exc:
                self._count(lease.model, path, 502)
                raise _upstream_error(exc, lease.model) from exc
        finally:
            # A reply the client abandoned closes its connection, so vLLM aborts the
            # request and frees its KV cache; a finished one was already pooled again.
            upstream.close()
        self._observe_ttft(lease.model, started, request)
        request[_RECORD].tail.append(payload)
        self._count(lease.model, path, upstream.status)
        if prepared is not None:  # 200 was sent: the backend's refusal ends the stream
            await prepared.write(backend_error_event(upstream.status, payload, shape_for(path)))
            request[_RECORD].status = upstream.status
            return prepared
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
        request: web.BaseRequest,
        upstream: Reply,
        model: str,
        path: str,
        started: float,
        prepared: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        record = request[_RECORD]
        record.status = upstream.status
        if prepared is None:
            response: web.StreamResponse = _HeadWithFirstChunk(
                status=upstream.status, headers=self._response_headers(upstream, request)
            )
            await response.prepare(request)
        else:
            response = prepared
        # Bytes go through as they arrive, never split into SSE events or parsed; the only
        # per-stream bookkeeping is the time to the first chunk and the last few chunks
        # (they carry `usage`, for the request log). When aiohttp chunks this response too
        # (an HTTP/1.1 client), the backend's chunks go out as they came. A response that
        # loading feedback began has had aiohttp's own writes: it keeps to them.
        chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
        direct = chunked and prepared is None

        async def write(chunk: bytes) -> None:
            record.tail.append(chunk)
            await response.write(chunk)

        try:
            tail = await upstream.relay(
                request.transport if direct else None,
                request.writer.drain,
                write,
                lambda: self._observe_ttft(model, started, request),
            )
        except UpstreamError as exc:
            # What a chunk cut short had brought, then never a clean EOF: an error event in
            # the route's API shape (OpenAI's with [DONE], Anthropic's `event: error`); the
            # SDKs raise on both.
            await response.write(upstream.unsent_payload())
            await response.write(sse_error_event(_upstream_error(exc, model), shape_for(path)))
            record.status = 502
            self._count(model, path, 502)
            log.warning("stream_failed", model=model, error=type(exc).__name__)
            return response
        except ConnectionResetError:  # ClientGone, or aiohttp's own while draining
            return response  # nobody to tell; aiohttp is cancelling this handler
        except asyncio.CancelledError:
            # The client left; if it had every byte but the last chunk (it read `[DONE]`
            # and closed before the backend's end reached this task) the request succeeded.
            if upstream.delivered():
                record.tail.extend(upstream.recent_chunks())
                record.delivered = True
                self._count(model, path, upstream.status)
            raise
        record.tail.extend(upstream.recent_chunks())
        if tail:  # an empty end would push the usage (Anthropic's `message_delta`) out
            record.tail.append(tail)
        record.delivered = not tail
        self._count(model, path, upstream.status)
        await response.write_eof(tail)  # with the last chunk, in one write
        return response

    def _response_headers(self, upstream: Reply, request: web.BaseRequest) -> dict[str, str]:
        headers = end_to_end_headers(upstream.headers)
        headers[REQUEST_ID] = request[_REQUEST_ID]
        headers.update(shape_for(request[_RECORD].endpoint).id_headers(request[_REQUEST_ID]))
        headers[QUEUE_SECONDS] = f"{request[_RECORD].queue_secs or 0.0:.3f}"
        return headers

    def _count(self, model: str, endpoint: str, status: int) -> None:
        self._metrics.count_request(model, endpoint, status)
        # request_id and model come from the context the middleware and _dispatch bound.
        log_hot(log, "request_finished", endpoint=endpoint, status=status)

    def _observe_ttft(self, model: str, started: float, request: web.BaseRequest) -> None:
        ttft = time.monotonic() - started
        self._metrics.observe_time_to_first_token(model, ttft)
        request[_RECORD].ttft_secs = round(ttft, 6)


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
    return _FRESH_IDS.take()


class _FreshIds:
    """Request ids of 16 bytes from the OS's random source, as random as uuid4().hex, read
    256 at a time: os.urandom is a getrandom() syscall, once per request otherwise."""

    __slots__ = ("_at", "_pool")
    POOL_BYTES = 16 * 256

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def take(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(self.POOL_BYTES), 0
        self._at = at + 16
        return self._pool[at : at + 16].hex()


_FRESH_IDS = _FreshIds()


def _log_rejection(request: web.BaseRequest, path: str, status: int, code: str) -> None:
    """One warning line per refused request: no body, no query string (it may hold
    secrets), no traceback; the request id and model are bound in the context."""
    log.warning(
        "request_rejected", status=status, code=code, method=request.method, path=path[:200]
    )


async def _expect_continue(request: web.BaseRequest) -> None:
    """`Expect: 100-continue` (curl sends it for large bodies) gets its interim reply before
    the body is read; any other expectation is a 417 (RFC 9110 §10.1.1), as aiohttp's
    router answered both before the proxy port lost its router. HTTP/1.0 has neither."""
    if request.version != HttpVersion11:
        return
    expect = request.headers.get("Expect", "")
    if expect.strip().lower() != "100-continue":
        raise ExpectationFailed(f"Unknown expectation: {expect[:100]!r}.")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the reply's own bytes start after it


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
